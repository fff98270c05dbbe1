"""The agent's HTTP endpoints, against a running agent on real cgroups."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import IOLimits

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel


def url(running: Any, path: str) -> str:
    return f"{running.agent.http_binds[0]}{path}"


async def get(running: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url(running, path), timeout=5)


async def test_status_shows_desired_kernel_and_sources(cluster: Cluster, start_agent: Any) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    cluster.add_pod("dns", namespace="kube-system")
    running = await start_agent()
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 100))
    body = (await get(running, "/status")).json()
    assert body["node"] == "node-1" and body["ready"] is True
    assert body["cgroup"]["version"] == cluster.hierarchy.version.value
    assert body["devices"] == [{"device": str(cluster.device), "name": cluster.device.name}]
    assert set(body["watches"]) == {"pods", "namespaces"}
    web = next(c for c in body["containers"] if c["pod"] == "web")
    assert web["cgroup"] == str(cg)
    assert web["desired"]["limits"] == {"riops": 500, "wiops": 100, "rbps": None, "wbps": None}
    assert web["desired"]["sources"]["wiops"] == f"annotation {P}/write-iops"
    assert web["desired"]["source_kinds"] == {
        "riops": "default",
        "wiops": "annotation",
        "rbps": "default",
        "wbps": "default",
    }
    assert web["kernel"] == {str(cluster.device): web["desired"]["limits"]}
    assert web["in_sync"] is True and web["error"] is None and web["excluded"] is None
    dns = next(c for c in body["containers"] if c["pod"] == "dns")
    assert dns["excluded"] == "namespace kube-system is excluded" and dns["desired"] is None
    filtered = (await get(running, "/status?namespace=default&pod=web")).json()
    assert [c["pod"] for c in filtered["containers"]] == ["web"]


async def test_metrics_expose_limits_with_their_source(cluster: Cluster, start_agent: Any) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    running = await start_agent()
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 100))
    response = await get(running, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    limits = {
        (s.labels["direction"], unit): (s.value, s.labels["source"])
        for unit, name in (
            ("iops", "diskguard_container_limit_iops"),
            ("bps", "diskguard_container_limit_bytes_per_second"),
        )
        for s in families[name].samples
        if s.labels["pod"] == "web"
    }
    # One metric per unit; an unlimited direction (bytes/s here) has no series at all.
    assert limits == {
        ("read", "iops"): (500, "default"),
        ("write", "iops"): (100, "annotation"),
    }
    [held] = [
        s for s in families["diskguard_container_limit_iops"].samples
        if s.labels["pod"] == "web" and s.labels["direction"] == "write"
    ]  # fmt: skip
    device = cluster.device
    assert (held.labels["major"], held.labels["minor"]) == (str(device.major), str(device.minor))
    assert held.labels["device"] == device.name  # the kernel's name, as node_exporter has it
    # The standard collectors ride along.
    assert "process_resident_memory_bytes" in families and "python_info" in families
    assert "diskguard_sampler_pass_duration_seconds" in families
    states = {s.labels["state"]: s.value for s in families["diskguard_containers"].samples}
    assert states["limited"] == 1
    assert any(
        s.value >= 1
        for s in families["diskguard_reconcile_containers"].samples
        if s.labels.get("outcome") == "changed"
    )
    assert families["diskguard_ready"].samples[0].value == 1
    assert "diskguard_build_info" in families


async def test_readyz_flips_when_the_api_server_goes_away_and_back(
    cluster: Cluster, start_agent: Any
) -> None:
    cluster.add_pod("web")
    running = await start_agent(READINESS_WATCH_GRACE="0.5")
    assert (await get(running, "/readyz")).status_code == 200
    assert (await get(running, "/healthz")).status_code == 200
    cluster.api.go_down()
    with trio.fail_after(scaled(10)):
        while (await get(running, "/readyz")).status_code == 200:
            await trio.sleep(0.1)
    response = await get(running, "/readyz")
    assert "pods watch has made no progress" in response.text
    assert (await get(running, "/healthz")).status_code == 200  # alive, just not ready
    cluster.api.come_back()
    with trio.fail_after(scaled(15)):
        while (await get(running, "/readyz")).status_code != 200:
            await trio.sleep(0.1)


async def test_endpoints_are_read_only(cluster: Cluster, start_agent: Any) -> None:
    running = await start_agent()
    async with httpx.AsyncClient() as client:
        for path in ("/status", "/metrics", "/readyz", "/healthz"):
            response = await client.post(url(running, path))
            assert response.status_code == 405, path
