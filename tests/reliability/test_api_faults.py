"""The agent against a misbehaving API server: unreachable at start, dropped watches,
410 storms, slow and hung responses, failing Event posts. Every test ends on what the
kernel holds in the real cgroups (and, for Events, on what the API server stored)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio

from diskguard.model import IOLimits

from .conftest import DEFAULT, Cluster, P, expected_limits, http_get, wait_all, wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]


def _pods(cluster: Cluster, n: int, prefix: str = "p") -> dict[str, list[Any]]:
    """n pods x 2 containers, no annotations: name -> container cgroups."""
    out = {}
    for i in range(n):
        pod = cluster.add_pod(f"{prefix}{i}", containers=(("a", "img"), ("b", "img")))
        out[f"{prefix}{i}"] = [cluster.cgroup(r) for r in cluster.refs(pod)]
    return out


async def test_api_server_unreachable_at_start_up_then_converges(
    cluster: Cluster, launch_agent: Any
) -> None:
    pods = _pods(cluster, 3)
    cluster.set_annotations("default", "p1", {f"{P}/write-iops": "120"})
    cluster.api.go_down()
    running = await launch_agent(READINESS_WATCH_GRACE="0.5")
    base = running.agent.http_binds[0]
    await trio.sleep(2.0)  # several failed list attempts
    ready = await http_get(base, "/readyz")
    assert ready.status_code == 503 and "initial reconcile not done" in ready.text
    assert (await http_get(base, "/healthz")).status_code == 200  # alive: no restart loop
    assert running.agent.pod_watcher.health.failing_since is not None
    for cgroups in pods.values():  # nothing was guessed while blind
        assert all(cluster.kernel(cg) == IOLimits() for cg in cgroups)

    cluster.api.come_back()
    expected = {cg: DEFAULT for cg in pods["p0"] + pods["p2"]}
    expected |= {cg: IOLimits(500, 120) for cg in pods["p1"]}
    # backoff after ~2 s of failures is a few seconds at most
    await wait_all(cluster, expected, timeout=15, what="after the API server came back")
    await wait_until(
        lambda: running.agent.ready(), timeout=5, what="/readyz ready after the first reconcile"
    )
    assert (await http_get(base, "/readyz")).status_code == 200


class Edits:
    """The pods' annotations as the test set them, and what the kernel must end up holding."""

    def __init__(self, cluster: Cluster, pods: dict[str, list[Any]]) -> None:
        self.cluster = cluster
        self.pods = pods
        self.annotations: dict[str, dict[str, str]] = {name: {} for name in pods}
        self.deleted: set[str] = set()

    def live(self) -> list[str]:
        return sorted(set(self.pods) - self.deleted)

    def edit(self, name: str, key: str, value: str) -> None:
        self.cluster.set_annotations("default", name, {f"{P}/{key}": value})
        self.annotations[name][f"{P}/{key}"] = value

    def create(self, name: str, key: str, value: str) -> None:
        pod = self.cluster.add_pod(name, annotations={f"{P}/{key}": value})
        self.pods[name] = [self.cluster.cgroup(r) for r in self.cluster.refs(pod)]
        self.annotations[name] = {f"{P}/{key}": value}

    def delete(self, name: str) -> None:
        self.cluster.api.delete("pods", "default", name)
        self.deleted.add(name)

    def expected(self) -> dict[Any, IOLimits]:
        return {
            cg: expected_limits(self.annotations[name])
            for name in self.live()
            for cg in self.pods[name]
        }


async def test_watch_dropped_repeatedly_with_edits_creates_and_deletes_in_between(
    cluster: Cluster, start_agent: Any
) -> None:
    rng = random.Random(7)
    world = Edits(cluster, _pods(cluster, 8))
    running = await start_agent()
    await wait_all(cluster, world.expected(), timeout=5)
    relists = running.agent.pod_watcher.health.relists
    for rnd in range(6):
        # an edit just before the cut, the cut, then edits while the agent reconnects
        world.edit(rng.choice(world.live()), "iops", str(100 + rnd))
        # cut the pod and namespace watches once the agent has both open again
        await trio.to_thread.run_sync(lambda: cluster.api.wait_for_watches(2, timeout=10))
        assert cluster.api.drop_watches() >= 2
        for _ in range(3):
            key = rng.choice(["write-iops", "read-iops", "write-bps"])
            world.edit(rng.choice(world.live()), key, str(rng.randrange(10, 400)))
        world.create(f"new{rnd}", "read-iops", str(50 + rnd))
        world.delete(rng.choice(world.live()))
        await trio.sleep(rng.uniform(0.0, 0.3))
    await wait_all(cluster, world.expected(), timeout=10, what="after six dropped watches")
    # resumed from the last resourceVersion each time: nothing was missed, so no relist
    assert running.agent.pod_watcher.health.relists == relists

    # Deletions seen across the drops (a deleted pod leaves no limit to wait for above, so
    # wait, bounded, for the reconciler to have taken its DELETED in).
    def live() -> set[str]:
        return {p.name for p in running.agent.reconciler.pods.values()}

    with trio.move_on_after(5):  # host lane only
        while live() != set(world.live()):
            await trio.sleep(0.02)
    assert live() == set(world.live())


