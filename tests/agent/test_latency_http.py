"""Per-container device latency in /metrics and /status of a running agent, real IO.

With the BPF sampler the histogram comes from the kernel's buckets; with the cgroup
sampler latency is unavailable: the metric is absent and /status says null, never 0.
"""

from __future__ import annotations

import math
import subprocess
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import IOLimits
from diskguard.testing.lab import start_fio

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel

METRIC = "diskguard_container_io_latency_seconds"


async def get(running: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{running.agent.http_binds[0]}{path}", timeout=scaled(5))


def histogram(text: str, pod: str, direction: str) -> dict[str, Any] | None:
    """{"buckets": [(le, n)], "count": n, "sum": s} of one series, or None if absent."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    if METRIC not in families:
        return None
    out: dict[str, Any] = {"buckets": []}
    for s in families[METRIC].samples:
        if s.labels.get("pod") != pod or s.labels.get("direction") != direction:
            continue
        if s.name.endswith("_bucket"):
            out["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            out["count"] = s.value
        elif s.name.endswith("_sum"):
            out["sum"] = s.value
    return out if out["buckets"] else None


@pytest.mark.parametrize("sampler", ["cgroup", pytest.param("bpf", marks=pytest.mark.bpf)])
async def test_latency_in_metrics_and_status(
    cluster: Cluster, start_agent: Any, sampler: str
) -> None:
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "300"})
    cluster.add_pod("idle")
    running = await start_agent(SAMPLER=sampler, SAMPLE_INTERVAL="0.5")
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 300))
    with trio.fail_after(scaled(60)):
        await running.agent.measuring.wait()
    sampling = running.agent.sampling
    assert sampling is not None and sampling.sampler.kind == sampler
    load = start_fio(
        cg,
        cluster.mount,
        runtime=600,
        size_mib=32,
        extra=["--rate_iops=100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        start = cluster.io_counters(cg).wios
        await cluster.wait_io(cg, writes=start + 50)
        if sampler == "cgroup":
            # Several passes with IO in them: still no latency anywhere.
            passes = sampling.passes
            with trio.fail_after(scaled(10)):
                while sampling.passes < passes + 3:
                    await trio.sleep(0.1)
            text = (await get(running, "/metrics")).text
            assert METRIC not in text
            body = (await get(running, "/status")).json()
            assert isinstance(body["sampler"]["latency_unavailable"], str)
            busy = next(c for c in body["containers"] if c["pod"] == "busy")
            assert busy["latency"] is None and busy["rates"] is not None
            return
        # BPF: /status shows the last interval's p50/p99 while the load runs.
        with trio.fail_after(scaled(30)):
            while True:
                body = (await get(running, "/status?pod=busy")).json()
                [busy] = body["containers"]
                lat = (busy["latency"] or {}).get(str(cluster.device)) or {}
                if lat.get("write_p50_seconds") is not None:
                    break
                await trio.sleep(0.2)
        assert body["sampler"]["latency_unavailable"] is None
        assert 0 < lat["write_p50_seconds"] <= lat["write_p99_seconds"] < 1, lat
        assert lat["read_p50_seconds"] is None  # nothing read: no figure, not 0
    finally:
        load.kill()
        load.wait()
    # After the load: the histogram counts every completed write the kernel counted (the
    # program was attached before the container did any IO).
    done = cluster.io_counters(cg).wios
    with trio.fail_after(scaled(15)):
        while True:
            series = histogram((await get(running, "/metrics")).text, "busy", "write")
            if series is not None and series["count"] >= done:
                break
            await trio.sleep(0.2)
    assert series["count"] == done, (series["count"], done)
    buckets = series["buckets"]
    assert buckets[-1][0] == math.inf and buckets[-1][1] == series["count"]
    assert [n for _, n in buckets] == sorted(n for _, n in buckets), "cumulative"
    assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
    assert 0 < series["sum"] / series["count"] < 1
    assert histogram((await get(running, "/metrics")).text, "idle", "write") is None
