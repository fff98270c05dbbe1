"""The property behind the adversarial suite: whatever pods and namespaces the API server
hands over (any annotation values, any container lists, missing and odd fields), the REAL
reconciler, driving the real applier against a real cgroup tree, keeps running, and every
container it can identify ends up at least as strictly limited, per field, as the node's
policy allows: limited (never unlimited) and never above the administrator's ceilings.

Host lane only: each example builds cgroups and runs a reconcile, which under the v2
lane's emulation would take minutes for a bounded number of examples.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diskguard.agent.reconciler import Reconciler, ReconcileSettings
from diskguard.kube.events import EventRequest
from diskguard.kube.namespaces import NamespaceEvent, namespace_event
from diskguard.kube.pods import MIRROR_ANNOTATION, PodEvent, PodParseError, parse_pod, pod_event
from diskguard.kube.watch import Changed, Relisted, WatchEvent
from diskguard.model import LIMIT_FIELDS, CgroupDriver, CgroupVersion, Device, ErrorStage, IOLimits
from diskguard.node.applier import Applier
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.limits import backend_for
from diskguard.policy.annotations import (
    AUTO_BPS,
    AUTO_IOPS,
    LIMIT_KEYS,
    LIMIT_REASON,
    SMART_LIMIT,
    SMART_OPT_OUT,
)
from diskguard.policy.exclusion import ExclusionFilter
from diskguard.policy.plan import KERNEL_MIN_LIMIT
from diskguard.policy.resolve import Guardrails
from diskguard.testing.fakeapi.objects import make_namespace, make_pod
from diskguard.testing.lab import KubeletRoot

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]

P = "iops-limit"
NODE = "node-1"
MiB = 1 << 20
DEFAULTS = IOLimits(riops=500, wiops=400, rbps=0, wbps=8 * MiB)  # rbps: unlimited default
CEILINGS = IOLimits(riops=1000, wiops=900, rbps=50 * MiB, wbps=40 * MiB)
NAMESPACES = ("default", "team-a", "team-b")

# -- values a tenant (or a broken API server) can put in an annotation -------------------

_TEXT_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "2",
            " 7 ",
            "+5",
            "-1",
            "1e3",
            "1.5",
            "10Mi",
            "1Ei",
            "9Ei",
            "1e400",
            "NaN",
            "١٢٣",
            "\x00",
            "true",
            str(2**32 - 1),
            str(2**32 - 2),
            str(2**63),
            "9" * 4300,
            "1" * 4301,
            "1" * 5000,
            "2" * 200_000,
        ]
    ),
    st.text(max_size=30),
)
# Not strings at all: the API server never sends these, a broken one or a kubelet might.
_ODD_VALUES = st.one_of(st.integers(), st.none(), st.floats(), st.lists(st.integers(), max_size=2))
_SUFFIXES = st.sampled_from(
    [*LIMIT_KEYS, SMART_LIMIT, AUTO_IOPS, AUTO_BPS, LIMIT_REASON, SMART_OPT_OUT]
)
_POD_KEYS = st.one_of(
    st.builds(lambda s: f"{P}/{s}", _SUFFIXES),
    st.just(MIRROR_ANNOTATION),
    st.text(max_size=20),
)
_NS_KEYS = st.one_of(
    st.builds(lambda s: f"{P}/default-{s}", _SUFFIXES),
    st.builds(lambda s: f"{P}/max-{s}", _SUFFIXES),
    st.text(max_size=20),
)


def _annotations(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    text = st.dictionaries(keys, _TEXT_VALUES, max_size=8)
    odd = st.one_of(
        st.dictionaries(keys, st.one_of(_TEXT_VALUES, _ODD_VALUES), max_size=4), _ODD_VALUES
    )
    return st.one_of(text, text, text, text, text, odd)


# -- damage to the rest of an object -----------------------------------------------------

Damage = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Damage:
    def apply(obj: dict[str, Any]) -> None:
        target: Any = obj
        for step in path[:-1]:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                return
        try:
            target[path[-1]] = value
        except (IndexError, TypeError):
            return

    return apply


def _delete(path: tuple[Any, ...]) -> Damage:
    def apply(obj: dict[str, Any]) -> None:
        target: Any = obj
        for step in path[:-1]:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                return
        if isinstance(target, dict):
            target.pop(path[-1], None)
        elif isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target):
            del target[path[-1]]

    return apply


_ODD: st.SearchStrategy[Any] = st.one_of(
    _ODD_VALUES, st.text(max_size=10), st.just({}), st.just([{}])
)
_POD_PATHS = st.sampled_from(
    [
        ("metadata",),
        ("metadata", "uid"),
        ("metadata", "name"),
        ("metadata", "namespace"),
        ("metadata", "labels"),
        ("spec",),
        ("spec", "nodeName"),
        ("spec", "containers"),
        ("spec", "containers", 0),
        ("spec", "containers", 0, "name"),
        ("spec", "containers", 0, "image"),
        ("spec", "initContainers"),
        ("status",),
        ("status", "qosClass"),
        ("status", "containerStatuses"),
        ("status", "containerStatuses", 0),
        ("status", "containerStatuses", 0, "name"),
        ("status", "containerStatuses", 0, "containerID"),
        ("status", "containerStatuses", 0, "state"),
        ("status", "containerStatuses", 0, "state", "running"),
        ("status", "containerStatuses", 1, "containerID"),
        ("status", "ephemeralContainerStatuses"),
    ]
)
_NS_PATHS = st.sampled_from(
    [("metadata",), ("metadata", "name"), ("metadata", "uid"), ("spec",), ("status",)]
)


def _damage(paths: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[list[Damage]]:
    one = st.one_of(st.builds(_set, paths, _ODD), st.builds(_delete, paths))
    # Mostly intact objects (else few containers would be identifiable at all).
    return st.one_of(st.just([]), st.just([]), st.lists(one, min_size=1, max_size=3))


_CONTAINER_NAMES = st.one_of(
    st.sampled_from(["app", "sidecar", "db"]), st.text(min_size=1, max_size=12)
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(_CONTAINER_NAMES, min_size=1, max_size=3, unique=True))
    pod = make_pod(
        f"p-{uuid.uuid4().hex[:8]}",
        draw(st.sampled_from(NAMESPACES)),
        draw(st.sampled_from([NODE, NODE, NODE, "other-node"])),
        containers=[(n, draw(st.sampled_from(["busybox", "app-pause", "x" * 300]))) for n in names],
        qos=draw(st.sampled_from(["Burstable", "BestEffort", "Guaranteed"])),
        runtime=draw(st.sampled_from(["containerd", "docker", "cri-o"])),
    )
    pod["metadata"]["annotations"] = draw(_annotations(_POD_KEYS))
    for damage in draw(_damage(_POD_PATHS)):
        damage(pod)
    return pod


@st.composite
def namespaces(draw: st.DrawFn) -> dict[str, Any]:
    ns = make_namespace(draw(st.sampled_from(NAMESPACES)))
    ns["metadata"]["annotations"] = draw(_annotations(_NS_KEYS))
    for damage in draw(_damage(_NS_PATHS)):
        damage(ns)
    return ns


@st.composite
def edits(draw: st.DrawFn, originals: list[dict[str, Any]]) -> list[WatchEvent]:
    """Later watch events: annotation edits of some pods, maybe a deletion."""
    events: list[WatchEvent] = []
    for pod in draw(st.lists(st.sampled_from(originals), max_size=3)) if originals else []:
        edited = copy.deepcopy(pod)
        if isinstance(edited.get("metadata"), dict):
            edited["metadata"]["annotations"] = draw(_annotations(_POD_KEYS))
        events.append(Changed(draw(st.sampled_from(["MODIFIED", "MODIFIED", "DELETED"])), edited))
    return events


# -- the property ------------------------------------------------------------------------


def _identifiable(events: list[WatchEvent]) -> dict[str, list[Any]]:
    """Per pod uid, the containers the reconciler can identify once these events are in,
    from the last version of each pod it could parse (it keeps acting on that version when
    an update is malformed)."""
    found: dict[str, list[Any]] = {}
    objects: list[tuple[str, Any]] = []
    for event in events:
        if isinstance(event, Relisted):
            if event.resource == "pods":
                objects += [("ADDED", obj) for obj in event.objects]
        elif event.resource == "pods":
            objects.append((event.kind, event.object))
    for kind, obj in objects:
        if kind == "DELETED":
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            found.pop(str(meta.get("uid", "")) if isinstance(meta, dict) else "", None)
            continue
        try:
            pod = parse_pod(obj)
        except PodParseError:
            continue
        if pod.node_name != NODE:
            found.pop(pod.uid, None)
            continue
        found[pod.uid] = [
            ref for c in pod.containers if c.running and (ref := pod.container_ref(c)) is not None
        ]
    return found


def _check_held(held: IOLimits, minimum: int, where: Path) -> None:
    for field in LIMIT_FIELDS:
        value, ceiling = getattr(held, field), getattr(CEILINGS, field)
        assert minimum <= value <= ceiling, f"{where}: {field}={value}, ceiling {ceiling}"


async def _drive(
    reconciler: Reconciler, events: list[WatchEvent], expect: int, stable: bool
) -> None:
    send, receive = trio.open_memory_channel[PodEvent](len(events) + 1)
    ns_send, ns_receive = trio.open_memory_channel[NamespaceEvent](len(events) + 1)
    for event in events:
        # Each resource has its own channel, parsed at the API edge as the agent wires it.
        if event.resource == "namespaces":
            ns_send.send_nowait(namespace_event(event))
        else:
            send.send_nowait(pod_event(event))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reconciler.run, receive, ns_receive)
        # Until every identifiable container has a result with its cgroup (they all exist)
        # and nothing is left to do. A crash of the task fails the test through the nursery.
        with trio.fail_after(30):
            while (
                len([r for r in reconciler.results.values() if r.cgroup is not None]) < expect
                or receive.statistics().current_buffer_used
                or ns_receive.statistics().current_buffer_used
                or not reconciler.synced.is_set()
            ):
                await trio.sleep(0.005)
        if stable:
            # What the plan says is what the kernel reads back: a full resync writes nothing
            # (a limit the kernel reads back differently would be rewritten every resync).
            wrote = reconciler.outcomes["changed"]
            await reconciler.reconcile(sorted(reconciler.pods))
            assert reconciler.outcomes["changed"] == wrote, [
                r.changes for r in reconciler.results.values() if r.changes
            ]
        nursery.cancel_scope.cancel()


@pytest.fixture
def world(
    cgroup_hierarchy: CgroupHierarchy, kubelet_root: KubeletRoot, make_loop_disk: Any
) -> tuple[CgroupHierarchy, KubeletRoot, Device]:
    return cgroup_hierarchy, kubelet_root, make_loop_disk(size_mib=16, filesystem=False).device


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    st.lists(pods(), max_size=5),
    st.lists(namespaces(), max_size=4),
    st.data(),
)
@example(
    pods=[
        make_pod(
            "huge",
            "team-a",
            NODE,
            annotations={
                f"{P}/iops": "1" * 5000,
                f"{P}/smart-limit": "true",
                f"{P}/auto-bps": "1" * 5000,
            },
        )
    ],
    nss=[make_namespace("team-a", annotations={f"{P}/max-iops": "1" * 5000})],
    data=None,
).via("the crash of issue 11")
def test_the_reconciler_survives_any_input_and_holds_the_node_policy(
    world: tuple[CgroupHierarchy, KubeletRoot, Device],
    pods: list[dict[str, Any]],
    nss: list[dict[str, Any]],
    data: st.DataObject | None,
) -> None:
    hierarchy, kubelet, device = world
    later = data.draw(edits(pods)) if data is not None else []
    events: list[WatchEvent] = [
        Relisted(tuple(nss), "1", resource="namespaces"),
        Relisted(tuple(pods), "1"),
        *later,
    ]
    refs = [ref for containers in _identifiable(events).values() for ref in containers]
    cgroups = {ref: kubelet.create(ref, CgroupDriver.CGROUPFS) for ref in refs}
    hypothesis.event(f"identifiable containers: {min(len(refs), 3)}+")

    events_out: list[EventRequest] = []
    backend = backend_for(hierarchy.version)
    reconciler = Reconciler(
        ReconcileSettings(
            node_name=NODE,
            prefix=P,
            defaults=DEFAULTS,
            exclusion=ExclusionFilter(),
            resync_interval=60.0,
            guardrails=Guardrails(ceilings=CEILINGS),
            cgroup_version=hierarchy.version,
        ),
        Applier(hierarchy, backend, (device,), CgroupDriver.CGROUPFS, kubelet.prefix),
        events_out.append,
    )
    # Pods sharing a cgroup (a static pod hash or container ID used twice) fight over it.
    stable = len(set(cgroups.values())) == len(refs)
    trio.run(_drive, reconciler, events, len({(r.pod_uid, r.container) for r in refs}), stable)

    minimum = KERNEL_MIN_LIMIT[hierarchy.version]
    for ref, cgroup in cgroups.items():
        held = backend.read(cgroup).get((device.major, device.minor), IOLimits())
        _check_held(held, minimum, cgroup)
        result = reconciler.results[ref.key]
        assert not result.error, result
    # Nothing was left to the fallback: every input was bounded and refused cleanly.
    assert reconciler.error_counts[ErrorStage.PLAN] == 0
    assert reconciler.error_counts[ErrorStage.EVENT] == 0
    # Events never echo an unbounded value.
    assert all(len(e.message) < 2000 for e in events_out)
    assert CgroupVersion(hierarchy.version)  # the lane is what the fixtures detected
