"""The pod watch against an API server that accepts the watch and then fails it: in-stream
"too large resource version" (500/504, as after an etcd restore), 410 as the watch request's
own HTTP status, streams that end at once without an event. Each relists where it must,
backs off instead of retrying hot, shows in readiness, and the kernel still follows the API
server's state through the relists; every test ends with the agent alive and ready again."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from diskguard.kube.api import CoreApi
from diskguard.kube.watch import (
    FIRST_PROGRESS_WAIT,
    ListWatcher,
    WatchEvent,
    WatchHealth,
    relist_reason,
)
from diskguard.model import IOLimits
from diskguard.testing.fakeapi import FakeAPIServer, Fault, RecordedRequest
from diskguard.testing.fakeapi.errors import too_large
from tests.reliability import conftest as fixtures
from tests.reliability.conftest import Cluster, P, http_get, wait_until


def agent_test(fn: Any) -> Any:
    """The whole agent on real cgroups; fault timing means nothing under emulation."""
    return pytest.mark.kernel(pytest.mark.host_only(fn))


# The whole-agent fixtures, shared without a conftest of our own in tests/security/.
cluster = fixtures.cluster
start_agent = fixtures.start_agent

PODS = r"^/api/v1/pods$"
FUTURE = "required revision is a future revision"
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
@agent_test
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
@agent_test
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
@agent_test
async def test_backoff_does_not_reset_on_a_200_that_delivers_nothing(
    cluster: Cluster, start_agent: Any, answer: str
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    running = await start_agent(READINESS_WATCH_GRACE="0.5")
    watcher = running.agent.pod_watcher
    await cluster.wait_kernel(cg, IOLimits(100, 100))
    # The initial list is counted once its watch starts, which may come after the first
    # reconcile (a loaded machine): take the count from a connected watch.
    await wait_until(lambda: watcher.health.connected_since is not None, 5, "the watch connected")
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


# -- the decisions, no kernel -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "relist"),
    [
        ({"code": 410, "reason": "Expired", "message": "too old resource version: 1 (5)"}, True),
        ({"code": 410, "reason": "Gone"}, True),
        (too_large(99, 42).status(), True),
        ({"code": 504, "reason": "Timeout", "message": TOO_LARGE}, True),
        (
            {
                "code": 504,
                "message": "Timeout",
                "details": {"causes": [{"reason": "ResourceVersionTooLarge"}]},
            },
            True,
        ),
        ({"code": 500, "message": f"etcdserver: mvcc: {FUTURE}"}, True),
        ({"code": 500, "message": "etcdserver: leader changed"}, False),
        ({"code": 504, "reason": "Timeout", "message": "request timed out"}, False),
        # a 4xx saying "too large" is not the server's resourceVersion answer
        ({"code": 400, "message": "Too large resource version"}, False),
        ({"code": "504", "message": TOO_LARGE}, False),
        ("not a status", False),
        (None, False),
    ],
)
def test_relist_reason(status: Any, relist: bool) -> None:
    assert bool(relist_reason(status)) is relist


def test_a_huge_status_message_is_bounded_in_the_reason() -> None:
    reason = relist_reason({"code": 410, "message": "x" * 300_000})
    assert 0 < len(reason) < 1100


def test_watch_health_problem_needs_the_grace_and_spares_a_fresh_reconnect_once() -> None:
    failing = WatchHealth(failing_since=100.0, last_error="boom", failed_attempts=1)
    assert failing.problem("pods", 100.4, grace=0.5) == ""
    assert "no progress for 1s (boom)" in failing.problem("pods", 101.0, grace=0.5)
    # one failure, reconnected: may be waiting for the first bookmark
    reconnected = WatchHealth(failing_since=100.0, connected_since=100.2, failed_attempts=1)
    assert reconnected.problem("pods", 110.0, grace=0.5) == ""
    assert reconnected.problem("pods", 100.3 + FIRST_PROGRESS_WAIT, grace=0.5) != ""
    # failing again and again: no benefit, even while briefly connected
    cycling = WatchHealth(failing_since=100.0, connected_since=109.9, failed_attempts=5)
    assert cycling.problem("pods", 110.0, grace=0.5) != ""
    assert WatchHealth().problem("pods", 1e9, grace=0.5) == ""


def test_stream_faults_are_validated_and_round_trip() -> None:
    with pytest.raises(ValueError, match="at most one"):
        Fault(status=500, stream_error=504)
    with pytest.raises(ValueError, match="stream_error"):
        Fault(stream_error=200)
    with pytest.raises(ValueError, match="body_regex"):
        Fault(body_regex="(")
    fault = Fault("GET", PODS, None, watch=True, stream_error=504, message=TOO_LARGE, cause="X")
    assert Fault.from_json(fault.to_json()) == fault
    assert fault.matches("GET", "/api/v1/pods", watch=True)
    assert not fault.matches("GET", "/api/v1/pods", watch=False)
    victim = Fault("POST", "/events$", 500, body_regex='"name": "victim"')
    assert victim.matches("POST", "/api/v1/namespaces/d/events", body='{"name": "victim"}')
    assert not victim.matches("POST", "/api/v1/namespaces/d/events", body='{"name": "other"}')


# -- the fake API server's watch faults, as a client sees them ----------------------------


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    with FakeAPIServer() as server:
        yield server


@pytest.fixture
def v1(api: FakeAPIServer, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    cfg = client.Configuration()
    config.load_kube_config(
        config_file=api.write_kubeconfig(tmp_path / "kubeconfig"), client_configuration=cfg
    )
    cfg.retries = False
    core = client.CoreV1Api(client.ApiClient(cfg))
    yield core
    core.api_client.close()


def _raw_watch(v1: client.CoreV1Api, rv: str) -> list[dict[str, Any]]:
    # A urllib3 response (`_preload_content=False`), not the annotated V1PodList.
    response: Any = v1.list_pod_for_all_namespaces(
        watch=True,
        resource_version=rv,
        timeout_seconds=2,
        _preload_content=False,
        _request_timeout=(5, 5),
    )
    try:
        return [json.loads(line) for line in iter_resp_lines(response)]
    finally:
        response.close()


def test_a_watch_from_a_future_resource_version_gets_an_in_stream_too_large(
    api: FakeAPIServer, v1: client.CoreV1Api
) -> None:
    future = str(int(api.resource_version) + 1000)
    events = _raw_watch(v1, future)
    assert [e["type"] for e in events] == ["ERROR"]
    status = events[0]["object"]
    assert status["code"] == 504 and status["reason"] == "Timeout"
    assert status["message"].startswith("Timeout: Too large resource version: ")
    assert status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    assert relist_reason(status)


def test_injected_watch_faults_hit_watches_only(api: FakeAPIServer, v1: client.CoreV1Api) -> None:
    rv = api.resource_version
    api.inject_watch_error(PODS, 500, "etcdserver: leader changed", count=1)
    events = _raw_watch(v1, rv)
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 500)]
    api.inject_fault("GET", PODS, status=None, watch=True, stream_end=True, count=1)
    assert _raw_watch(v1, rv) == []
    api.inject_fault("GET", PODS, status=410, watch=True)
    v1.list_pod_for_all_namespaces()  # a LIST is not a watch: served
    with pytest.raises(ApiException) as caught:
        _raw_watch(v1, rv)
    assert caught.value.status == 410


async def test_a_quiet_stream_ending_at_the_servers_timeout_is_progress(tmp_path: Path) -> None:
    """No event and no bookmark (a quiet cluster, a server that sends none): a stream that
    lasted the timeout asked for ended cleanly, which resets the backoff; two streams
    that ended at once, empty, before it did not."""
    with FakeAPIServer(bookmark_interval=1000) as server:
        cfg = client.Configuration()
        config.load_kube_config(
            config_file=server.write_kubeconfig(tmp_path / "kubeconfig"),
            client_configuration=cfg,
        )
        cfg.retries = False
        core = CoreApi(client.ApiClient(cfg))
        send, receive = trio.open_memory_channel[WatchEvent](100)
        watcher = ListWatcher("pods", core.list_pod_for_all_namespaces, send, timeout_range=(1, 1))
        server.inject_fault("GET", PODS, status=None, watch=True, stream_end=True, count=2)
        seen: list[WatchHealth] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            await receive.receive()  # the list
            with trio.fail_after(10):
                while watcher.health.failed_attempts < 2:
                    await trio.sleep(0.01)
                seen.append(watcher.health)
                while watcher.health.failing_since is not None:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        core.api_client.close()
    assert seen[0].backoff > 0 and "without an event" in seen[0].last_error
    assert watcher.health.backoff == 0 and watcher.health.failed_attempts == 0
    assert watcher.health.last_progress is not None
    # progress came from a watch that lasted its timeout, not from a relist
    assert watcher.health.relists == 1
    watches = [r for r in server.requests() if _is_watch(r)]
    assert len(watches) >= 3 and all(w.query.get("timeoutSeconds") == "1" for w in watches)
