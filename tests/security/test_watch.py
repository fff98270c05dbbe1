"""The pod watch against an API server that accepts the watch and then fails it: in-stream
"too large resource version" (500/504, as after an etcd restore), 410 as the watch request's
own HTTP status, streams that end at once without an event. Each relists where it must,
backs off instead of retrying hot, shows in readiness, and the kernel still follows the API
server's state through the relists; every test ends with the agent alive and ready again."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from reliability import conftest as fixtures
from reliability.conftest import Cluster, P, http_get, wait_until

from diskguard.model import IOLimits
from diskguard.testing.fakeapi import RecordedRequest

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]

# The whole-agent fixtures, shared without a conftest of our own in tests/security/.
cluster = fixtures.cluster
start_agent = fixtures.start_agent

PODS = r"^/api/v1/pods$"
TOO_LARGE = "Timeout: Too large resource version: 999999, current: 42"


def _is_watch(r: RecordedRequest) -> bool:
    return r.path == "/api/v1/pods" and r.query.get("watch", "").lower() == "true"


def _is_list(r: RecordedRequest) -> bool:
    return r.path == "/api/v1/pods" and r.query.get("watch", "").lower() != "true"


def _pod_requests(cluster: Cluster, since: float) -> list[RecordedRequest]:
    return [r for r in cluster.api.requests() if r.path == "/api/v1/pods" and r.time >= since]


async def _requests_after(
    cluster: Cluster, since: float, count: int, timeout: float
) -> list[RecordedRequest]:
    """Wait (bounded) until `count` pod watch requests arrived after `since`."""
    await wait_until(
        lambda: sum(map(_is_watch, _pod_requests(cluster, since))) >= count,
        timeout=timeout,
        what=f"{count} watch requests",
    )
    return [r for r in _pod_requests(cluster, since) if _is_watch(r)]


async def _alive_and_ready(cluster: Cluster, running: Any) -> None:
    """Alive throughout; once the watch delivers again (a bookmark), healthy and ready."""
    base = running.agent.http_binds[0]
    assert (await http_get(base, "/healthz")).status_code == 200
    health = lambda: running.agent.pod_watcher.health  # noqa: E731
    await wait_until(
        lambda: health().failing_since is None and health().backoff == 0,
        timeout=15,
        what="the watch making progress again",
    )
    await wait_until(lambda: running.agent.ready(), timeout=10, what="ready again")
    assert (await http_get(base, "/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("code", "message", "cause"),
    [
        (504, TOO_LARGE, "ResourceVersionTooLarge"),  # the watch cache, cause set
        (504, TOO_LARGE, ""),  # servers before 1.18.6: the message only
        (500, "etcdserver: mvcc: required revision is a future revision", ""),  # from etcd
    ],
)
async def test_too_large_resource_version_in_stream_relists_backs_off_and_shows_in_readiness(
    cluster: Cluster, start_agent: Any, code: int, message: str, cause: str
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    running = await start_agent(READINESS_WATCH_GRACE="0.5")
    watcher = running.agent.pod_watcher
    await cluster.wait_kernel(cg, IOLimits(100, 100))
    relists = watcher.health.relists

    since = time.monotonic()
    cluster.api.inject_watch_error(PODS, code, message, cause=cause)
    cluster.api.drop_watches()  # the agent reconnects into the failing watches
    # an edit the broken watch cannot carry: only a relist brings it
    cluster.set_annotations("default", "web", {f"{P}/iops": "150"})
    await cluster.wait_kernel(cg, IOLimits(150, 150), timeout=5)
    watches = await _requests_after(cluster, since, 5, timeout=15)

    # every failed watch was followed by a LIST (relist), never by a resume from the same rv
    log = _pod_requests(cluster, since)
    for w in watches[:-1]:
        after = log[log.index(w) + 1]
        assert _is_list(after), f"after a too-large error the agent sent {after.query}"
    assert watcher.health.relists >= relists + 4
    # backing off, not hot: the gaps grow (0.2, 0.4, 0.8, 1.6 s nominal, +-20 %)
    gaps = [b.time - a.time for a, b in itertools.pairwise(watches[:5])]
    assert sum(gaps) >= 2.0 and gaps[-1] >= 1.0, gaps
    # visible: failing since the first error, past the grace
    problem = running.agent.readiness_problem()
    assert "no progress" in problem and "too large" in problem, problem
    assert (await http_get(running.agent.http_binds[0], "/readyz")).status_code == 503

    cluster.api.clear_faults()
    await _alive_and_ready(cluster, running)
    cluster.set_annotations("default", "web", {f"{P}/iops": "160"})
    await cluster.wait_kernel(cg, IOLimits(160, 160), timeout=3)


@pytest.mark.parametrize("where", ["http", "stream"])
async def test_410_on_the_watch_request_or_in_stream_relists(
    cluster: Cluster, start_agent: Any, where: str
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    running = await start_agent()
    watcher = running.agent.pod_watcher
    await cluster.wait_kernel(cg, IOLimits(100, 100))
    relists = watcher.health.relists
    since = time.monotonic()
    if where == "http":
        cluster.api.inject_fault("GET", PODS, status=410, watch=True, count=1)
    else:
        cluster.api.inject_watch_error(PODS, 410, "too old resource version: 1 (2)", count=1)
    cluster.api.drop_watches()
    cluster.set_annotations("default", "web", {f"{P}/iops": "120"})
    await cluster.wait_kernel(cg, IOLimits(120, 120), timeout=5)
    await wait_until(lambda: watcher.health.relists > relists, 5, "a relist after the 410")
    log = _pod_requests(cluster, since)
    gone = next(r for r in log if _is_watch(r))
    assert _is_list(log[log.index(gone) + 1]), "410 must relist, not resume"
    await _alive_and_ready(cluster, running)
    await wait_until(lambda: watcher.health.failing_since is None, 5, "progress after the relist")


@pytest.mark.parametrize("answer", ["empty stream", "in-stream 500"])
async def test_backoff_does_not_reset_on_a_200_that_delivers_nothing(
    cluster: Cluster, start_agent: Any, answer: str
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    running = await start_agent(READINESS_WATCH_GRACE="0.5")
    watcher = running.agent.pod_watcher
    await cluster.wait_kernel(cg, IOLimits(100, 100))
    relists = watcher.health.relists
    since = time.monotonic()
    if answer == "empty stream":
        cluster.api.inject_fault("GET", PODS, status=None, watch=True, stream_end=True)
    else:
        cluster.api.inject_watch_error(PODS, 500, "etcdserver: leader changed")
    cluster.api.drop_watches()
    watches = await _requests_after(cluster, since, 5, timeout=15)
    gaps = [b.time - a.time for a, b in itertools.pairwise(watches)]
    # a reset on every 200 would retry every ~0.2 s forever
    assert sum(gaps) >= 2.0 and gaps[-1] >= 1.0, gaps
    assert watcher.health.backoff >= 1.0
    # not a relist: the same resourceVersion is resumed
    assert watcher.health.relists == relists
    assert len({w.query.get("resourceVersion") for w in watches}) == 1
    problem = running.agent.readiness_problem()
    assert "pods watch has made no progress" in problem, problem
    # the kernel is untouched by the broken watch
    assert cluster.kernel(cg) == IOLimits(100, 100)

    cluster.api.clear_faults()
    await _alive_and_ready(cluster, running)
    cluster.set_annotations("default", "web", {f"{P}/iops": "170"})
    await cluster.wait_kernel(cg, IOLimits(170, 170), timeout=5)