async def test_410_storm_while_editing_relists_and_converges(
    cluster: Cluster, start_agent: Any
) -> None:
    rng = random.Random(11)
    world = Edits(cluster, _pods(cluster, 6))
    running = await start_agent()
    relists = running.agent.pod_watcher.health.relists
    for i in range(25):
        name = rng.choice(world.live())
        world.edit(name, rng.choice(["iops", "write-iops"]), str(rng.randrange(20, 900)))
        if i % 5 == 4:  # pods also come and go mid-storm
            world.delete(name)
            world.create(f"late{i}", "iops", str(i + 1))
        cluster.api.compact()
        cluster.api.drop_watches()
        await trio.sleep(rng.uniform(0.0, 0.15))
    await wait_all(cluster, world.expected(), timeout=15, what="after the 410 storm")
    assert running.agent.pod_watcher.health.relists > relists  # 410 -> relist, not resume
    live = {p.name for p in running.agent.reconciler.pods.values()}
    assert live == set(world.live())  # a relist forgets pods deleted meanwhile
    # and the agent still follows edits promptly afterwards
    survivor = world.live()[0]
    cluster.set_annotations("default", survivor, {f"{P}/iops": "33", f"{P}/write-iops": None})
    await wait_all(cluster, {cg: IOLimits(33, 33) for cg in world.pods[survivor]}, timeout=3)


async def test_slow_list_and_watch_still_converge_and_stay_ready(
    cluster: Cluster, start_agent: Any
) -> None:
    pods = _pods(cluster, 3)
    # every pod LIST and WATCH (both GET /api/v1/pods) answers 1.5 s late
    cluster.api.inject_fault("GET", r"^/api/v1/pods$", status=None, delay=1.5)
    running = await start_agent(READINESS_WATCH_GRACE="5")
    await wait_all(cluster, {cg: DEFAULT for cgs in pods.values() for cg in cgs}, timeout=5)
    problems: list[str] = []

    async def watch_readiness() -> None:
        while True:
            problem = running.agent.readiness_problem()
            if problem:
                problems.append(problem)
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_readiness)
        for round_ in range(3):
            await trio.to_thread.run_sync(lambda: cluster.api.wait_for_watches(2, timeout=10))
            cluster.api.drop_watches()
            cluster.set_annotations("default", "p0", {f"{P}/iops": str(200 + round_)})
            took = await cluster.wait_kernel(
                pods["p0"][0], IOLimits(200 + round_, 200 + round_), timeout=10
            )
            assert took >= 1.0  # the reconnect really was slow
        nursery.cancel_scope.cancel()
    # slow is not failing: each ~1.5 s reconnect stayed inside the readiness grace
    assert problems == []
    assert (await http_get(running.agent.http_binds[0], "/readyz")).status_code == 200


async def test_hung_list_held_by_the_server_is_served_when_released(
    cluster: Cluster, launch_agent: Any
) -> None:
    pods = _pods(cluster, 2)
    cluster.api.inject_fault("GET", r"^/api/v1/pods$", status=None, hang=True, count=1)
    running = await launch_agent()
    await trio.sleep(3.0)
    assert not running.agent.reconciler.synced.is_set()
    assert all(cluster.kernel(cg) == IOLimits() for cgs in pods.values() for cg in cgs)
    cluster.api.clear_faults()  # the held LIST is answered now
    await wait_all(cluster, {cg: DEFAULT for cgs in pods.values() for cg in cgs}, timeout=5)


@pytest.mark.slow
async def test_hung_list_times_out_and_is_retried(cluster: Cluster, launch_agent: Any) -> None:
    """The API server accepts the LIST and never answers: after the client's read timeout
    (watch.READ_TIMEOUT, 120 s) the agent retries instead of waiting forever."""
    from diskguard.kube.watch import READ_TIMEOUT

    pods = _pods(cluster, 2)
    cluster.api.inject_fault("GET", r"^/api/v1/pods$", status=None, hang=True, count=1)
    await launch_agent()
    expected = {cg: DEFAULT for cgs in pods.values() for cg in cgs}
    took = await wait_all(cluster, expected, timeout=READ_TIMEOUT + 30, what="after a hung LIST")
    assert took >= READ_TIMEOUT - 5
    lists = [
        r for r in cluster.api.requests() if r.path == "/api/v1/pods" and "watch" not in r.query
    ]
    assert len(lists) >= 2  # the hung one and its retry


