"""The reconciler follows the data disks' capacity: percentages are planned against it, and
a change of capacity (a profile rewritten, other data disks) plans every pod again (pure:
the applier looks for cgroups under an empty temporary hierarchy and finds none)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from diskguard.agent.namespace_policies import NamespacePolicies
from diskguard.agent.reconciler import Reconciler, ReconcileSettings
from diskguard.kube.events import EventRequest
from diskguard.kube.namespaces import NamespaceEvent, NamespaceInfo
from diskguard.kube.pods import PodEvent, pod_event
from diskguard.kube.watch import Relisted
from diskguard.model import CgroupVersion, Device, IOLimits
from diskguard.node.applier import Applier
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.limits import backend_for
from diskguard.policy.exclusion import ExclusionFilter
from diskguard.policy.resolve import Guardrails
from diskguard.policy.shares import Capacities
from diskguard.policy.values import LimitSettings, Share
from diskguard.testing.fakeapi.objects import make_pod

P = "iops-limit"
NODE = "node-1"
FAST = Device(259, 0, "nvme0n1")
SLOWER = Device(8, 16, "sdb")


class Capacity:
    """What the reconciler reads as the disks' capacity; the test changes it."""

    def __init__(self, known: dict[Device, IOLimits]) -> None:
        self.known = known
        self.reads = 0
        self.broken = False

    def __call__(self, devices: Sequence[Device]) -> Capacities:
        self.reads += 1
        if self.broken:
            raise OSError("no state dir")
        return {d: self.known.get(d, IOLimits()) for d in devices}


def world(
    tmp_path: Path, capacity: Capacity, devices: tuple[Device, ...] = (FAST,)
) -> tuple[Reconciler, list[EventRequest], Applier]:
    hierarchy = CgroupHierarchy(CgroupVersion.V1, tmp_path)
    applier = Applier(hierarchy, backend_for(CgroupVersion.V1), devices, None, "/dgtest")
    events: list[EventRequest] = []
    settings = ReconcileSettings(
        NODE, P, IOLimits(500, 500), ExclusionFilter(), 60.0, capacity_check_interval=0.05
    )
    return Reconciler(settings, applier, events.append, capacity=capacity), events, applier


def pods(*objs: dict[str, Any]) -> PodEvent:
    return pod_event(Relisted(tuple(objs), "1"))


def uid(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["uid"])


def wiops(reconciler: Reconciler, uid: str, device: Device) -> int | None:
    plan = reconciler.plans.get(uid)
    wanted = None if plan is None else plan.containers[0].desired.get(device)
    return None if wanted is None else wanted.against(IOLimits()).wiops


async def test_a_percentage_follows_the_capacity_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "diskguard.agent.reconciler")
    capacity = Capacity({FAST: IOLimits(8000, 2000)})
    reconciler, events, _ = world(tmp_path, capacity)
    web = make_pod("web", node=NODE, annotations={f"{P}/write-iops": "25%"})
    plain = make_pod("plain", node=NODE, annotations={f"{P}/write-iops": "70"})
    reconciler.on_pod_event(pods(web, plain))
    await reconciler.reconcile([uid(web), uid(plain)])
    assert wiops(reconciler, uid(web), FAST) == 500
    assert reconciler.capacity == {FAST: IOLimits(8000, 2000)}

    async def reads(more: int) -> None:
        until = capacity.reads + more
        with trio.fail_after(5):
            while capacity.reads < until:
                await trio.sleep(0.01)

    _pod_send, pod_receive = trio.open_memory_channel[PodEvent](10)
    ns_send, ns_receive = trio.open_memory_channel[NamespaceEvent](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reconciler.run, pod_receive, ns_receive)
        await ns_send.send(Relisted((), "1", "namespaces"))  # pods wait for the namespaces
        await reads(2)  # at start, and once more on the check interval
        capacity.known = {FAST: IOLimits(8000, 1200)}  # `diskguard profile` measured again
        with trio.fail_after(5):
            while wiops(reconciler, uid(web), FAST) != 300:
                await trio.sleep(0.01)
        await reads(3)  # read again, unchanged: not a change
        changes = [r for r in caplog.records if r.getMessage().startswith("data disk capacity")]
        assert len(changes) == 2  # the first read, and the record rewritten
        nursery.cancel_scope.cancel()
    assert wiops(reconciler, uid(plain), FAST) == 70
    assert not [e for e in events if e.reason == "InvalidIOLimit"]


