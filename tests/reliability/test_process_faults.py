"""The agent process itself dies or is stopped at a bad moment: SIGKILL in the middle of
reconciling many pods, SIGTERM while a smart-limit patch hangs on the API server, and
smart-limit patches that fail. Final assertions are on the kernel's cgroup files."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from diskguard.model import IOLimits
from diskguard.testing.lab import start_fio

from .conftest import (
    Cluster,
    P,
    agent_output,
    agent_subprocess,
    kernel_mismatches,
    wait_all,
    wait_until,
)

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]

SMART_ENV = {
    "SMART_LIMIT_ENABLED": "true",
    "SAMPLE_INTERVAL": "0.25",
    "SMART_LIMIT_MONITOR_INTERVAL": "0.5",
    "SMART_LIMIT_HISTORY_WINDOW": "0.05",  # minutes: 3 s
}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


async def test_sigkill_mid_reconcile_of_many_pods_then_restart_converges(
    cluster: Cluster,
) -> None:
    rng = random.Random(3)
    want: dict[Path, IOLimits] = {}
    names = []
    for i in range(250):
        value = 100 + i
        pod = cluster.add_pod(
            f"m{i}",
            annotations={f"{P}/write-iops": str(value)},
            containers=(("a", "img"), ("b", "img")),
            qos=("Burstable", "BestEffort", "Guaranteed")[i % 3],
        )
        names.append(f"m{i}")
        for ref in cluster.refs(pod):
            want[cluster.cgroup(ref)] = IOLimits(500, value)
    cgroups = list(want)
    probes = rng.sample(cgroups, 40)
    env = cluster.env(LOG_LEVEL="warning")
    proc = agent_subprocess(env)
    try:
        # kill at the first sign of the initial reconcile reaching the kernel
        deadline = time.monotonic() + 60
        while not any(cluster.kernel(cg) != IOLimits() for cg in probes):
            assert proc.poll() is None, agent_output(proc).decode()[-2000:]
            assert time.monotonic() < deadline, "the agent never started limiting"
            await trio.lowlevel.checkpoint()  # as tight as the loop allows; no sleep granularity
        proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(proc.wait)
        done = len(cgroups) - len(kernel_mismatches(cluster, want))
        assert 0 < done < len(cgroups), f"{done} of {len(cgroups)} limited when killed"

        # edits while the agent is dead; then a fresh agent converges everything
        for name in rng.sample(names, 20):
            i = int(name[1:])
            cluster.set_annotations("default", name, {f"{P}/read-iops": "77"})
            for cg in cgroups:
                if want[cg].wiops == 100 + i:
                    want[cg] = IOLimits(77, 100 + i)
        proc = agent_subprocess(env)
        await wait_all(cluster, want, timeout=60, what="after SIGKILL and restart")
        assert proc.poll() is None
    finally:
        _kill(proc)


def _background_fio(cluster: Cluster, cgroup: Path, seconds: float) -> subprocess.Popen[bytes]:
    return start_fio(
        cgroup, cluster.mount, runtime=seconds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _sigterm_during_hung_patch(cluster: Cluster) -> tuple[float, int, str, Path]:
    """Smart limit decides to patch, the API server holds the PATCH, the agent gets
    SIGTERM: how long it took to exit, its status and output, the container's cgroup."""
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "200"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    # the API server accepts the smart-limit PATCH and never answers it
    cluster.api.inject_fault("PATCH", r"/pods/busy$", status=None, hang=True)
    proc = agent_subprocess(cluster.env(**SMART_ENV))
    load = None
    try:
        await cluster.wait_kernel(cg, IOLimits(500, 200), timeout=30)
        load = _background_fio(cluster, cg, 40)
        await trio.to_thread.run_sync(
            lambda: cluster.api.wait_for_request(lambda r: r.method == "PATCH", timeout=30)
        )
        await trio.sleep(0.5)  # the patch is in flight, held by the server
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(lambda: proc.wait(30))
        return time.monotonic() - started, code, agent_output(proc).decode(), cg
    finally:
        if load is not None:
            _kill(load)
        _kill(proc)
        # SIGTERM changed nothing in the kernel, and the patch never landed (checked
        # before the held request is released)
        assert cluster.kernel(cg) == IOLimits(500, 200)
        ann = cluster.api.get("pods", "default", "busy")["metadata"]["annotations"]
        assert f"{P}/smart-limit" not in ann
        cluster.api.clear_faults()


@pytest.mark.slow
async def test_sigterm_while_a_smart_limit_patch_hangs_exits_in_bounded_time(
    cluster: Cluster,
) -> None:
    took, code, out, _ = await _sigterm_during_hung_patch(cluster)
    assert code == 0, out[-3000:]
    # bounded by the patch's own read timeout (10 s), well inside a pod's 30 s grace period
    assert took < 15, f"SIGTERM took {took:.1f}s"
    assert "stopping on a signal" in out and "signal=SIGTERM" in out


@pytest.mark.slow
async def test_sigterm_while_a_smart_limit_patch_hangs_exits_within_three_seconds(
    cluster: Cluster,
) -> None:
    took, code, out, _ = await _sigterm_during_hung_patch(cluster)
    assert code == 0, out[-3000:]
    assert took < 3.0, f"SIGTERM took {took:.1f}s"


@pytest.mark.slow
@pytest.mark.parametrize("statuses", [(409, 409, 500, 500), (500, 409)])
async def test_failed_smart_limit_patches_are_retried_then_converge_once(
    cluster: Cluster, start_agent: Any, statuses: tuple[int, ...]
) -> None:
    pod = cluster.add_pod("busy", annotations={f"{P}/write-iops": "200"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    for status in statuses:
        cluster.api.inject_fault("PATCH", r"/pods/busy$", status=status, count=1)
    running = await start_agent(**SMART_ENV)
    await cluster.wait_kernel(cg, IOLimits(500, 200))
    load = _background_fio(cluster, cg, 40)
    try:
        await wait_until(
            lambda: (
                cluster.api.get("pods", "default", "busy")["metadata"]["annotations"].get(
                    f"{P}/smart-limit"
                )
                == "true"
            ),
            timeout=30,
            what="the smart limit written after the failed patches",
        )
        ann = cluster.api.get("pods", "default", "busy")["metadata"]["annotations"]
        auto = int(ann[f"{P}/auto-iops"])
        await cluster.wait_kernel(cg, IOLimits(auto, auto), timeout=3)
        await trio.sleep(2.0)  # several more evaluations under the same load
        patches = [r for r in cluster.api.requests() if r.method == "PATCH"]
        assert len(patches) == len(statuses) + 1  # each failure retried, then one write
        counts = running.agent.smart.patches
        assert counts["apply"] == 1
        for status in set(statuses):
            assert counts[f"http_{status}"] == statuses.count(status)
        applied = [
            e
            for e in cluster.api.list("events", "default")
            if e.get("reason") == "SmartLimitApplied"
        ]
        assert len(applied) == 1  # no Event for the failed attempts, none twice
        assert cluster.kernel(cg) == IOLimits(auto, auto)
    finally:
        _kill(load)
