"""A real Prometheus server (Debian's `prometheus`) scrapes a running agent; a PromQL query
over its HTTP API returns the expected per-container series."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from diskguard.model import CgroupVersion, IOLimits
from diskguard.testing.lab import start_fio
from tests.deploy.dashboard import MATCH_ALL, dashboard_queries, variable_selectors

from .conftest import Cluster, P, scaled
from .test_smart_limit import SMART_ENV, background_fio

pytestmark = pytest.mark.kernel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prometheus(
    binary: str, target: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's Prometheus scraping `target` (host:port) every second, on a free loopback
    port: the process and its port."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: diskguard\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return prom, port


async def test_prometheus_scrapes_the_agent(
    cluster: Cluster, start_agent: Any, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's prometheus package")
    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    running = await start_agent()
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 100))
    target = running.agent.http_binds[0].removeprefix("http://")
    prom, port = start_prometheus(binary, target, tmp_path)
    query = 'diskguard_container_limit_iops{pod="web",container="app",direction="write"}'
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            with trio.fail_after(scaled(60)):
                while True:
                    await trio.sleep(0.5)
                    try:
                        r = await client.get("/api/v1/query", params={"query": query})
                    except httpx.TransportError:
                        continue  # not listening yet
                    result = r.json()["data"]["result"] if r.status_code == 200 else []
                    if result:
                        break
            [series] = result
            assert series["metric"]["namespace"] == "default"
            device = cluster.device
            assert series["metric"]["device"] == device.name  # as node_exporter names it
            assert series["metric"]["major"] == str(device.major)
            assert series["metric"]["source"] == "annotation"
            assert float(series["value"][1]) == 100
            r = await client.get("/api/v1/query", params={"query": "up{job='diskguard'}"})
            assert r.json()["data"]["result"][0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(timeout=10)


@pytest.mark.parametrize("sampler", ["cgroup", pytest.param("bpf", marks=pytest.mark.bpf)])
async def test_promtool_finds_the_exposition_clean(
    cluster: Cluster, start_agent: Any, sampler: str
) -> None:
    """Prometheus' own linter (naming, units, histogram and counter conventions) over a
    live agent's /metrics, with limits, IO counters and (BPF) latency histograms in it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs Debian's prometheus package (promtool)")
    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    running = await start_agent(SAMPLER=sampler, SAMPLE_INTERVAL="0.5")
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 100))
    with trio.fail_after(scaled(60)):
        await running.agent.measuring.wait()
    writes = start_fio(cg, cluster.mount, number_ios=20, size_mib=4)
    await trio.to_thread.run_sync(writes.communicate)
    assert writes.returncode == 0
    async with httpx.AsyncClient() as client:
        with trio.fail_after(scaled(30)):
            while True:
                text = (await client.get(f"{running.agent.http_binds[0]}/metrics")).text
                if "diskguard_container_io_ops_total{" in text and (
                    sampler == "cgroup" or "diskguard_container_io_latency_seconds_bucket{" in text
                ):
                    break
                await trio.sleep(0.2)
    checked = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


@pytest.mark.bpf
@pytest.mark.slow
async def test_every_dashboard_query_answers_for_a_live_agent(
    cluster: Cluster, start_agent: Any, tmp_path: Path
) -> None:
    """The Grafana dashboard's PromQL, run by a real Prometheus scraping a live agent: one
    pod held at its limit by fio and smart-limited gives every panel a series (the offline
    test in tests/deploy feeds promtool series written by hand; this one feeds what the
    agent really exports, labels included)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's prometheus package")
    # One pod held at its IOPS limit (4k writes), one at its bytes/s limit (64k writes, 16 of
    # its 500 IOPS): each unit's automatic limit appears, neither waiting on the other (in
    # one pod, an automatic IOPS limit that came first would hold bytes/s under its
    # threshold for good).
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "200"})
    wide = cluster.add_pod("wide", annotations={f"{P}/write-bps": "1Mi"})
    running = await start_agent(
        SAMPLER="bpf",
        SMART_LIMIT_HIGH_BPS_THRESHOLD="0.5",  # as SMART_ENV's IOPS threshold
        SMART_LIMIT_MIN_BPS="64Ki",
        **SMART_ENV,
    )
    cg = cluster.cgroup(cluster.refs(pod)[0])
    wide_cg = cluster.cgroup(cluster.refs(wide)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 200))
    await cluster.wait_kernel(wide_cg, IOLimits(500, 500, 0, 2**20))
    with trio.fail_after(scaled(60)):
        await running.agent.measuring.wait()
    target = running.agent.http_binds[0].removeprefix("http://")
    # Rates over 15 s: several scrapes even when the v2 guest's Prometheus is late.
    queries = dashboard_queries({**MATCH_ALL, "__rate_interval": "15s"})
    queries += variable_selectors().values()
    # PSI is cgroup v2's: on v1 the pressure panel is empty by design (README, Saturation).
    no_psi = cluster.hierarchy.version is CgroupVersion.V1
    expected = [q for q in queries if not (no_psi and "pressure" in q)]
    assert len(expected) >= len(queries) - 1
    load = background_fio(cluster, cg, 600)
    wide_load = start_fio(
        wide_cg, cluster.mount, bs="64k", runtime=600, ioengine="libaio", iodepth=8
    )
    prom, port = start_prometheus(binary, target, tmp_path)
    empty = expected
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def answers(query: str) -> bool:
                try:
                    r = await client.get("/api/v1/query", params={"query": query})
                except httpx.TransportError:
                    return False  # not listening yet
                assert r.status_code == 200, (query, r.text)
                return bool(r.json()["data"]["result"])

            with trio.move_on_after(scaled(90)):
                while empty:
                    await trio.sleep(1)
                    empty = [q for q in empty if not await answers(q)]
            if no_psi:
                pressure = [q for q in queries if "pressure" in q]
                assert not [q for q in pressure if await answers(q)], "PSI on cgroup v1?"
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        for job in (load, wide_load):
            job.kill()
            job.wait()
    assert not empty, f"{len(empty)} dashboard queries without data: {empty}"
