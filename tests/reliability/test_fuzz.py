"""Fuzzing every parser that takes outside input (no kernel needed): pod and namespace
annotations, label selectors, container IDs and pod UIDs on their way to a cgroup path,
env vars, cAdvisor payloads and kubelet pod lists. Nothing may crash; bad input gets the
parser's own error type with a message; no ID from outside can point a path anywhere but
below the hierarchy and kubelet root."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import trio
import trustme
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diskguard.agent.reconciler import Reconciler, ReconcileSettings
from diskguard.config import ConfigError, KubeletSettings, known_variables, load_config
from diskguard.kube.cadvisor import CadvisorParseError, parse_cadvisor
from diskguard.kube.events import EventRequest
from diskguard.kube.kubelet import KubeletClient, KubeletError
from diskguard.kube.kubelet_source import on_node
from diskguard.kube.pods import MIRROR_ANNOTATION, PodParseError, parse_pod, pod_event
from diskguard.kube.watch import Changed, Relisted
from diskguard.model import (
    LIMIT_FIELDS,
    MAX_BPS,
    MAX_IOPS,
    CgroupDriver,
    CgroupVersion,
    Device,
    IOLimits,
    PodInfo,
)
from diskguard.node.applier import Applier
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import (
    container_cgroup_candidates,
    parse_container_id,
    pod_cgroup_path,
    resolve_container_cgroup,
)
from diskguard.node.limits import backend_for
from diskguard.policy.annotations import LIMIT_KEYS
from diskguard.policy.exclusion import ExclusionFilter
from diskguard.policy.labels import SelectorError, parse_selector
from diskguard.policy.plan import plan_pod
from diskguard.policy.resolve import Guardrails, key_set, namespace_policy, resolve_limits

P = "iops-limit"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- value strategies: near-valid numbers, quantities, unicode digits, huge and hostile text

_NUMBERISH = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "00",
            "+5",
            "-0",
            "1e3",
            "1E3",
            "0x10",
            "1_000",
            "1.5",
            "1.5Ki",
            "10Mi",
            "500k",
            "1G",
            "1Ei",
            "9Ei",
            "1e400",
            "NaN",
            "inf",
            "-inf",
            "١٢٣",
            "\uff11\uff12\uff13",
            "½",
            "10 Mi",
            "10mi",
            " 7 ",
            "7\n",
            "\x00",
            "\u202e123",
            "9" * 400,
            "1" * 5000,  # past int()'s 4,300-digit limit (issue 11)
            str(2**32 - 1),
            str(2**32 - 2),
            str(2**63),
            str(2**63 - 1),
            "true",
            "null",
            # Percentages of each disk's capacity.
            "25%",
            " 12.5% ",
            "100%",
            "0.01%",
            "0%",
            "100.01%",
            "12.345%",
            "50 %",
            "%",
            "1e2%",
            "25%%",
        ]
    ),
    st.text(alphabet="0123456789.-+eEkKMGTPi% ", max_size=12),
    st.text(max_size=64),
    st.text(min_size=1000, max_size=5000, alphabet=st.characters(codec="utf-8")),
)
_SUFFIXES = st.sampled_from([*LIMIT_KEYS, "smart-limit", "auto-iops", "auto-bps", "x", ""])
_KEYS = st.one_of(
    st.builds(lambda s: f"{P}/{s}", _SUFFIXES),
    st.builds(lambda s: f"{P}/default-{s}", _SUFFIXES),
    st.builds(lambda s: f"{P}/max-{s}", _SUFFIXES),
    st.text(max_size=80),
)
ANNOTATIONS = st.dictionaries(_KEYS, _NUMBERISH, max_size=12)


DISK = Device(259, 0, "nvme0n1")


def _in_range(limits: IOLimits) -> None:
    for field in LIMIT_FIELDS:
        value = getattr(limits, field)
        top = MAX_IOPS if field.endswith("iops") else MAX_BPS
        assert isinstance(value, int) and 0 <= value <= top, (field, value)


@FUZZ
@given(st.lists(ANNOTATIONS, min_size=1, max_size=4), ANNOTATIONS, st.data())
def test_pod_and_namespace_annotations_resolve_to_kernel_range_limits(
    rounds: list[dict[str, str]], ns_annotations: dict[str, str], data: st.DataObject
) -> None:
    """A pod edited several times (memory carried over, as the reconciler does), in a
    namespace with fuzzed policy, under fuzzed ceilings: always a resolution in range, and
    every rejected key comes with a reason."""
    ceilings = data.draw(
        st.builds(
            IOLimits,
            st.integers(0, MAX_IOPS),
            st.integers(0, MAX_IOPS),
            st.integers(0, MAX_BPS),
            st.integers(0, MAX_BPS),
        )
    )
    guard = Guardrails(ceilings, frozenset(data.draw(st.sets(st.sampled_from(["ns", "x"])))))
    # The data disk's capacity, each field possibly unknown (0): percentages resolve on it.
    capacity = data.draw(
        st.builds(IOLimits, *(st.sampled_from([0, 1, 3, 2**20, 2**40, 2**70]) for _ in range(4)))
    )
    disks = {DISK: capacity}
    policy = namespace_policy("ns", ns_annotations, P, None, disks)
    policy = namespace_policy("ns", ns_annotations, P, policy.memory, disks)  # and with memory
    memory = None
    for pod_annotations in rounds:
        keys = key_set(pod_annotations, P, memory, capacity=disks)
        for bad in keys.parsed.invalid.values():
            assert bad.reason and bad.key in pod_annotations
        res = resolve_limits(
            keys,
            IOLimits(500, 500),
            namespace=policy,
            guardrails=guard,
            pod_namespace="ns",
            device=DISK,
            capacity=capacity,
        )
        _in_range(res.limits)
        _in_range(res.static)
        assert res.describe()  # the text that goes into Events never fails
        memory = res.memory


@FUZZ
@given(ANNOTATIONS, st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=5))
def test_plan_pod_with_fuzzed_annotations_and_labels(
    annotations: dict[str, str], labels: dict[str, str]
) -> None:
    pod = PodInfo(
        uid="0b9c6f1e-3a52-4a87-9d5e-2f1b7c3e4d01",
        namespace="default",
        name="web",
        node_name="n",
        qos=__import__("diskguard.model", fromlist=["QoSClass"]).QoSClass.BURSTABLE,
        labels=labels,
        annotations=annotations,
        containers=(),
    )
    exclusion = ExclusionFilter.from_strings("pause", "kube-system", "tier in (db),!canary", "")
    plan = plan_pod(pod, prefix=P, defaults=IOLimits(500, 500), exclusion=exclusion, previous=None)
    _in_range(plan.resolution.limits)


# -- label selectors -------------------------------------------------------------------

_SELECTOR_TOKENS = st.sampled_from(
    [
        "in",
        "notin",
        "=",
        "==",
        "!=",
        "!",
        ">",
        "<",
        "(",
        ")",
        ",",
        " ",
        "a",
        "b.c/d",
        "x-y",
        "1",
        "-1",
        "99999999999999999999",
        "é",
        "\t",
        "\n",
        "a" * 70,
        "k8s.io/",
        "/",
    ]
)


@FUZZ
@given(
    st.one_of(st.lists(_SELECTOR_TOKENS, max_size=15).map("".join), st.text(max_size=300)),
    st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=6),
)
def test_label_selector_parses_or_says_why_and_matching_never_fails(
    text: str, labels: dict[str, str]
) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as exc:
        assert str(exc)
        return
    assert isinstance(selector.matches(labels), bool)
    assert parse_selector(str(selector)) == selector


# -- container IDs and pod UIDs on their way to a cgroup path ---------------------------

_HOSTILE_IDS = st.sampled_from(
    [
        "containerd://../../x",
        "containerd://..",
        "docker://" + "a" * 64 + "/../../etc",
        "cri-o://" + "a" * 64 + "/..",
        "containerd:///" + "a" * 64,
        "containerd://" + "A" * 64,
        "containerd://" + "a" * 64 + "\n",
        "containerd://" + "a" * 11,
        "containerd://" + "a" * 129,
        "containerd://" + "٣" * 64,
        "containerd://" + "\uff41" * 64,
        "containerd://%2e%2e%2f",
        "rkt://" + "a" * 64,
        "containerd//" + "a" * 64,
        "containerd://" + "a" * 63 + "\x00",
        "containerd://" + "a" * 64,
        "docker://" + "0" * 12,
        "cri-o://" + "f" * 128,
    ]
)
_HOSTILE_UIDS = st.sampled_from(
    [
        "../../etc",
        "0b9c6f1e-3a52-4a87-9d5e-2f1b7c3e4d01",
        "-",
        "a/../b",
        "a" * 65,
        "",
        ".",
        "a-",
        "0b9c6f1e\n",
        "\uff21\uff22",
        "3f6b1c2d4e5f60718293a4b5c6d7e8f9",
        "a b",
        "a\\b",
    ]
)
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def raw_pods(draw: st.DrawFn) -> dict[str, Any]:
    """Pod objects from well-formed to absurd: hostile IDs, wrong types, missing parts."""
    names = draw(st.lists(st.text(max_size=10), min_size=0, max_size=3))
    cid = st.one_of(_HOSTILE_IDS, st.text(max_size=80), _JSONISH)
    statuses = [
        {
            "name": n,
            "containerID": draw(cid),
            "state": draw(st.sampled_from([{"running": {}}, {}, None])),
        }
        for n in names
    ]
    annotations = draw(ANNOTATIONS)
    if draw(st.booleans()):
        annotations[MIRROR_ANNOTATION] = draw(st.one_of(_HOSTILE_UIDS, st.text(max_size=40)))
    pod: dict[str, Any] = {
        "metadata": {
            "namespace": draw(st.sampled_from(["default", "kube-system", ""])),
            "name": draw(st.text(max_size=20)),
            "uid": draw(st.one_of(_HOSTILE_UIDS, st.text(max_size=40), _JSONISH)),
            "annotations": annotations,
            "labels": draw(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)),
            "resourceVersion": draw(st.text(max_size=5)),
        },
        "spec": {
            "nodeName": draw(st.sampled_from(["n", "other", None])),
            "containers": [{"name": n, "image": draw(st.text(max_size=10))} for n in names],
        },
        "status": {
            "qosClass": draw(
                st.sampled_from(["Burstable", "BestEffort", "Guaranteed", "??", None])
            ),
            "containerStatuses": statuses,
        },
    }
    # and sometimes the structure itself is wrong
    if draw(st.integers(0, 9)) == 0:
        section = draw(st.sampled_from(["metadata", "spec", "status"]))
        pod[section] = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _JSONISH)))
    return pod


KUBELET_ROOTS = ["/", "/dgfuzz", "/a/b.c", "/x_y/z-1"]


def _assert_safe(rel: PurePosixPath, kubelet_root: str) -> None:
    assert not rel.is_absolute() and ".." not in rel.parts and "." not in rel.parts, rel
    root = PurePosixPath(kubelet_root.strip("/") or ".")
    hierarchy = Path("/nonexistent-hierarchy")
    full = Path(os.path.normpath(hierarchy / rel))
    assert full.is_relative_to(hierarchy / root), (rel, kubelet_root)
    for part in rel.parts:
        assert "/" not in part and "\x00" not in part and "\n" not in part, rel


@FUZZ
@given(raw_pods(), st.sampled_from(KUBELET_ROOTS))
def test_pod_ids_never_build_a_path_outside_the_kubelet_root(
    obj: dict[str, Any], kubelet_root: str
) -> None:
    try:
        pod = parse_pod(obj)
    except PodParseError as exc:
        assert str(exc)
        return
    for c in pod.containers:
        ref = pod.container_ref(c)
        if ref is None:
            continue
        for rel in container_cgroup_candidates(ref, None, kubelet_root):
            _assert_safe(rel, kubelet_root)


@FUZZ
@given(st.one_of(_HOSTILE_IDS, st.text(max_size=200)))
def test_container_id_is_validated_before_it_becomes_a_path(raw: str) -> None:
    try:
        _runtime, cid = parse_container_id(raw)
    except ValueError as exc:
        assert str(exc)
        return
    assert cid.isascii() and cid.isalnum() and cid == cid.lower() and 12 <= len(cid) <= 128


@FUZZ
@given(st.one_of(_HOSTILE_UIDS, st.text(max_size=70)), st.text(max_size=60))
def test_pod_uid_and_kubelet_root_are_validated(uid: str, kubelet_root: str) -> None:
    from diskguard.model import QoSClass

    for driver in CgroupDriver:
        try:
            rel = pod_cgroup_path(uid, QoSClass.BESTEFFORT, driver, kubelet_root)
        except ValueError as exc:
            assert str(exc)
            continue
        _assert_safe(rel, "/" if driver is CgroupDriver.SYSTEMD else kubelet_root)


@FUZZ
@given(st.lists(raw_pods(), max_size=5))
def test_pod_lists_through_the_reconciler_touch_only_paths_below_the_root(
    tmp_path_factory: pytest.TempPathFactory, pods: list[dict[str, Any]]
) -> None:
    """What a kubelet `/pods` snapshot or an API relist goes through (on_node, then the
    reconciler's parse and planning, then cgroup resolution): never an exception, and the
    only directories looked at are below the hierarchy's kubelet root."""
    hierarchy = CgroupHierarchy(CgroupVersion.V1, tmp_path_factory.mktemp("h"))
    events: list[EventRequest] = []
    applier = Applier(hierarchy, backend_for(CgroupVersion.V1), (), None, "/dgfuzz")
    reconciler = Reconciler(
        ReconcileSettings("n", P, IOLimits(500, 500), ExclusionFilter(), 60.0),
        applier,
        events.append,
    )
    snapshot = on_node(pods, "n")
    reconciler.on_pod_event(pod_event(Relisted(snapshot, "1")))
    for obj in snapshot:
        reconciler.on_pod_event(pod_event(Changed("MODIFIED", obj)))
    for pod in list(reconciler.pods.values()):
        plan = plan_pod(
            pod,
            prefix=P,
            defaults=IOLimits(500, 500),
            exclusion=ExclusionFilter(),
            previous=None,
        )
        for cplan in plan.containers:
            for rel in container_cgroup_candidates(cplan.ref, None, "/dgfuzz"):
                _assert_safe(rel, "/dgfuzz")
            assert resolve_container_cgroup(hierarchy, cplan.ref, None, "/dgfuzz") is None
        _in_range(plan.resolution.limits)
    assert not any(hierarchy.path.iterdir())  # nothing created by looking


# -- env vars ----------------------------------------------------------------------------

_ENV_VALUES = st.one_of(
    _NUMBERISH,
    st.sampled_from(
        [
            "auto",
            "v1",
            "v2",
            "true",
            "false",
            "/",
            "/data",
            "relative",
            "/a,,/b",
            ":2112",
            "[::1]:80",
            "127.0.0.1:99999",
            "a in (b",
            "(",
            "[",
            "*",
            "\x00",
            "é" * 300,
            "0.0",
            "-1",
            "1e-9",
            "nan",
            "inf",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(known_variables())), _ENV_VALUES, max_size=8))
def test_any_env_loads_or_raises_a_config_error_naming_the_variable(env: dict[str, str]) -> None:
    env = {"NODE_NAME": "n", **env}
    try:
        load_config(env)
    except ConfigError as exc:
        # Variables that only work in pairs name the missing partner of the one set.
        partners = {
            "KUBELET_CLIENT_KEY_PATH": "KUBELET_CLIENT_CERT_PATH",
            "KUBELET_CLIENT_CERT_PATH": "KUBELET_CLIENT_KEY_PATH",
        }
        assert exc.variable in env or partners.get(exc.variable) in env, exc
        assert str(exc).startswith(f"{exc.variable}=")


# -- cAdvisor payloads -----------------------------------------------------------------

_METRICS = st.sampled_from(
    [
        "container_fs_reads_total",
        "container_fs_writes_total",
        "container_fs_reads_bytes_total",
        "container_fs_writes_bytes_total",
        "container_fs_reads",
        "container_cpu_usage_seconds_total",
    ]
)
_LABEL_VALUE = st.one_of(
    st.sampled_from(["default", "web", "app", "/dev/vdb", "vdb", "", "POD"]), st.text(max_size=10)
)


@st.composite
def cadvisor_lines(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=60))
    if kind == 1:
        return f"# TYPE {draw(_METRICS)} {draw(st.sampled_from(['counter', 'gauge', 'bogus', '']))}"
    labels = ",".join(
        f'{k}="{draw(_LABEL_VALUE)}"'
        for k in draw(
            st.lists(st.sampled_from(["namespace", "pod", "container", "device", "x"]), max_size=5)
        )
    )
    value = draw(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.integers(-(2**70), 2**70).map(str),
            st.sampled_from(["NaN", "+Inf", "x"]),
        )
    )
    stamp = draw(st.sampled_from(["", " 1700000000000", " -1", " 1e30", " abc"]))
    return f"{draw(_METRICS)}{{{labels}}} {value}{stamp}"


