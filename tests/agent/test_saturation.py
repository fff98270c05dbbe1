"""Saturation on a real kernel: a container held at its limit reads >= 0.95 and gets exactly
one IOLimitSaturated Event; one far below its limit reads low and gets none. With the eBPF
sampler (requests) the ratio comes from the cgroup's own bio counters."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import CgroupVersion, IOLimits
from diskguard.testing.lab import start_fio, start_load

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel

# The default cooldown (1h) holds back a second Event here; the episode rule itself is
# the pure tests' (tests/policy/test_saturation.py, tests/agent/test_saturation_monitor.py).
ENV = {"SAMPLE_INTERVAL": "0.25", "SATURATION_EVENT_INTERVALS": "4"}


async def _status(running: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{running.agent.http_binds[0]}/status", timeout=scaled(5))
        return dict(response.json())


def _write_saturation(status: dict[str, Any], pod: str, device: str) -> float | None:
    [container] = [c for c in status["containers"] if c["pod"] == pod]
    value = container["saturation"].get(device, {}).get("write")
    return None if value is None else float(value)


@pytest.mark.parametrize(
    "sampler", ["cgroup", pytest.param("bpf", marks=[pytest.mark.bpf, pytest.mark.host_only])]
)
async def test_a_container_at_its_limit_is_saturated_and_its_owner_told_once(
    cluster: Cluster, start_agent: Any, sampler: str
) -> None:
    held = cluster.add_pod("held", annotations={f"{P}/write-iops": "100"})
    free = cluster.add_pod("free", annotations={f"{P}/write-iops": "5000"})
    running = await start_agent(**ENV, SAMPLER=sampler)
    with trio.fail_after(scaled(60)):  # BCC compiles first with SAMPLER=bpf
        await running.agent.measuring.wait()
    held_cg, free_cg = (cluster.cgroup(cluster.refs(p)[0]) for p in (held, free))
    await cluster.wait_kernel(held_cg, IOLimits(500, 100))
    await cluster.wait_kernel(free_cg, IOLimits(500, 5000))
    # Several IOs in flight: the throttle's queue never runs dry, so exactly the limit passes.
    load = start_load(held_cg, cluster.mount, runtime=300, iodepth=8)
    light = start_load(free_cg, cluster.mount, runtime=300, iodepth=1, extra=["--rate_iops=50"])
    device = str(cluster.device)
    try:
        with trio.fail_after(scaled(60)):
            while True:
                status = await _status(running)
                at = _write_saturation(status, "held", device)
                if at is not None and at >= 0.95:
                    break
                await trio.sleep(0.1)
        [event] = await cluster.wait_events("IOLimitSaturated", 1, timeout=20)
        assert event["involvedObject"]["name"] == "held" and event["type"] == "Warning"
        assert "of its write IOPS limit (100 IOPS)" in event["message"], event["message"]
        # Still saturated some intervals later: no second Event for the same episode.
        await trio.sleep(scaled(2))
        status = await _status(running)
        assert len(cluster.events("IOLimitSaturated")) == 1
        assert (_write_saturation(status, "held", device) or 0) >= 0.9
        below = _write_saturation(status, "free", device)
        # bpf: the light load's cgroup counters are read once it shows IO; cgroup: always.
        assert (below is None and sampler == "bpf") or (below is not None and below < 0.5), below
        text = (await running_metrics(running)).decode()
    finally:
        for proc in (load, light):
            proc.kill()
            proc.wait()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    seconds = {
        s.labels["pod"]: s.value
        for s in families["diskguard_container_io_saturated_seconds"].samples
        if s.labels["direction"] == "write" and s.name.endswith("_total")
    }
    assert seconds["held"] > 0 and seconds.get("free", 0) == 0
    gauge = {
        s.labels["pod"]: s.value
        for s in families["diskguard_container_io_saturation"].samples
        if s.labels["direction"] == "write"
    }
    assert gauge["held"] >= 0.9


async def running_metrics(running: Any) -> bytes:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{running.agent.http_binds[0]}/metrics", timeout=scaled(5))
        return response.content


async def test_a_throttled_container_shows_its_io_pressure_on_cgroup_v2(
    cluster: Cluster, start_agent: Any
) -> None:
    """Tasks held back by io.max wait for IO: PSI counts it, per container (v2 only)."""
    if cluster.hierarchy.version is not CgroupVersion.V2:
        pytest.skip("io.pressure is cgroup v2's (PSI has no per-cgroup files on v1)")
    pod = cluster.add_pod("held", annotations={f"{P}/write-iops": "20"})
    running = await start_agent(SAMPLE_INTERVAL="0.25")
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 20))
    assert (cg / "io.pressure").exists(), "PSI is off in this kernel (boot with psi=1)"
    # Synchronous writers: a task blocked in a throttled O_DIRECT write is in iowait, which
    # PSI counts (a libaio submitter does not block on the throttle; its wait in
    # io_getevents is not IO wait).
    load = start_fio(
        cg,
        cluster.mount,
        runtime=120,
        size_mib=16,
        ioengine="psync",
        extra=["--numjobs=4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(scaled(30)):
            while True:
                [held] = [c for c in (await _status(running))["containers"] if c["pod"] == "held"]
                if held["io_pressure"] and held["io_pressure"]["some_seconds"] >= 0.5:
                    break
                await trio.sleep(0.1)
        text = (await running_metrics(running)).decode()
    finally:
        load.kill()
        load.wait()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [waiting] = [
        s.value
        for s in families["diskguard_container_io_pressure_waiting_seconds"].samples
        if s.labels["pod"] == "held"
    ]
    assert waiting >= 0.5
