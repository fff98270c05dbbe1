"""Events against an API server that fails or stalls one Event: the others still arrive
promptly (bounded concurrency, each Event retried on its own), the queue stays bounded by
dropping its oldest Event, and an Event cut off at shutdown is handed back for the flush.

The whole-agent tests assert on what the kernel holds and on what the API server received;
latencies are printed (run with -s) and measured in bench/event_bench.py, never asserted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from kubernetes import client, config

from diskguard.kube.api import CoreApi
from diskguard.kube.events import EventRequest, EventSink, Posting, post_events
from diskguard.model import IOLimits
from diskguard.testing.fakeapi import FakeAPIServer, RecordedRequest
from tests.reliability import conftest as fixtures
from tests.reliability.conftest import Cluster, P, http_get, wait_until

# The whole-agent fixtures, shared without a conftest of our own in tests/security/.
cluster = fixtures.cluster
start_agent = fixtures.start_agent

CEILINGS = {"LIMIT_CEILING_READ_IOPS": "1000", "LIMIT_CEILING_WRITE_IOPS": "1000"}
VICTIM = r'"name":\s*"victim"'  # the involvedObject of the victim pod's Events


def _posts(cluster: Cluster, pod: str, reason: str) -> list[RecordedRequest]:
    return [
        r
        for r in cluster.api.requests()
        if r.method == "POST"
        and r.path.endswith("/events")
        and isinstance(r.body, dict)
        and r.body.get("involvedObject", {}).get("name") == pod
        and r.body.get("reason") == reason
    ]


def _stored(cluster: Cluster, pod: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.api.list("events", "default")
        if e.get("involvedObject", {}).get("name") == pod and e.get("reason") == reason
    ]


async def _clamp_three_tenants(cluster: Cluster, cgroups: dict[str, Any]) -> dict[str, float]:
    """Ask each tenant for 5000 IOPS (above the 1000 ceiling), wait for the clamped limit
    in the kernel; return, per pod, the monotonic time of the edit."""
    edited = {}
    for name in sorted(cgroups):
        edited[name] = time.monotonic()
        cluster.set_annotations("default", name, {f"{P}/iops": "5000"})
    for cg in cgroups.values():
        await cluster.wait_kernel(cg, IOLimits(1000, 1000), timeout=2)
    return edited


def _latencies(cluster: Cluster, edited: dict[str, float]) -> dict[str, float]:
    """Seconds from the edit to the Event's first POST at the API server (an upper bound
    on decision -> Event; the same clock: the fake server runs in this process)."""
    return {
        name: round(_posts(cluster, name, "IOLimitClamped")[0].time - at, 4)
        for name, at in edited.items()
    }


@pytest.mark.kernel
@pytest.mark.host_only
async def test_a_failing_event_never_delays_the_others(cluster: Cluster, start_agent: Any) -> None:
    victim = cluster.add_pod("victim")
    tenants = {f"tenant{i}": cluster.add_pod(f"tenant{i}") for i in range(3)}
    cgroups = {name: cluster.cgroup(cluster.refs(pod)[0]) for name, pod in tenants.items()}
    running = await start_agent(**CEILINGS)
    stats = running.agent.events.stats
    # every post about the victim fails with a 500, for as long as the fault stays
    cluster.api.inject_fault("POST", r"/events$", status=500, body_regex=VICTIM)
    cluster.set_annotations("default", "victim", {f"{P}/iops": "5000"})
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(victim)[0]), IOLimits(1000, 1000))
    await wait_until(
        lambda: bool(_posts(cluster, "victim", "IOLimitClamped")), 5, "the victim's first post"
    )

    in_kernel = await _clamp_three_tenants(cluster, cgroups)
    await wait_until(
        lambda: all(_stored(cluster, name, "IOLimitClamped") for name in tenants),
        timeout=5,
        what="the three tenants' IOLimitClamped Events stored",
    )
    # ...while the victim's Event is still being retried (5 attempts over 7.5 s): a serial
    # poster would have held them behind it
    assert len(_posts(cluster, "victim", "IOLimitClamped")) < 5
    assert stats.failed == 0
    print("event latency with one failing Event (s):", _latencies(cluster, in_kernel))

    await wait_until(lambda: stats.failed >= 1, 20, "the victim's Event given up")
    metrics = (await http_get(running.agent.http_binds[0], "/metrics")).text
    assert "diskguard_events_failed_total" in metrics
    assert _stored(cluster, "victim", "IOLimitClamped") == []
    # not stuck: the victim's next Event gets through once the API server takes it
    cluster.api.clear_faults()
    cluster.set_annotations("default", "victim", {f"{P}/iops": "4000"})
    await wait_until(
        lambda: bool(_stored(cluster, "victim", "IOLimitClamped")), 5, "the victim's next Event"
    )
    assert (await http_get(running.agent.http_binds[0], "/healthz")).status_code == 200
    for cg in cgroups.values():
        assert cluster.kernel(cg) == IOLimits(1000, 1000)


@pytest.mark.kernel
@pytest.mark.host_only
async def test_a_hung_event_never_delays_the_others_and_is_stored_once(
    cluster: Cluster, start_agent: Any
) -> None:
    cluster.add_pod("victim")
    tenants = {f"tenant{i}": cluster.add_pod(f"tenant{i}") for i in range(3)}
    cgroups = {name: cluster.cgroup(cluster.refs(pod)[0]) for name, pod in tenants.items()}
    running = await start_agent(**CEILINGS)
    # the API server holds every post about the victim until released
    cluster.api.inject_fault("POST", r"/events$", status=None, hang=True, body_regex=VICTIM)
    cluster.set_annotations("default", "victim", {f"{P}/iops": "5000"})
    await wait_until(
        lambda: bool(_posts(cluster, "victim", "IOLimitClamped")), 5, "the victim's post held"
    )
    in_kernel = await _clamp_three_tenants(cluster, cgroups)
    await wait_until(
        lambda: all(_stored(cluster, name, "IOLimitClamped") for name in tenants),
        timeout=5,
        what="the three tenants' Events stored while the victim's post hangs",
    )
    assert _stored(cluster, "victim", "IOLimitClamped") == []
    print("event latency with one hung Event (s):", _latencies(cluster, in_kernel))
    cluster.api.clear_faults()  # the held post is served now
    await wait_until(
        lambda: bool(_stored(cluster, "victim", "IOLimitClamped")), 15, "the victim's Event"
    )
    await trio.sleep(0.5)  # a duplicate, if any, would be stored by now
    assert len(_stored(cluster, "victim", "IOLimitClamped")) == 1
    assert running.agent.events.stats.failed == 0


# -- the poster against the fake API server, no kernel -------------------------------------


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    with FakeAPIServer() as server:
        yield server


@pytest.fixture
def v1(api: FakeAPIServer, tmp_path: Path) -> Iterator[CoreApi]:
    cfg = client.Configuration()
    config.load_kube_config(
        config_file=api.write_kubeconfig(tmp_path / "kubeconfig"), client_configuration=cfg
    )
    cfg.retries = False
    core = CoreApi(client.ApiClient(cfg))
    yield core
    core.api_client.close()


def _request(i: int) -> EventRequest:
    return EventRequest("Pod", "default", f"pod{i}", f"uid-{i}", "IOLimitApplied", f"event {i}")


def _stored_names(api: FakeAPIServer) -> list[str]:
    return sorted(e["involvedObject"]["name"] for e in api.list("events", "default"))


async def test_a_full_queue_drops_the_oldest_and_counts_it(api: FakeAPIServer, v1: CoreApi) -> None:
    sink = EventSink(size=5)
    api.inject_fault("POST", r"/events$", status=None, hang=True)  # every post held
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: post_events(sink, v1, "node-1", concurrency=2))
        for i in range(2):  # these two are taken at once and held by the server
            sink.emit(_request(i))
        await wait_until(lambda: len(api.requests()) == 2, 5, "two posts in flight")
        for i in range(2, 12):  # ten more into a queue of five: the five oldest go
            sink.emit(_request(i))
        assert sink.dropped == 5 and len(sink.queue) == 5
        api.clear_faults()
        sink.close()  # post_events returns once the queue is drained
    assert _stored_names(api) == sorted(f"pod{i}" for i in (0, 1, 7, 8, 9, 10, 11))
    assert sink.stats.posted == 7 and sink.stats.failed == 0


async def test_events_cut_off_at_shutdown_are_handed_back_and_posted_once_by_the_flush(
    api: FakeAPIServer, v1: CoreApi
) -> None:
    sink = EventSink()
    unfinished: list[Posting] = []
    api.inject_fault("POST", r"/events$", status=None, hang=True)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: post_events(sink, v1, "node-1", concurrency=2, unfinished=unfinished)
            )
            for i in range(4):
                sink.emit(_request(i))
            await wait_until(lambda: len(api.requests()) == 2, 5, "two posts in flight")
            scope.cancel()  # shutdown: two mid-post, one waiting for a slot, one queued
    assert sorted(p[0].name for p in unfinished) == ["pod0", "pod1", "pod2"]
    assert len(sink.queue) == 1
    api.clear_faults()  # the held originals are served now (and stored)
    sink.close()
    await post_events(sink, v1, "node-1", attempts=1, first=unfinished)
    # the reposts of the two held ones carry their names: no duplicate Events
    assert _stored_names(api) == ["pod0", "pod1", "pod2", "pod3"]
    assert sink.stats.posted == 4
