"""`diskguard top --once --json` on real cgroups, with and without a reachable cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from diskguard.model import IOLimits
from diskguard.testing.lab import start_fio

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel


def top_json(cluster: Cluster, *args: str, **env: str) -> dict[str, Any]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **cluster.env(**env)}
    done = subprocess.run(
        [sys.executable, "-m", "diskguard", "top", "--once", "--json", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("sampler", ["cgroup", pytest.param("bpf", marks=pytest.mark.bpf)])
async def test_top_shows_rates_names_and_limits(
    cluster: Cluster, start_agent: Any, sampler: str
) -> None:
    # The kernel holds the rate (100 write IOPS) and fio keeps IOs queued behind it: fio's own
    # --rate_iops catches up in bursts after CPU starvation, the throttle does not.
    busy = cluster.add_pod("busy", annotations={f"{P}/write-iops": "100"}, labels={"tier": "db"})
    cluster.add_pod("idle")
    running = await start_agent()
    busy_cg = cluster.cgroup(cluster.refs(busy)[0])
    await cluster.wait_kernel(busy_cg, IOLimits(500, 100))
    running.stop()
    # Runs until killed below: `top` may spend long compiling BPF under emulation first.
    load = start_fio(
        busy_cg,
        cluster.mount,
        runtime=600,
        size_mib=32,
        ioengine="libaio",
        iodepth=8,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # fio spawned is not fio writing: wait until the kernel has counted its writes, so
        # the snapshot measures a steady load (0.0 was read here when it had not started).
        start = cluster.io_counters(busy_cg).wios
        await cluster.wait_io(busy_cg, writes=start + 20)
        snap = top_json(cluster, SAMPLER=sampler, SAMPLE_INTERVAL="2")
    finally:
        load.kill()
        load.wait()
    if sampler == "bpf" and snap["sampler"] != "bpf":
        pytest.skip(f"BPF sampler unavailable here: {snap['sampler_degraded']}")
    assert snap["sampler"] == sampler
    rows = {(r["pod"], r["device"]): r for r in snap["containers"]}
    row = rows[("busy", str(cluster.device))]
    assert row["namespace"] == "default" and row["container"] == "app"
    assert row["cgroup"] == str(busy_cg) and row["cgroup_id"] == os.stat(busy_cg).st_ino
    assert 80 <= row["write_iops"] <= 120, row  # the kernel's write-iops=100
    assert row["write_bps"] == pytest.approx(row["write_iops"] * 4096, rel=0.01)
    assert row["limits"] == {"riops": 500, "wiops": 100, "rbps": None, "wbps": None}
    # The share of the limit in use, per direction (null: unlimited).
    assert 0.8 <= row["limit_use"]["write"] <= 1.2 and row["limit_use"]["read"] == 0, row
    assert snap["timestamp"].endswith("+00:00")
    quiet = rows[("idle", str(cluster.device))]
    assert quiet["limit_use"] == {"read": 0.0, "write": 0.0}
    assert quiet["write_iops"] == 0 and quiet["read_iops"] == 0
    # Device latency: measured by BPF, unavailable (null, never 0) with the cgroup sampler.
    latency = ("read_p50_seconds", "read_p99_seconds", "write_p50_seconds", "write_p99_seconds")
    if sampler == "bpf":
        assert snap["latency_unavailable"] is None
        assert 0 < row["write_p50_seconds"] <= row["write_p99_seconds"] < 1, row
        assert row["read_p50_seconds"] is None  # no read completed: nothing to report
        assert all(quiet[k] is None for k in latency), quiet
    else:
        assert isinstance(snap["latency_unavailable"], str)
        assert all(row[k] is None and quiet[k] is None for k in latency), row


async def test_top_without_a_cluster_shows_cgroup_paths(cluster: Cluster) -> None:
    pod = cluster.add_pod("anon")
    cg = cluster.cgroup(cluster.refs(pod)[0])
    snap = top_json(cluster, SAMPLER="cgroup", SAMPLE_INTERVAL="0.5", KUBECONFIG="/nonexistent")
    [row] = [r for r in snap["containers"] if r["cgroup"] == str(cg)]
    assert row["pod"] is None and row["namespace"] is None


@pytest.mark.host_only  # three `top` processes: minutes under emulation, nothing kernel-specific
def test_namespace_and_label_selector_narrow_the_rows(cluster: Cluster) -> None:
    cluster.add_pod("db", labels={"tier": "db"})
    cluster.add_pod("web", labels={"tier": "web"})
    cluster.add_pod("job", namespace="batch", labels={"tier": "db"})
    env = {"SAMPLER": "cgroup", "SAMPLE_INTERVAL": "0.3"}
    both = top_json(cluster, "-n", "default", "-l", "tier=db", **env)
    assert {r["pod"] for r in both["containers"]} == {"db"}
    batch = top_json(cluster, "--namespace", "batch", **env)
    assert {r["pod"] for r in batch["containers"]} == {"job"}
    not_web = top_json(cluster, "--selector", "tier!=web", **env)
    assert {r["pod"] for r in not_web["containers"]} == {"db", "job"}


def test_live_view_renders_a_table(cluster: Cluster) -> None:
    cluster.add_pod("shown", annotations={f"{P}/iops": "100"})
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **cluster.env(SAMPLER="cgroup", SAMPLE_INTERVAL="5"),  # the argument wins
    }
    done = subprocess.run(
        # biotop's habit: interval and count as positional arguments.
        [sys.executable, "-m", "diskguard", "top", "0.3", "2", "--sort", "name"],
        env=full,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("diskguard top - ") == 2  # refreshed twice
    assert "interval 0.3s" in done.stdout  # the argument, not SAMPLE_INTERVAL
    assert "W_IOPS" in done.stdout and "LIMIT r/w IOPS" in done.stdout
    assert "R_P50" in done.stdout and "W_P99" in done.stdout and "%LIM" in done.stdout
    assert "\033[2J" not in done.stdout  # not a terminal: no screen clearing
    assert "default/shown/app" in done.stdout
    [line] = [ln for ln in done.stdout.splitlines() if "default/shown/app" in ln][-1:]
    assert line.split()[-7:-3] == ["-", "-", "-", "-"], line  # cgroup sampler: no latency
    # No agent ran: the annotation is not in the kernel, so no limit to use a share of.
    assert line.split()[-3] == "-", line
