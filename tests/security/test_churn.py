"""Pod churn: 10,000 pods come and go through the real agent; what it keeps per pod goes
with the pod, so its memory follows the pods on the node, not how many ever were there."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import trio

from diskguard.model import IOLimits
from tests.agent.conftest import Cluster, P, scaled

pytestmark = [pytest.mark.kernel, pytest.mark.host_only, pytest.mark.slow]

TOTAL = 10_000
BATCH = 500
# Any table still holding more entries than this after the churn grows with churn.
BOUND = 64
# Tables with a bound of their own (the Event queue drops its oldest beyond 1,000).
BOUNDED = {"_items": 1000}


def tables(root: object, depth: int = 4) -> dict[str, int]:
    """Sizes of every dict, set, list and deque reachable from `root` through diskguard's
    own objects (attribute paths as names)."""
    found: dict[str, int] = {}
    seen: set[int] = set()
    queue: collections.deque[tuple[str, object, int]] = collections.deque([("agent", root, 0)])
    while queue:
        path, obj, level = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict | set | frozenset | list | collections.deque):
            found[path] = len(obj)
            continue
        if level >= depth or not type(obj).__module__.startswith("diskguard"):
            continue
        attrs = getattr(obj, "__dict__", None)
        if attrs is None:
            slots = getattr(type(obj), "__slots__", ())
            attrs = {s: getattr(obj, s) for s in slots if hasattr(obj, s)}
        for name, value in attrs.items():
            queue.append((f"{path}.{name}", value, level + 1))
    return found


async def test_ten_thousand_pods_come_and_go_and_leave_nothing_behind(
    cluster: Cluster, start_agent: Any
) -> None:
    keeper = cluster.add_pod("keeper", annotations={f"{P}/iops": "100"})
    running = await start_agent()
    agent = running.agent
    before = tables(agent)
    created = 0
    while created < TOTAL:
        names = [f"churn-{created + i}" for i in range(BATCH)]
        for i, name in enumerate(names):
            # every other pod has a cgroup; the rest wait for one that never comes
            cluster.add_pod(
                name,
                annotations={f"{P}/write-iops": str(50 + i % 7), f"{P}/bps": "x" * (i % 3)},
                create_cgroups=i % 2 == 0,
            )
        with trio.fail_after(scaled(60)):
            while not all(n in {p.name for p in agent.reconciler.pods.values()} for n in names):
                await trio.sleep(0.05)
        for name in names:
            cluster.api.delete("pods", "default", name)
        with trio.fail_after(scaled(60)):
            while len(agent.reconciler.pods) > 1:
                await trio.sleep(0.05)
        created += BATCH
    # The survivor is still limited and the agent still answers edits.
    cg = cluster.cgroup(cluster.refs(keeper)[0])
    cluster.set_annotations("default", "keeper", {f"{P}/iops": "120"})
    await cluster.wait_kernel(cg, IOLimits(120, 120), timeout=5)

    def grown() -> dict[str, int]:
        return {
            name: size
            for name, size in tables(agent).items()
            if size > BOUNDED.get(name.rsplit(".", 1)[-1], BOUND) and size > 2 * before.get(name, 0)
        }

    # The sampler lets go of a cgroup at its next pass (SAMPLE_INTERVAL): wait for it.
    with trio.move_on_after(scaled(10)):
        while grown():
            await trio.sleep(0.2)
    assert not grown(), f"tables that grew with {TOTAL} pods of churn: {grown()}"
