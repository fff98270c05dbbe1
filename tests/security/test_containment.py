"""Containment, with faults injected where no tenant input reaches any more: a planning
step that raises for one pod, a limit backend that raises for one container, a cgroup
that never appears. The real reconciler drives the real applier on real cgroups; the one
pod or container fails, visibly, and every other container still gets its limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import diskguard.agent.reconciler as reconciler_module
from diskguard.agent.reconciler import Reconciler, ReconcileSettings
from diskguard.kube.events import EventRequest
from diskguard.kube.namespaces import NamespaceEvent
from diskguard.kube.pods import PodEvent, parse_pod, pod_event
from diskguard.kube.watch import Changed, Relisted
from diskguard.model import (
    CgroupDriver,
    CgroupVersion,
    ContainerInfo,
    Device,
    ErrorStage,
    IOLimits,
    PodInfo,
)
from diskguard.node.applier import Applier
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.limits import V1Backend, V2Backend, backend_for
from diskguard.policy.exclusion import Exclusion, ExclusionFilter
from diskguard.policy.resolve import Guardrails
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.lab import KubeletRoot
from diskguard.web.status import containers_json, pod_errors_json

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]

P = "iops-limit"
NODE = "node-1"
DEFAULTS = IOLimits(500, 500)
CEILINGS = IOLimits(1000, 1000)


class _BoomFilter(ExclusionFilter):
    """An exclusion filter with a bug for one pod name (as a regex engine might have)."""

    def container_exclusion(self, pod: PodInfo, container: ContainerInfo) -> Exclusion | None:
        if pod.name == "boom":
            raise RuntimeError("a bug in planning")
        return super().container_exclusion(pod, container)


def _failing_backend(version: Any, bad: set[Path]) -> Any:
    base = V1Backend if version is CgroupVersion.V1 else V2Backend

    class Failing(base):  # type: ignore[misc, valid-type]
        def read(self, cgroup_dir: Path) -> Any:
            if cgroup_dir in bad:
                raise ZeroDivisionError("an unexpected bug for this cgroup")
            return super().read(cgroup_dir)

    return Failing()


def _world(
    hierarchy: CgroupHierarchy, kubelet: KubeletRoot, device: Device, **kw: Any
) -> tuple[Reconciler, list[EventRequest]]:
    events: list[EventRequest] = []
    backend = kw.pop("backend", None) or backend_for(hierarchy.version)
    reconciler = Reconciler(
        ReconcileSettings(
            node_name=NODE,
            prefix=P,
            defaults=DEFAULTS,
            exclusion=kw.pop("exclusion", ExclusionFilter()),
            resync_interval=kw.pop("resync_interval", 3600.0),
            guardrails=Guardrails(ceilings=CEILINGS),
            cgroup_version=hierarchy.version,
        ),
        Applier(hierarchy, backend, (device,), CgroupDriver.CGROUPFS, kubelet.prefix),
        events.append,
    )
    return reconciler, events


def _cgroup(kubelet: KubeletRoot, pod: dict[str, Any]) -> Path:
    info = parse_pod(pod)
    ref = info.container_ref(info.containers[0])
    assert ref is not None
    return kubelet.create(ref, CgroupDriver.CGROUPFS)


def _held(hierarchy: CgroupHierarchy, cgroup: Path, device: Device) -> IOLimits:
    return backend_for(hierarchy.version).read(cgroup).get((device.major, device.minor), IOLimits())


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def world(
    cgroup_hierarchy: CgroupHierarchy, kubelet_root: KubeletRoot, make_loop_disk: Any
) -> tuple[CgroupHierarchy, KubeletRoot, Device]:
    return cgroup_hierarchy, kubelet_root, make_loop_disk(size_mib=16, filesystem=False).device


async def test_a_pod_whose_planning_raises_fails_alone(world: Any) -> None:
    hierarchy, kubelet, device = world
    reconciler, _ = _world(hierarchy, kubelet, device, exclusion=_BoomFilter())
    boom = make_pod("boom", "default", NODE, annotations={f"{P}/iops": "100"})
    fine = make_pod("fine", "default", NODE, annotations={f"{P}/iops": "101"})
    boom_cg, fine_cg = _cgroup(kubelet, boom), _cgroup(kubelet, fine)
    send, receive = trio.open_memory_channel[PodEvent](10)
    ns_send, ns_receive = trio.open_memory_channel[NamespaceEvent](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reconciler.run, receive, ns_receive)
        await ns_send.send(Relisted((), "1", resource="namespaces"))
        await send.send(pod_event(Relisted((boom, fine), "1")))
        await _until(lambda: _held(hierarchy, fine_cg, device) == IOLimits(101, 101), "fine")
        assert reconciler.error_counts[ErrorStage.PLAN] >= 1
        errors = pod_errors_json(reconciler)
        assert [(e["stage"], e["pod"]) for e in errors["latest"]] == [("plan", "default/boom")]
        assert "a bug in planning" in errors["latest"][0]["error"]
        # The task lives on: a later pod is limited.
        later = make_pod("later", "default", NODE, annotations={f"{P}/iops": "102"})
        later_cg = _cgroup(kubelet, later)
        await send.send(pod_event(Changed("ADDED", later)))
        await _until(lambda: _held(hierarchy, later_cg, device) == IOLimits(102, 102), "later")
        assert _held(hierarchy, boom_cg, device) == IOLimits()  # no plan: nothing written
        nursery.cancel_scope.cancel()


async def test_a_container_whose_apply_raises_fails_alone(world: Any) -> None:
    hierarchy, kubelet, device = world
    bad = make_pod("bad", "default", NODE, annotations={f"{P}/iops": "100"})
    fine = make_pod("fine", "default", NODE, annotations={f"{P}/iops": "101"})
    bad_cg, fine_cg = _cgroup(kubelet, bad), _cgroup(kubelet, fine)
    backend = _failing_backend(hierarchy.version, {bad_cg})
    reconciler, _ = _world(hierarchy, kubelet, device, backend=backend)
    send, receive = trio.open_memory_channel[PodEvent](10)
    ns_send, ns_receive = trio.open_memory_channel[NamespaceEvent](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reconciler.run, receive, ns_receive)
        await ns_send.send(Relisted((), "1", resource="namespaces"))
        await send.send(pod_event(Relisted((bad, fine), "1")))
        await _until(lambda: _held(hierarchy, fine_cg, device) == IOLimits(101, 101), "fine")
        await _until(lambda: reconciler.error_counts[ErrorStage.APPLY] >= 1, "apply error")
        [bad_status] = [c for c in containers_json(reconciler, {}, P) if c["pod"] == "bad"]
        assert "ZeroDivisionError" in bad_status["error"]
        errors = pod_errors_json(reconciler)["latest"]
        assert [(e["stage"], e["pod"], e["container"]) for e in errors] == [
            ("apply", "default/bad", "app")
        ]
        assert reconciler.outcomes["error"] >= 1
        nursery.cancel_scope.cancel()


async def test_a_cgroup_that_never_appears_is_retried_a_bounded_number_of_times(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hierarchy, kubelet, device = world
    monkeypatch.setattr(reconciler_module, "RETRY_ATTEMPTS", 4)
    reconciler, _ = _world(hierarchy, kubelet, device)
    pod = make_pod("sandboxed", "default", NODE, annotations={f"{P}/iops": "100"})
    uid = pod["metadata"]["uid"]
    send, receive = trio.open_memory_channel[PodEvent](10)
    ns_send, ns_receive = trio.open_memory_channel[NamespaceEvent](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reconciler.run, receive, ns_receive)
        await ns_send.send(Relisted((), "1", resource="namespaces"))
        await send.send(pod_event(Relisted((pod,), "1")))
        await _until(lambda: uid in reconciler.cgroup_given_up, "given up")
        # The first try and RETRY_ATTEMPTS retries, then nothing until the pod changes.
        tries = reconciler.outcomes["cgroup_missing"]
        assert tries == 5, reconciler.outcomes
        assert reconciler._states[uid].retry is None
        [status] = containers_json(reconciler, {}, P)
        assert status["cgroup_wait"] == "given up" and status["cgroup"] is None
        # A pod event starts a new round, and finds the cgroup now there.
        cg = _cgroup(kubelet, pod)
        pod["metadata"]["annotations"][f"{P}/iops"] = "99"
        await send.send(pod_event(Changed("MODIFIED", pod)))
        # The kernel holds the limit as soon as the worker thread wrote it; the reconciler
        # takes the outcome in a moment later: wait for both.
        await _until(
            lambda: (
                _held(hierarchy, cg, device) == IOLimits(99, 99)
                and uid not in reconciler.cgroup_given_up
            ),
            "limited and no longer given up",
        )
        [status] = containers_json(reconciler, {}, P)
        assert status["cgroup_wait"] is None
        nursery.cancel_scope.cancel()