@FUZZ
@given(
    st.lists(cadvisor_lines(), max_size=12).map("\n".join),
    st.one_of(st.none(), st.lists(st.sampled_from(["vdb", "/dev/vdb", "", "/dev/"]))),
)
def test_cadvisor_payload_parses_or_says_why(text: str, devices: list[str] | None) -> None:
    try:
        parsed = parse_cadvisor(text, devices)
    except CadvisorParseError as exc:
        assert str(exc)
        return
    for key, io in parsed.items():
        assert key.namespace and key.pod and key.container not in ("", "POD")
        assert all(v >= 0 for v in attrs_values(io.counters))


def attrs_values(obj: Any) -> list[int]:
    import attrs

    return [int(v) for v in attrs.asdict(obj).values()]


# -- kubelet /pods payloads over real TLS ------------------------------------------------


@pytest.fixture(scope="module")
def fake_kubelet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, KubeletSettings]]:
    from diskguard.testing.fakekubelet import FakeKubelet, server_tls_context

    ca = trustme.CA()
    ca_path = tmp_path_factory.mktemp("kubelet") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with FakeKubelet(server_tls_context(ca), token=None) as fake:
        yield fake, KubeletSettings(host="localhost", port=fake.port, ca_path=str(ca_path))


_BODIES = st.one_of(
    st.text(max_size=100),
    _JSONISH.map(json.dumps),
    st.lists(_JSONISH, max_size=4).map(
        lambda items: json.dumps({"kind": "PodList", "items": items})
    ),
    st.sampled_from(
        [
            '{"kind":"PodList"}',
            '{"items": null}',
            "[]",
            "null",
            '{"items": [1]}',
            '{"items": [{}]}',
            "\ufeff{}",
            '{"items": [{"metadata": 5}]}',
        ]
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_BODIES)
def test_kubelet_pod_list_payload_is_a_pod_list_or_a_kubelet_error(
    fake_kubelet: tuple[Any, KubeletSettings], body: str
) -> None:
    fake, kubelet_settings = fake_kubelet
    fake.fail_next(1, status=200, body=body)

    async def fetch() -> list[dict[str, Any]] | KubeletError:
        async with KubeletClient(kubelet_settings) as client:
            try:
                return await client.pods()
            except KubeletError as exc:
                return exc

    result = trio.run(fetch)
    if isinstance(result, KubeletError):
        assert str(result)
        return
    # the client's contract; what parse_pod makes of the items is the test below
    assert isinstance(result, list) and all(isinstance(p, dict) for p in result)


@FUZZ
@example({"metadata": 5})
@example({"metadata": {"uid": "ab"}, "spec": {"containers": ["app"]}})
@example({"metadata": {"uid": "ab", "annotations": {f"{P}/iops": 5}}})
@given(_JSONISH.filter(lambda o: isinstance(o, dict)) | raw_pods())
def test_structurally_malformed_pods_are_refused_with_a_pod_parse_error(obj: Any) -> None:
    try:
        on_node([obj], "n")
        pod = parse_pod(obj)
    except PodParseError as exc:
        assert str(exc)
        return
    plan_pod(pod, prefix=P, defaults=IOLimits(), exclusion=ExclusionFilter(), previous=None)
