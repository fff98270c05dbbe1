"""Smart-limit benchmarks.

1. CPU cost of one evaluation pass over N containers (pure: every tier judged over its
   window, as the smart-limit task runs it every SMART_LIMIT_MONITOR_INTERVAL), with the
   single window (one tier) and with three tiers (15, 30, 60 minutes).
2. Detection delay on the real kernel: fio starts in a container cgroup under a static
   limit; the time until the kernel holds the automatic limit, against window + interval —
   for the single window, and per tier for three graded tiers (each tier's limit is
   stricter than the one before, so the kernel's value says which tier is in force).

Run as root:  .venv/bin/python bench/smart_bench.py [--containers 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import trio

from diskguard.config import parse_seconds
from diskguard.model import IOLimits, Rates
from diskguard.policy.smart import AutoLimit, Bucket, SmartSettings
from diskguard.policy.tiers import Capacity, Tier, judge, parse_tiers, single_tier

THREE_TIERS = (
    "window=15m,iops=80%,bps=80%,limit=50%obs; window=30m,iops=60%,limit=40%obs;"
    " window=60m,iops=50%,limit=30%obs"
)


def evaluation_cost(
    containers: int, tiers: tuple[Tier, ...], monitor: float, sample: float
) -> dict[str, float]:
    static = IOLimits(500, 500)
    depth = int(max(t.window for t in tiers) / monitor) + 2
    samples_per_bucket = int(monitor / sample)
    # Fill history as the task would: one bucket per monitor interval.
    histories = []
    t = 0.0
    for c in range(containers):
        hist = []
        t = 0.0
        for _ in range(depth):
            b = Bucket()
            for _ in range(samples_per_bucket):
                t += sample
                b.add(t, sample, Rates(riops=50.0 + c % 7, wiops=300.0 + c % 450))
            closed = b.close(sample)
            assert closed is not None
            hist.append(closed)
        histories.append(hist)
    now = t
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    passes = 20
    applied = 0
    for _ in range(passes):
        for hist in histories:
            verdict = judge(hist, now, static, Capacity(), AutoLimit(), tiers, remove_threshold=0.5)
            applied += bool(verdict.triggers)
    cpu = (time.process_time() - cpu0) / passes
    wall = (time.perf_counter() - wall0) / passes
    # The sampler's side: one Bucket.add per container per sample interval.
    buckets = [Bucket() for _ in range(containers)]
    cpu1 = time.process_time()
    for i in range(20):
        for b in buckets:
            b.add(float(i), sample, Rates(wiops=100.0))
    add_cpu = (time.process_time() - cpu1) / 20
    return {
        "containers": containers,
        "eval_cpu_ms": cpu * 1000,
        "eval_wall_ms": wall * 1000,
        "bucket_add_cpu_ms_per_sample_pass": add_cpu * 1000,
        "triggered": applied / passes,
    }


async def detection_delay(
    window_s: float,
    monitor_s: float,
    sample_s: float,
    tiers: tuple[tuple[str, float, int], ...] = (),
) -> list[float]:
    """Seconds from fio start to the automatic limit held by the kernel: one figure for the
    single window (`tiers` empty), else one per tier (name, window, absolute IOPS limit;
    limits decreasing), the time the kernel first holds that tier's limit or lower."""
    from diskguard.agent.run import Agent
    from diskguard.config import load_config
    from diskguard.kube.client import make_api_client
    from diskguard.model import CgroupDriver, ContainerRef, QoSClass, Runtime
    from diskguard.node.cgroups import detect_cgroup
    from diskguard.node.limits import backend_for
    from diskguard.node.setup import NodeSetup
    from diskguard.testing.fakeapi import FakeAPIServer
    from diskguard.testing.fakeapi.objects import make_pod
    from diskguard.testing.lab import (
        KubeletRoot,
        loop_disk,
        prepare_fio_file,
        start_fio,
    )

    hierarchy = detect_cgroup("/sys/fs/cgroup", None)
    backend = backend_for(hierarchy.version)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, loop_disk(Path(tmp)) as disk:
        assert disk.mount is not None
        kubelet = KubeletRoot(hierarchy, f"dgbench_{uuid.uuid4().hex[:8]}")
        try:
            with FakeAPIServer() as api:
                kubeconfig = Path(tmp) / "kubeconfig"
                api.write_kubeconfig(kubeconfig)
                pod = make_pod(
                    "busy", "default", "bench", annotations={"iops-limit/write-iops": "200"}
                )
                cid = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
                ref = ContainerRef(
                    "default",
                    "busy",
                    pod["metadata"]["uid"],
                    "app",
                    cid,
                    Runtime.CONTAINERD,
                    QoSClass.BURSTABLE,
                )
                cg = kubelet.create(ref, CgroupDriver.CGROUPFS)
                api.create("pods", pod)
                env = {
                    "NODE_NAME": "bench",
                    "DATA_MOUNT": str(disk.mount),
                    "KUBELET_CGROUP_ROOT": kubelet.prefix,
                    "KUBECONFIG": str(kubeconfig),
                    "STATE_DIR": str(kubeconfig.parent / "state"),
                    "HTTP_ADDR": "127.0.0.1:0",
                    "SAMPLER": "cgroup",
                    "SAMPLE_INTERVAL": str(sample_s),
                    "SMART_LIMIT_ENABLED": "true",
                    "SMART_LIMIT_MONITOR_INTERVAL": str(monitor_s),
                    "SMART_LIMIT_HISTORY_WINDOW": str(window_s / 60),
                }
                if tiers:
                    env["SMART_LIMIT_TIERS"] = "; ".join(
                        f"name={name},window={w:g}s,iops=25%,limit-iops={limit}"
                        for name, w, limit in tiers
                    )
                limits = [limit for _, _, limit in tiers] or [199]
                agent = Agent(
                    load_config(env), NodeSetup(hierarchy, (disk.device,)), make_api_client(env)
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(agent.run)
                    await agent.reconciler.synced.wait()
                    prepare_fio_file(disk.mount, 64)  # laid out before the clock starts
                    started = trio.current_time()
                    longest = max([window_s, *(w for _, w, _ in tiers)])
                    fio = start_fio(
                        cg,
                        disk.mount,
                        runtime=longest * 4,
                        ioengine="libaio",
                        iodepth=8,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    delays: list[float] = []
                    try:
                        key = (disk.device.major, disk.device.minor)
                        with trio.fail_after(longest * 4):
                            for limit in limits:
                                while not 0 < backend.read(cg).get(key, IOLimits()).wiops <= limit:
                                    await trio.sleep(0.01)
                                delays.append(trio.current_time() - started)
                    finally:
                        fio.kill()
                        fio.wait()
                    nursery.cancel_scope.cancel()
                return delays
        finally:
            kubelet.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-kernel", action="store_true")
    args = parser.parse_args()
    print(
        f"command: .venv/bin/python bench/smart_bench.py --containers {args.containers} "
        f"--runs {args.runs}"
    )
    shapes = {
        "the single window (10 min: one tier)": (single_tier(SmartSettings(window=600.0)),),
        "three tiers (15, 30, 60 min)": parse_tiers(THREE_TIERS, parse_seconds),
    }
    for label, tiers in shapes.items():
        cost = evaluation_cost(args.containers, tiers, monitor=60.0, sample=1.0)
        print(f"\n== evaluation pass, {label}; monitor 60 s, sample 1 s")
        for k, v in cost.items():
            print(f"  {k:<36} {v:10.2f}")
    if args.skip_kernel or os.geteuid() != 0:
        return
    window, monitor, sample = 5.0, 1.0, 0.5
    print(
        f"\n== detection delay (window {window:g} s, monitor {monitor:g} s, sample {sample:g} s;"
        f" expected about window + up to one monitor interval)"
    )
    delays = [trio.run(detection_delay, window, monitor, sample)[0] for _ in range(args.runs)]
    for d in delays:
        print(f"  {d:6.2f} s  (window + {d - window:5.2f} s)")
    graded = (("t1", 3.0, 150), ("t2", 6.0, 100), ("t3", 12.0, 60))
    print(
        "\n== detection delay per tier ("
        + "; ".join(f"{n}: {w:g} s, {lim} IOPS" for n, w, lim in graded)
        + f"; monitor {monitor:g} s, sample {sample:g} s; each should hold within its window +"
        " one monitor interval)"
    )
    for _ in range(args.runs):
        per_tier = trio.run(detection_delay, window, monitor, sample, graded)
        print(
            "  "
            + "   ".join(
                f"{name} {d:5.2f} s (window + {d - w:4.2f} s)"
                for (name, w, _), d in zip(graded, per_tier, strict=True)
            )
        )
    print(
        f"  peak RSS of the bench process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
