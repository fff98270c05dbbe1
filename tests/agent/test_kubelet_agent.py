"""The whole agent with the kubelet as pod source (falling back to the API server) and as
the IO-rate source for smart limit, over real TLS, on real cgroups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import IOLimits
from diskguard.testing.fakekubelet import FakeKubelet, server_tls_context

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel

TOKEN = "kubelet-test-token"


@pytest.fixture
def kubelet_env(tmp_path: Path) -> Iterator[tuple[FakeKubelet, dict[str, str]]]:
    ca = trustme.CA()
    ca_path = tmp_path / "kubelet-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    token_path = tmp_path / "token"
    token_path.write_text(TOKEN)
    with FakeKubelet(server_tls_context(ca), token=TOKEN) as fake:
        yield (
            fake,
            {
                "KUBELET_HOST": "localhost",
                "KUBELET_PORT": str(fake.port),
                "KUBELET_CA_PATH": str(ca_path),
                "KUBELET_TOKEN_PATH": str(token_path),
                "KUBELET_POLL_INTERVAL": "0.2",
            },
        )


async def test_kubelet_pod_source_with_api_fallback_and_back(
    cluster: Cluster, start_agent: Any, kubelet_env: tuple[FakeKubelet, dict[str, str]]
) -> None:
    kubelet, env = kubelet_env
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    # the kubelet's view of the same pod says something else: proof of which source acts
    kubelet_pod = cluster.api.get("pods", "default", "web")
    kubelet_pod["metadata"]["annotations"][f"{P}/iops"] = "70"
    kubelet.set_pods([kubelet_pod])
    running = await start_agent(KUBELET_POD_SOURCE="true", **env)
    running.agent.pod_source.retry_interval = 0.5  # 60 s in production
    await cluster.wait_kernel(cg, IOLimits(70, 70), timeout=3)
    assert not [r for r in cluster.api.requests() if r.path == "/api/v1/pods"]

    kubelet.go_down()  # three failed polls -> the API server's watch takes over
    await cluster.wait_kernel(cg, IOLimits(100, 100), timeout=5)
    assert running.agent.readiness_problem() == ""

    kubelet.come_back()
    with trio.fail_after(scaled(5)):
        while running.agent.pod_source.active.value != "kubelet":
            await trio.sleep(0.05)
    await cluster.wait_kernel(cg, IOLimits(70, 70), timeout=3)


def cadvisor(device: str, pod: str, container: str, writes: int, at_ms: int) -> str:
    labels = f'container="{container}",device="/dev/{device}",namespace="default",pod="{pod}"'
    return (
        "# HELP container_fs_writes_total Cumulative count of writes completed\n"
        "# TYPE container_fs_writes_total counter\n"
        f"container_fs_writes_total{{{labels}}} {writes} {at_ms}\n"
    )


async def test_smart_limit_from_kubelet_cadvisor_rates(
    cluster: Cluster, start_agent: Any, kubelet_env: tuple[FakeKubelet, dict[str, str]]
) -> None:
    kubelet, env = kubelet_env
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "200"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    writes, at_ms = 0, 1_700_000_000_000

    async def feed() -> None:  # cAdvisor reporting a steady 190 writes/s
        nonlocal writes, at_ms
        while True:
            kubelet.set_metrics(cadvisor(cluster.device.name, "busy", "app", writes, at_ms))
            writes += 38
            at_ms += 200
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await start_agent(
            SMART_LIMIT_ENABLED="true",
            SMART_LIMIT_USE_KUBELET_API="true",
            SMART_LIMIT_MONITOR_INTERVAL="0.5",
            SMART_LIMIT_HISTORY_WINDOW="0.05",
            SAMPLE_INTERVAL="0.2",
            **env,
        )
        await cluster.wait_kernel(cg, IOLimits(500, 200))
        with trio.fail_after(scaled(15)):
            while True:
                ann = cluster.api.get("pods", "default", "busy")["metadata"]["annotations"]
                if ann.get(f"{P}/smart-limit") == "true":
                    break
                await trio.sleep(0.1)
        auto = int(ann[f"{P}/auto-iops"])
        assert auto in (94, 95)  # half of cAdvisor's 190/s (float rounding may floor it)
        await cluster.wait_kernel(cg, IOLimits(auto, auto), timeout=2)
        nursery.cancel_scope.cancel()


async def _kubelet_mirrors_the_api(
    cluster: Cluster, kubelet: FakeKubelet, name: str, first_rv: str
) -> None:
    """What the kubelet's pod manager does: updates from the API server (annotations,
    labels, status) reach its `/pods`, but the resourceVersion stays the first one seen."""
    while True:
        current = cluster.api.get("pods", "default", name)
        current["metadata"]["resourceVersion"] = first_rv
        kubelet.set_pods([current])
        await trio.sleep(0.1)


async def test_kubelet_pod_source_smart_limit_patches_with_the_api_servers_resource_version(
    cluster: Cluster, start_agent: Any, kubelet_env: tuple[FakeKubelet, dict[str, str]]
) -> None:
    kubelet, env = kubelet_env
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "200"})
    first_rv = pod["metadata"]["resourceVersion"]
    # the API server's copy moves on (a label here; status updates do the same all day)
    cluster.api.update(
        "pods", "default", "busy", lambda p: p["metadata"].setdefault("labels", {}).update(v="2")
    )
    cg = cluster.cgroup(cluster.refs(pod)[0])
    writes, at_ms = 0, 1_700_000_000_000

    async def feed() -> None:  # cAdvisor reporting a steady 190 writes/s
        nonlocal writes, at_ms
        while True:
            kubelet.set_metrics(cadvisor(cluster.device.name, "busy", "app", writes, at_ms))
            writes += 38
            at_ms += 200
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_kubelet_mirrors_the_api, cluster, kubelet, "busy", first_rv)
        nursery.start_soon(feed)
        running = await start_agent(
            KUBELET_POD_SOURCE="true",
            SMART_LIMIT_ENABLED="true",
            SMART_LIMIT_USE_KUBELET_API="true",
            SMART_LIMIT_MONITOR_INTERVAL="0.5",
            SMART_LIMIT_HISTORY_WINDOW="0.05",
            SAMPLE_INTERVAL="0.2",
            **env,
        )
        await cluster.wait_kernel(cg, IOLimits(500, 200))
        with trio.fail_after(scaled(15)):
            while True:
                ann = cluster.api.get("pods", "default", "busy")["metadata"]["annotations"]
                if ann.get(f"{P}/smart-limit") == "true":
                    break
                await trio.sleep(0.1)
        auto = int(ann[f"{P}/auto-iops"])
        # enforced from the kubelet's view of the patched pod
        await cluster.wait_kernel(cg, IOLimits(auto, auto), timeout=3)
        nursery.cancel_scope.cancel()
    patches = [
        r for r in cluster.api.requests() if r.method == "PATCH" and r.path.endswith("/busy")
    ]
    # the first patch already carried the API server's resourceVersion, read just before
    assert patches[0].body["metadata"]["resourceVersion"] != first_rv
    assert running.agent.smart is not None
    assert running.agent.smart.patches["apply"] == 1
    assert "http_409" not in running.agent.smart.patches
    gets = [r for r in cluster.api.requests() if r.method == "GET" and r.path.endswith("/busy")]
    assert gets and gets[0].time < patches[0].time
    # the pods themselves still came from the kubelet only
    assert not [r for r in cluster.api.requests() if r.path == "/api/v1/pods"]


async def test_kubelet_pod_source_smart_limit_skips_a_pod_changed_since_the_decision(
    cluster: Cluster, start_agent: Any, kubelet_env: tuple[FakeKubelet, dict[str, str]]
) -> None:
    """The tenant opted out on the API server; the kubelet has not shown it yet: the
    decision was made on an outdated pod, so nothing is patched until it catches up."""
    kubelet, env = kubelet_env
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "200"})
    stale = cluster.api.get("pods", "default", "busy")
    kubelet.set_pods([stale])  # the kubelet never catches up in this test
    cluster.set_annotations("default", "busy", {f"{P}/smart-limit-opt-out": "true"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    writes, at_ms = 0, 1_700_000_000_000

    async def feed() -> None:
        nonlocal writes, at_ms
        while True:
            kubelet.set_metrics(cadvisor(cluster.device.name, "busy", "app", writes, at_ms))
            writes += 38
            at_ms += 200
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        running = await start_agent(
            KUBELET_POD_SOURCE="true",
            SMART_LIMIT_ENABLED="true",
            SMART_LIMIT_USE_KUBELET_API="true",
            SMART_LIMIT_MONITOR_INTERVAL="0.5",
            SMART_LIMIT_HISTORY_WINDOW="0.05",
            SAMPLE_INTERVAL="0.2",
            **env,
        )
        smart = running.agent.smart
        with trio.fail_after(scaled(15)):
            while smart is None or smart.patches["stale"] < 2:
                await trio.sleep(0.1)
                smart = running.agent.smart
        nursery.cancel_scope.cancel()
    assert not [r for r in cluster.api.requests() if r.method == "PATCH"]
    ann = cluster.api.get("pods", "default", "busy")["metadata"]["annotations"]
    assert f"{P}/smart-limit" not in ann
    assert cluster.kernel(cg) == IOLimits(500, 200)


@pytest.mark.host_only  # readiness timing against a 0.5 s grace means nothing under emulation
async def test_readiness_reports_a_kubelet_pod_source_that_stops_answering(
    cluster: Cluster, start_agent: Any, kubelet_env: tuple[FakeKubelet, dict[str, str]]
) -> None:
    kubelet, env = kubelet_env
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    kubelet.set_pods([cluster.api.get("pods", "default", "web")])
    running = await start_agent(KUBELET_POD_SOURCE="true", READINESS_WATCH_GRACE="0.5", **env)
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(100, 100), timeout=3)
    assert running.agent.readiness_problem() == ""
    # one poll held 4 s (inside the client's 10 s timeout: not a failure, no fallback)
    kubelet.fail_next(1, status=None, delay=4.0)
    with trio.fail_after(scaled(5)):
        while "no answer from the kubelet pod source" not in running.agent.readiness_problem():
            await trio.sleep(0.05)
    assert running.agent.pod_source.active.value == "kubelet"
    with trio.fail_after(scaled(10)):
        while running.agent.readiness_problem():
            await trio.sleep(0.05)
    assert cluster.kernel(cg) == IOLimits(100, 100)


@pytest.mark.host_only  # readiness timing against a 2 s grace means little under emulation
async def test_readyz_follows_the_kubelet_pod_source_while_it_is_the_one_in_use(
    cluster: Cluster, start_agent: Any, kubelet_env: tuple[FakeKubelet, dict[str, str]]
) -> None:
    """/readyz, /metrics and /status read the pod source in use: the kubelet failing while it
    is still that source (the API watch stands by idle and healthy) makes the agent not
    ready; the kubelet answering again makes it ready. The limits hold throughout."""
    kubelet, env = kubelet_env
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    kubelet.set_pods([cluster.api.get("pods", "default", "web")])
    running = await start_agent(KUBELET_POD_SOURCE="true", READINESS_WATCH_GRACE="2", **env)
    running.agent.pod_source.failures_to_fall_back = 1_000_000  # no fallback in this test
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(100, 100), timeout=3)

    async def ask() -> tuple[str, float, dict[str, Any]]:
        """/readyz as status and text, diskguard_ready, /status."""
        async with httpx.AsyncClient(
            base_url=running.agent.http_binds[0], timeout=scaled(5)
        ) as http:
            readyz = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
            status = (await http.get("/status")).json()
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        ready = families["diskguard_ready"].samples[0].value
        return f"{readyz.status_code} {readyz.text}", ready, status

    async def until(want: bool) -> tuple[str, float, dict[str, Any]]:
        """Ask until all three say `want` (ready or not)."""
        answers: list[Any] = []
        with trio.move_on_after(scaled(10)):
            while True:
                answer = await ask()
                readyz, ready, status = answer
                answers = [*answers[-2:], (readyz, ready, status["readiness_problem"])]
                if (readyz.startswith("200"), ready == 1, status["ready"]) == (want,) * 3:
                    return answer
                await trio.sleep(0.05)
        raise AssertionError(f"never {'ready' if want else 'not ready'}: {answers}")

    await until(True)  # the first kubelet answers are in

    kubelet.fail_next(1_000_000, status=500, body="kubelet is broken")
    readyz, _, status = await until(False)
    assert readyz.startswith("503 not ready: kubelet pod source"), readyz
    assert "kubelet is broken" in readyz
    assert "kubelet pod source" in status["readiness_problem"]
    assert running.agent.pod_source.active.value == "kubelet"
    assert not status["watches"]["pods"]["failing"]  # the idle API watch is not the reason

    kubelet.clear_faults()
    readyz, _, status = await until(True)
    assert readyz == "200 ready\n" and status["readiness_problem"] is None
    assert running.agent.pod_source.active.value == "kubelet"
    assert cluster.kernel(cg) == IOLimits(100, 100)
