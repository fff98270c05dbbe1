"""The agent's HTTP endpoints, against a running agent on real cgroups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import IOLimits
from diskguard.node.capacity import DiskCapacity, disk_identity, record_capacity
from diskguard.node.state import StateDir
from diskguard.testing.lab import start_load

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel


def url(running: Any, path: str) -> str:
    return f"{running.agent.http_binds[0]}{path}"


async def get(running: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url(running, path), timeout=scaled(5))


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


def _sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family, _, suffix = name.rpartition(":")
    return sum(
        s.value
        for s in families[family].samples
        if s.name == family + suffix and labels.items() <= s.labels.items()
    )


async def test_apply_latency_counts_changes_to_running_containers_and_events_by_reason(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("web")
    running = await start_agent()
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 500))

    async def families() -> dict[str, Any]:
        text = (await get(running, "/metrics")).text
        return {f.name: f for f in text_string_to_metric_families(text)}

    # A new container's first limit waits for its cgroup (the runtime), not for the agent:
    # not an apply latency.
    before = await families()
    assert _sample(before, "diskguard_apply_latency_seconds:_count") == 0
    assert _sample(before, "diskguard_events_emitted:_total", reason="IOLimitApplied") == 0

    cluster.set_annotations("default", "web", {f"{P}/write-iops": "100"})
    await cluster.wait_kernel(cg, IOLimits(500, 100), timeout=10)
    await cluster.wait_events("IOLimitApplied", 1, timeout=10)
    after = await families()
    assert _sample(after, "diskguard_apply_latency_seconds:_count") == 1
    # Taken in and written by the time the kernel read back the new value above.
    assert 0 < _sample(after, "diskguard_apply_latency_seconds:_sum") < scaled(10)
    assert _sample(after, "diskguard_apply_latency_seconds:_bucket", le="+Inf") == 1
    assert _sample(after, "diskguard_events_emitted:_total", reason="IOLimitApplied") == 1

    # A change that writes nothing (an annotation not ours) is reconciled, and is no
    # apply latency.
    passes = _sample(after, "diskguard_reconcile_passes:_total")
    cluster.set_annotations("default", "web", {"example.com/owner": "x"})
    with trio.fail_after(scaled(10)):
        while _sample(latest := await families(), "diskguard_reconcile_passes:_total") <= passes:
            await trio.sleep(0.05)
    assert _sample(latest, "diskguard_apply_latency_seconds:_count") == 1


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


async def test_disk_capacity_shows_what_profile_measured_and_what_the_disk_sustained(
    cluster: Cluster, start_agent: Any, tmp_path: Path
) -> None:
    state = StateDir(tmp_path / "state")
    identity = disk_identity(cluster.device)
    assert identity is not None
    at = "2026-12-02T09:00:00+00:00"
    record_capacity(state, identity, DiskCapacity(9000, 8000, 300 * 2**20, 200 * 2**20, at))
    pod = cluster.add_pod("web")
    running = await start_agent(
        STATE_DIR=str(state.path), SAMPLE_INTERVAL="0.25", CAPACITY_OBSERVED_WINDOW="1s"
    )
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 500))
    load = start_load(cg, cluster.mount)
    try:
        # Sustained for a whole 1 s window: some tens of writes/s at least, even on a
        # starved loop disk (the limit holds it at 500).
        with trio.fail_after(scaled(30)):
            while True:
                [disk] = (await get(running, "/status")).json()["disk_capacity"]
                if disk["observed"]["wiops"] >= 20:
                    break
                await trio.sleep(0.1)
    finally:
        load.kill()
        load.wait()
    assert disk["device"] == str(cluster.device)
    assert disk["measured"] == {
        "riops": 9000, "wiops": 8000, "rbps": 300 * 2**20, "wbps": 200 * 2**20
    }  # fmt: skip
    assert disk["measured_at"] == at and disk["observed"]["wiops"] <= 2000  # IOPS, not bytes
    text = (await get(running, "/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    iops = {
        (s.labels["direction"], s.labels["source"]): s.value
        for s in families["diskguard_disk_capacity_iops"].samples
    }
    assert iops[("write", "measured")] == 8000 and iops[("read", "measured")] == 9000
    assert iops[("write", "observed")] >= 20
    assert families["diskguard_disk_capacity_bytes_per_second"].samples