async def test_slow_event_posts_never_delay_the_kernel(cluster: Cluster, start_agent: Any) -> None:
    pods = _pods(cluster, 4)
    await start_agent()
    cluster.api.inject_fault("POST", r"/events$", status=None, delay=4.0)
    for i, name in enumerate(sorted(pods)):
        cluster.set_annotations("default", name, {f"{P}/iops": str(60 + i)})
        # each edit makes an IOLimitApplied Event that now takes 4 s to post
        for cg in pods[name]:
            took = await cluster.wait_kernel(cg, IOLimits(60 + i, 60 + i), timeout=1.0)
            assert took < 1.0


def _stored_events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.api.list("events", "default") if e.get("reason") == reason]


def _event_posts(cluster: Cluster, reason: str) -> list[Any]:
    return [
        r
        for r in cluster.api.requests()
        if r.method == "POST" and r.path.endswith("/events") and r.body.get("reason") == reason
    ]


@pytest.mark.parametrize(("status", "failures"), [(500, 3), (503, 2), (429, 1)])
async def test_event_post_retried_with_backoff_then_exactly_one_event(
    cluster: Cluster, start_agent: Any, status: int, failures: int
) -> None:
    pod = cluster.add_pod("ev")
    await start_agent()
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, DEFAULT)
    cluster.api.inject_fault("POST", r"/events$", status=status, count=failures)
    cluster.set_annotations("default", "ev", {f"{P}/write-iops": "90"})
    # the kernel does not wait for the Event
    await cluster.wait_kernel(cg, IOLimits(500, 90), timeout=1.0)
    await wait_until(
        lambda: len(_stored_events(cluster, "IOLimitApplied")) >= 1,
        timeout=15,
        what="the IOLimitApplied Event stored after the failures",
    )
    await trio.sleep(1.0)  # any duplicate would arrive by now
    stored = _stored_events(cluster, "IOLimitApplied")
    assert len(stored) == 1, stored
    assert "wiops=90" in stored[0]["message"]
    posts = _event_posts(cluster, "IOLimitApplied")
    assert len(posts) == failures + 1
    # the retries are the same Event (same name), not new ones
    assert len({p.body["metadata"]["name"] for p in posts}) == 1
    gaps = [b.time - a.time for a, b in itertools.pairwise(posts)]
    assert all(g >= 0.4 for g in gaps), gaps  # backoff starts at 0.5 s
    assert all(b > 1.5 * a for a, b in itertools.pairwise(gaps)), gaps  # and doubles


async def test_event_rejected_with_a_client_error_is_not_retried(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("ev")
    await start_agent()
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, DEFAULT)
    cluster.api.inject_fault("POST", r"/events$", status=403, count=1)
    cluster.set_annotations("default", "ev", {f"{P}/write-iops": "91"})
    await cluster.wait_kernel(cg, IOLimits(500, 91), timeout=1.0)
    await trio.sleep(2.0)
    assert len(_event_posts(cluster, "IOLimitApplied")) == 1
    assert _stored_events(cluster, "IOLimitApplied") == []
    # the Events task is not stuck: the next change's Event gets through
    cluster.set_annotations("default", "ev", {f"{P}/write-iops": "92"})
    await wait_until(
        lambda: len(_stored_events(cluster, "IOLimitApplied")) == 1, 5, "the next Event"
    )


@pytest.mark.slow
async def test_event_post_timing_out_is_retried_without_a_duplicate(
    cluster: Cluster, start_agent: Any
) -> None:
    """The first POST is held past the client's 10 s read timeout and then stored by the
    server anyway (as a real API server may); the retry carries the same Event name, so the
    late first one is refused (409) and exactly one Event exists."""
    pod = cluster.add_pod("ev")
    await start_agent()
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, DEFAULT)
    cluster.api.inject_fault("POST", r"/events$", status=None, delay=11.0, count=1)
    cluster.set_annotations("default", "ev", {f"{P}/write-iops": "93"})
    await cluster.wait_kernel(cg, IOLimits(500, 93), timeout=1.0)
    await wait_until(
        lambda: len(_event_posts(cluster, "IOLimitApplied")) >= 2, 20, "the retried POST"
    )
    await trio.sleep(2.5)  # the held first POST is processed by now
    assert len(_stored_events(cluster, "IOLimitApplied")) == 1
