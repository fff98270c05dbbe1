"""Samplers against the real kernel: fio in sibling cgroups on a loop disk.

The BPF program is compiled once for the module (fixture `bpf_sampler`); each test makes
its own cgroups below a unique kubelet root.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from diskguard.model import CgroupVersion, Counters, Device
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.sampler.base import Snapshot, Target
from diskguard.sampler.bpf import BpfSampler
from diskguard.sampler.cgroupfs import V1_ARM, CgroupSampler
from diskguard.sampler.rates import RateTracker
from tests.kernel_fixtures import KubeletRoot, LoopDisk, RunInCgroup

from .conftest import RecordingLog, fio_result, start_fio

pytestmark = [pytest.mark.kernel, pytest.mark.bpf, pytest.mark.slow]


def delta(after: Snapshot, before: Snapshot, target: Target, device: Device) -> Counters:
    a, b = after[target][device], before[target][device]
    return Counters(a.rios - b.rios, a.wios - b.wios, a.rbytes - b.rbytes, a.wbytes - b.wbytes)


def within(measured: int | float, expected: int | float, tolerance: float) -> bool:
    return abs(measured - expected) <= tolerance * max(expected, 1)


def test_sibling_cgroups_bpf_matches_fio_and_kernel_counters(
    bpf_sampler: BpfSampler,
    cgroup_hierarchy: CgroupHierarchy,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    assert disk.mount is not None
    writer, reader = kubelet_root.leaf("writer"), kubelet_root.leaf("reader")
    targets = [Target.of(writer), Target.of(reader)]
    kernel = CgroupSampler(
        bpf_sampler.devices, cgroup_hierarchy.path, cgroup_hierarchy.version, RecordingLog()
    )
    bpf_rates, kernel_rates = RateTracker(), RateTracker()
    dev = disk.device

    kernel_before = kernel.read(targets)  # arms v1 counting before any IO
    bpf_before = bpf_sampler.read(targets)
    bpf_rates.update(bpf_before)
    kernel_rates.update(kernel_before)

    # A count of IOs, not a time: a CPU-starved or emulated machine takes longer for them
    # instead of doing too few (about 3 s at these rates on a quiet machine).
    procs = [
        start_fio(
            run_in_cgroup,
            writer,
            disk.mount,
            "randwrite",
            number_ios=450,
            extra=["--rate_iops=150"],
        ),
        start_fio(
            run_in_cgroup,
            reader,
            disk.mount,
            "randread",
            number_ios=1200,
            extra=["--rate_iops=400"],
        ),
    ]
    w_fio, r_fio = (fio_result(p) for p in procs)

    bpf_after = bpf_sampler.read(targets)
    bpf_r = bpf_rates.update(bpf_after)
    kernel_after = kernel.read(targets)
    kernel_r = kernel_rates.update(kernel_after)

    w_bpf, r_bpf = (delta(bpf_after, bpf_before, t, dev) for t in targets)
    w_kernel, r_kernel = (delta(kernel_after, kernel_before, t, dev) for t in targets)

    assert (w_fio.write_ios, r_fio.read_ios) == (450, 1200), "fio did not do its IOs"
    # The writer only wrote, the reader only read: any other count is cross-attribution.
    assert w_bpf.rios == 0 and r_bpf.wios == 0, (w_bpf, r_bpf)
    assert within(w_bpf.wios, w_fio.write_ios, 0.01), (w_bpf, w_fio)
    assert within(r_bpf.rios, r_fio.read_ios, 0.01), (r_bpf, r_fio)
    assert within(w_bpf.wbytes, w_fio.write_bytes, 0.01)
    assert within(r_bpf.rbytes, r_fio.read_bytes, 0.01)
    # The kernel's own counters agree with BPF, and so does the fallback sampler (same data).
    assert within(w_bpf.wios, w_kernel.wios, 0.01), (w_bpf, w_kernel)
    assert within(r_bpf.rios, r_kernel.rios, 0.01), (r_bpf, r_kernel)
    assert within(w_kernel.wbytes, w_fio.write_bytes, 0.05)
    assert within(r_kernel.rbytes, r_fio.read_bytes, 0.05)
    # Rates over the same interval: fallback within 5% of BPF.
    for t in targets:
        b, k = bpf_r[t][dev], kernel_r[t][dev]
        assert within(k.riops, b.riops, 0.05) and within(k.wiops, b.wiops, 0.05), (b, k)
        assert within(k.rbps, b.rbps, 0.05) and within(k.wbps, b.wbps, 0.05), (b, k)
    # Different amounts over the same interval really were told apart (1,200 reads vs 450
    # writes, whatever the machine's speed).
    assert bpf_r[targets[1]][dev].riops > 2 * bpf_r[targets[0]][dev].wiops


def test_io_through_the_loop_worker_is_charged_to_the_container(
    bpf_sampler: BpfSampler,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    backing_disk: Device | None,
    run_in_cgroup: RunInCgroup,
) -> None:
    """The loop device's worker thread reads the backing file on the container's behalf."""
    if backing_disk is None:
        pytest.skip("the loop disk's backing file is not on a block device (tmpfs?)")
    assert disk.mount is not None
    cg = kubelet_root.leaf("app")
    target = Target.of(cg)
    before_all = bpf_sampler.totals_by_cgroup()
    before = bpf_sampler.read([target])
    fio = fio_result(start_fio(run_in_cgroup, cg, disk.mount, "randread", number_ios=1500))
    after = bpf_sampler.read([target])
    after_all = bpf_sampler.totals_by_cgroup()

    on_loop = delta(after, before, target, disk.device)
    on_backing = delta(after, before, target, backing_disk)
    assert within(on_loop.rios, fio.read_ios, 0.01), (on_loop, fio)
    # The loop worker (a kernel thread outside the container) issued these reads to the
    # backing disk; the blkcg chain still charges them to the container. A little more
    # than fio's count: the backing filesystem's own metadata reads for the file.
    assert fio.read_ios * 0.99 <= on_backing.rios <= fio.read_ios * 1.2, (on_backing, fio)
    # Reads of the loop device charged to any other cgroup (the worker's included) while
    # fio ran: next to none. Not exactly none: anything on the host may probe block
    # devices (blkid, lsblk), and that is real IO of whoever does it.
    others = {
        cg_id: devs.get(disk.device, Counters()).rios
        - before_all.get(cg_id, {}).get(disk.device, Counters()).rios
        for cg_id, devs in after_all.items()
        if cg_id != target.cgroup_id
    }
    assert sum(others.values()) <= 0.01 * fio.read_ios, others


def test_vanished_and_reused_targets_are_left_out(
    bpf_sampler: BpfSampler, kubelet_root: KubeletRoot, cgroup_hierarchy: CgroupHierarchy
) -> None:
    live = Target.of(kubelet_root.leaf("live"))
    gone_dir = kubelet_root.leaf("gone")
    gone = Target.of(gone_dir)
    gone_dir.rmdir()
    reused = Target(live.cgroup_id + 1_000_000, live.path)  # path exists, id is not its own
    outside = Target(live.cgroup_id, Path("/tmp") / live.path.name)
    kernel = CgroupSampler(
        bpf_sampler.devices, cgroup_hierarchy.path, cgroup_hierarchy.version, RecordingLog()
    )
    for sampler in (bpf_sampler, kernel):
        out = sampler.read([live, gone, reused, outside])
        assert set(out) == {live}, sampler.kind
        assert set(out[live]) == set(bpf_sampler.devices)


def test_cgroup_sampler_arming_never_touches_existing_limits(
    cgroup_hierarchy: CgroupHierarchy,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    if cgroup_hierarchy.version is not CgroupVersion.V1:
        pytest.skip("arming is a cgroup v1 matter")
    assert disk.mount is not None
    limited = kubelet_root.leaf("limited")
    rules = limited / V1_ARM
    rules.write_text(f"{disk.device} 50\n")
    target = Target.of(limited)
    sampler = CgroupSampler([disk.device], cgroup_hierarchy.path, CgroupVersion.V1, RecordingLog())
    before = sampler.read([target])
    assert rules.read_text().split() == [str(disk.device), "50"]
    started = time.monotonic()
    fio = fio_result(start_fio(run_in_cgroup, limited, disk.mount, "randread", number_ios=100))
    elapsed = time.monotonic() - started
    after = sampler.read([target])
    assert rules.read_text().split() == [str(disk.device), "50"]
    assert elapsed > 1.5, "the 50 read IOPS limit no longer applies"
    assert delta(after, before, target, disk.device).rios == fio.read_ios


def test_close_leaves_no_bpf_objects(
    bpf_sampler: BpfSampler,
    cgroup_hierarchy: CgroupHierarchy,
    disk: LoopDisk,
    header_cache: Path,
) -> None:
    from diskguard.sampler.bpf import BpfOptions, open_bpf_sampler

    def bpf_fds() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:bpf")
        return count

    baseline = bpf_fds()
    sampler = open_bpf_sampler(
        [disk.device],
        cgroup_hierarchy.path,
        cgroup_hierarchy.version,
        RecordingLog(),
        BpfOptions(cache_dir=header_cache),
    )
    assert bpf_fds() > baseline
    sampler.close()
    assert bpf_fds() == baseline
    sampler.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        sampler.read([])


def test_batch_and_iterative_map_reads_agree(
    bpf_sampler: BpfSampler,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    """Kernels before 5.6 lack BPF_MAP_LOOKUP_BATCH; the fallback walk must read the same,
    for the counters and for the latency histograms."""
    assert disk.mount is not None
    cg = kubelet_root.leaf("both")
    fio_result(start_fio(run_in_cgroup, cg, disk.mount, "randrw", number_ios=200))
    target = Target.of(cg)
    batched = bpf_sampler.read([target])
    batched_lat = bpf_sampler.read_latency([target])
    bpf_sampler._batch_ok = False  # what the sampler does after EINVAL from the kernel
    try:
        walked = bpf_sampler.read([target])
        walked_lat = bpf_sampler.read_latency([target])
    finally:
        bpf_sampler._batch_ok = True
    assert batched == walked
    counted = batched[target][disk.device]
    assert counted.rios + counted.wios == 200
    assert batched_lat is not None and batched_lat == walked_lat
    lat = batched_lat[target][disk.device]
    assert lat.read.count + lat.write.count == 200 and lat.read.sum_ns > 0


@pytest.mark.v2  # cgroup v1 has no cgroup writeback: flushed pages are charged to the root
def test_buffered_writes_flushed_by_writeback_are_charged_to_the_writer(
    bpf_sampler: BpfSampler,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    """The writer leaves dirty pages and exits; a `sync` from outside its cgroup makes the
    flusher kworker issue the IO. The blkcg the block layer charges is still the writer's."""
    assert disk.mount is not None
    writer, bystander = kubelet_root.leaf("writer"), kubelet_root.leaf("bystander")
    targets = [Target.of(writer), Target.of(bystander)]
    before = bpf_sampler.read(targets)
    size_mib = 16
    dd = run_in_cgroup(
        writer,
        [
            "dd",
            "if=/dev/zero",
            f"of={disk.mount / 'buffered.dat'}",
            "bs=1M",
            f"count={size_mib}",
            "status=none",
        ],
    )
    assert dd.wait(timeout=60) == 0
    os.sync()  # from the test process: IO is issued by writeback, not by dd
    time.sleep(0.5)
    after = bpf_sampler.read(targets)
    written = delta(after, before, targets[0], disk.device)
    others = delta(after, before, targets[1], disk.device)
    assert written.wbytes >= 0.95 * (size_mib << 20), written
    assert others.wbytes == 0 and others.wios == 0, others