async def test_new_data_disks_are_planned_with_their_capacity(tmp_path: Path) -> None:
    capacity = Capacity({FAST: IOLimits(8000, 2000), SLOWER: IOLimits(1200, 800)})
    reconciler, events, applier = world(tmp_path, capacity)
    web = make_pod("web", node=NODE, annotations={f"{P}/write-iops": "25%"})
    reconciler.on_pod_event(pods(web))
    await reconciler.reconcile([uid(web)])
    assert wiops(reconciler, uid(web), SLOWER) is None  # not a data disk yet
    applier.set_devices((FAST, SLOWER))  # as the agent moves limits to new data disks
    await reconciler.reconcile([uid(web)])
    assert (wiops(reconciler, uid(web), FAST), wiops(reconciler, uid(web), SLOWER)) == (500, 200)
    assert not [e for e in events if e.reason == "InvalidIOLimit"]


async def test_a_percentage_without_capacity_is_an_invalid_io_limit(tmp_path: Path) -> None:
    capacity = Capacity({FAST: IOLimits(8000, 2000)})
    reconciler, events, _ = world(tmp_path, capacity, devices=(FAST, SLOWER))
    web = make_pod("web", node=NODE, annotations={f"{P}/write-iops": "25%"})
    reconciler.on_pod_event(pods(web))
    await reconciler.reconcile([uid(web)])
    [event] = [e for e in events if e.reason == "InvalidIOLimit"]
    assert event.name == "web" and event.type.value == "Warning"
    assert f"annotation {P}/write-iops='25%' ignored" in event.message
    assert "IOPS capacity of sdb (8:16) is not known" in event.message
    assert "wiops stays as the kernel holds it" in event.message
    # Profiled: the same annotation is good now, on both disks.
    capacity.known[SLOWER] = IOLimits(1200, 800)
    assert await reconciler.refresh_capacity((FAST, SLOWER))
    await reconciler.reconcile([uid(web)])
    assert (wiops(reconciler, uid(web), FAST), wiops(reconciler, uid(web), SLOWER)) == (500, 200)


async def test_an_unreadable_capacity_keeps_the_last_one(tmp_path: Path) -> None:
    capacity = Capacity({FAST: IOLimits(8000, 2000)})
    reconciler, _, _ = world(tmp_path, capacity)
    assert await reconciler.refresh_capacity((FAST,))
    capacity.broken = True
    assert not await reconciler.refresh_capacity((FAST,))
    assert reconciler.capacity == {FAST: IOLimits(8000, 2000)}


async def test_an_unreadable_first_capacity_falls_back_on_the_declared_one(
    tmp_path: Path,
) -> None:
    """An env ceiling as a percentage (the config requires a declared capacity for it) holds
    even when the record was never read: it is of the declared capacity then."""
    capacity = Capacity({})
    capacity.broken = True
    hierarchy = CgroupHierarchy(CgroupVersion.V1, tmp_path)
    applier = Applier(hierarchy, backend_for(CgroupVersion.V1), (FAST,), None, "/dgtest")
    settings = ReconcileSettings(
        NODE,
        P,
        IOLimits(500, 500),
        ExclusionFilter(),
        60.0,
        guardrails=Guardrails(LimitSettings(wiops=Share(Decimal(10)))),
        declared_capacity=IOLimits.per_unit(1000, 0),
    )
    events: list[EventRequest] = []
    reconciler = Reconciler(settings, applier, events.append, capacity=capacity)
    assert await reconciler.refresh_capacity((FAST,))  # failed, yet something to plan with
    assert reconciler.capacity == {FAST: IOLimits.per_unit(1000, 0)}
    web = make_pod("web", node=NODE, annotations={f"{P}/write-iops": "0"})
    reconciler.on_pod_event(pods(web))
    await reconciler.reconcile([uid(web)])
    assert wiops(reconciler, uid(web), FAST) == 100  # unlimited asked, 10 % of 1,000 held


@pytest.mark.parametrize("known", [True, False])
def test_namespace_percentages_are_judged_against_the_capacity(known: bool) -> None:
    events: list[EventRequest] = []
    policies = NamespacePolicies(P, events.append)
    disks = {FAST: IOLimits(8000, 2000)}
    if known:
        policies.set_capacity(disks)
    ns = NamespaceInfo("team", "u-team", {f"{P}/default-write-iops": "10%"})
    policies.on_event(Relisted((ns,), "1", "namespaces"))
    policy = policies.get("team")
    assert policy is not None
    assert ("write-iops" in policy.defaults.parsed.values) is known
    assert bool([e for e in events if e.reason == "InvalidIOPolicy"]) is not known
    # A change of capacity judges every namespace again.
    changed = policies.set_capacity({} if known else disks)
    assert changed == {"team"}
    policy = policies.get("team")
    assert policy is not None
    if known:  # the capacity went: the last good percentage stays, and an Event says so
        assert policy.defaults.memory == {"write-iops": policy.defaults.memory["write-iops"]}
        [event] = [e for e in events if e.reason == "InvalidIOPolicy"]
        assert "no data disk is known" in event.message
    else:
        assert "write-iops" in policy.defaults.parsed.values
