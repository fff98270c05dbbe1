"""Latency histograms against the real kernel: fio in cgroups on a loop disk.

What our histogram measures is the device's service time (request issue -> completion);
fio's clat is what the application waits for. Unlimited, the two agree within the log2
bucket resolution; under a low IOPS limit fio also waits for blk-throttle, which holds bios
before they become requests, so the device histogram stays far below fio's clat.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from diskguard.model import Counters, Device, IOLimits
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.limits import backend_for
from diskguard.sampler.base import Target
from diskguard.sampler.bpf import BpfOptions, BpfSampler, open_bpf_sampler
from diskguard.sampler.cgroupfs import CgroupSampler
from diskguard.sampler.latency import DeviceLatency, LatencyHistogram, LatencySnapshot
from tests.kernel_fixtures import KubeletRoot, LoopDisk, RunInCgroup

from .conftest import RecordingLog, fio_result, start_fio

# fio's clat ends when fio runs again after the completion; on a busy machine the wake-up
# of a normal task adds a tail the device never saw. Realtime priority removes most of it.
RT = ("chrt", "--fifo", "10")

pytestmark = [pytest.mark.kernel, pytest.mark.bpf, pytest.mark.slow]


def added(
    after: LatencySnapshot | None, before: LatencySnapshot | None, t: Target
) -> dict[Device, DeviceLatency]:
    assert after is not None and before is not None, "latency unavailable"
    return {dev: lat.since(before[t][dev]) for dev, lat in after[t].items()}


def within_factor_2(ours: float | None, fio: float | None) -> bool:
    assert ours is not None and fio is not None
    return fio / 2 <= ours <= fio * 2


def test_latency_is_available_with_btf(bpf_sampler: BpfSampler) -> None:
    assert bpf_sampler.latency_problem is None, bpf_sampler.latency_problem
    assert "block_rq_complete" in bpf_sampler.info["attach"]


def unlimited_runs(
    sampler: BpfSampler, root: KubeletRoot, disk: LoopDisk, run_in_cgroup: RunInCgroup
) -> Iterator[tuple[str, LatencyHistogram, LatencyHistogram, int, float | None, float | None]]:
    """Per direction: (rw, histogram of that direction, of the other, fio's IOs, clat p50,
    clat p99) of 3,000 4k O_DIRECT IOs by one unlimited container."""
    assert disk.mount is not None
    cg = root.leaf("unlimited")
    target = Target.of(cg)
    for rw in ("randread", "randwrite"):
        before = sampler.read_latency([target])
        fio = fio_result(start_fio(run_in_cgroup, cg, disk.mount, rw, number_ios=3000, prefix=RT))
        lat = added(sampler.read_latency([target]), before, target)[disk.device]
        if rw == "randread":
            yield rw, lat.read, lat.write, fio.read_ios, fio.read_clat_p50_s, fio.read_clat_p99_s
        else:
            yield rw, lat.write, lat.read, fio.write_ios, fio.write_clat_p50_s, fio.write_clat_p99_s


def test_unlimited_container_latency_is_inside_fio_clat(
    bpf_sampler: BpfSampler,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    """Every request is timed once, and the device's part of each IO is inside what fio
    waited for, so our quantiles never exceed fio's by more than the bucket resolution.
    Holds in any lane; the two-sided match needs real timing (next test)."""
    for rw, hist, other, ios, p50, p99 in unlimited_runs(
        bpf_sampler, kubelet_root, disk, run_in_cgroup
    ):
        # Every O_DIRECT 4k IO is one request, timed at most once (other direction: nothing);
        # a rare few untimed by design (see the next test): 22 of 3,000 seen once, with other
        # jobs on the machine's two CPUs.
        assert ios - max(2, ios // 100) <= hist.count <= ios, (rw, hist.count, ios)
        assert other.count == 0, (rw, other)
        ours50, ours99 = hist.quantile(0.5), hist.quantile(0.99)
        assert p50 is not None and p99 is not None
        assert ours50 is not None and 0 < ours50 <= 2 * p50, (rw, ours50, p50, hist.slots)
        assert ours99 is not None and 0 < ours99 <= 2 * p99, (rw, ours99, p99, hist.slots)
        # The sum is real time, not bucket bounds.
        mean = hist.sum_ns / hist.count / 1e9
        assert 0 < mean < 2 * p99, (mean, p99)


# Under emulation fio's clat is mostly the emulated CPU's syscall and wake-up time, which
# the device never sees; on real hardware the two match within a bucket.
@pytest.mark.host_only
def test_unlimited_container_p50_p99_match_fio_clat(
    bpf_sampler: BpfSampler,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    for rw, hist, _other, _ios, p50, p99 in unlimited_runs(
        bpf_sampler, kubelet_root, disk, run_in_cgroup
    ):
        ours50, ours99 = hist.quantile(0.5), hist.quantile(0.99)
        assert within_factor_2(ours50, p50), (rw, ours50, p50, hist.slots)
        assert within_factor_2(ours99, p99), (rw, ours99, p99, hist.slots)


def test_limit_wait_is_not_device_latency(
    bpf_sampler: BpfSampler,
    cgroup_hierarchy: CgroupHierarchy,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    """Held at 20 write IOPS, writes wait in blk-throttle before they become requests
    (released in bursts per throttle slice: most pass at once, some wait ~100 ms): fio's
    clat tail and mean show the wait, the device histogram does not."""
    assert disk.mount is not None
    cg = kubelet_root.leaf("limited")
    target = Target.of(cg)
    backend = backend_for(cgroup_hierarchy.version)
    # 20 IOPS: each IO waits ~50 ms for the limit, an order of magnitude above the disk's
    # service time even for a loop disk in an emulated guest on a loaded host (3.3 ms seen).
    backend.write(cg, disk.device, IOLimits(wiops=20))
    assert backend.read(cg)[(disk.device.major, disk.device.minor)].wiops == 20
    before = bpf_sampler.read_latency([target])
    fio = fio_result(start_fio(run_in_cgroup, cg, disk.mount, "randwrite", number_ios=100))
    after = bpf_sampler.read_latency([target])
    hist = added(after, before, target)[disk.device].write
    assert fio.write_iops < 24, fio  # the limit held
    assert hist.count == fio.write_ios, (hist.count, fio.write_ios)
    # QD1: each IO's mean wait as the application saw it (>= 40 ms at <= 24 IOPS). Ours
    # (exact: the kernel's sum) leaves out at least half of the limit's 50 ms per IO. Not a
    # ratio: a loop disk shared with other IO on the host serves in 10+ ms at times (12.8 ms
    # seen beside a CI run), which says nothing about where the limit's wait went.
    fio_mean = fio.runtime_s / fio.write_ios
    ours_mean = hist.sum_ns / hist.count / 1e9
    assert fio_mean - ours_mean >= 0.5 / 20, (ours_mean, fio_mean, hist.slots)
    ours99 = hist.quantile(0.99)
    assert fio.write_clat_p99_s is not None and ours99 is not None
    # The limit's slice wait (~100 ms) is fio's tail; ours is the disk's (sub-ms on the host,
    # ~10 ms in the emulated v2 lane). The estimate is within a factor 2 of the true p99:
    # with the wait in it, it could not be below a third of fio's.
    assert ours99 < fio.write_clat_p99_s / 3, (ours99, fio, hist.slots)


def test_histogram_counts_match_kernel_io_counters(
    bpf_sampler: BpfSampler,
    cgroup_hierarchy: CgroupHierarchy,
    kubelet_root: KubeletRoot,
    disk: LoopDisk,
    run_in_cgroup: RunInCgroup,
) -> None:
    """The requests the sampler counted at issue = the cgroup's own IO counters (io.stat on
    v2, blkio.throttle.io_serviced on v1) for O_DIRECT 4k IO, where bios and requests are
    1:1; and the histogram timed all of them but a rare few. Untimed by design: the kernel
    refuses a hash-map update nested in another BPF program's update of the same map on the
    same CPU (-EBUSY, its guard against deadlock), so an issue probe run from interrupt
    context while a probe it interrupted holds the in-flight map's lock records no start
    time: the request is counted, not timed (1,198 of 1,200 seen once beside a CPU hog,
    2,978 of 3,000 once beside other jobs: up to 1 % allowed)."""
    assert disk.mount is not None
    cg = kubelet_root.leaf("counted")
    target = Target.of(cg)
    kernel = CgroupSampler(
        bpf_sampler.devices, cgroup_hierarchy.path, cgroup_hierarchy.version, RecordingLog()
    )
    k0 = kernel.read([target])[target][disk.device]  # arms v1 counting before any IO
    b0 = bpf_sampler.read([target])[target][disk.device]
    l0 = bpf_sampler.read_latency([target])
    procs = [
        start_fio(run_in_cgroup, cg, disk.mount, "randread", number_ios=1200),
        start_fio(run_in_cgroup, cg, disk.mount, "randwrite", number_ios=800),
    ]
    for proc in procs:
        fio_result(proc)
    k1 = kernel.read([target])[target][disk.device]
    lat = added(bpf_sampler.read_latency([target]), l0, target)[disk.device]
    b1 = bpf_sampler.read([target])[target][disk.device]
    counted = Counters(k1.rios - k0.rios, k1.wios - k0.wios)
    requests = Counters(b1.rios - b0.rios, b1.wios - b0.wios)
    assert counted.rios >= 1200 and counted.wios >= 800, counted
    assert (requests.rios, requests.wios) == (counted.rios, counted.wios), (requests, counted)
    for timed, issued in ((lat.read.count, requests.rios), (lat.write.count, requests.wios)):
        assert issued - max(2, issued // 100) <= timed <= issued, (lat, requests, counted)


def test_a_refused_completion_probe_leaves_counting_working(
    bpf_options: BpfOptions,
    cgroup_hierarchy: CgroupHierarchy,
    disk: LoopDisk,
    tmp_path: Path,
    kubelet_root: KubeletRoot,
    run_in_cgroup: RunInCgroup,
) -> None:
    """A verifier that refuses the completion probe (6.1's did, before the slot bound was
    made explicit) costs the latency, not the IO counts: the sampler says why."""
    source = bpf_options.source.read_text()
    marker = "    u64 rq_key = (u64)rq;\n    struct dg_start *start = dg_start.lookup(&rq_key);"
    assert marker in source
    broken = tmp_path / "diskguard_io.c"
    # A store through a null pointer: compiles, and every verifier refuses it.
    broken.write_text(source.replace(marker, "    *(volatile u64 *)0 = 1;\n" + marker, 1))
    log = RecordingLog()
    sampler = open_bpf_sampler(
        [disk.device],
        cgroup_hierarchy.path,
        cgroup_hierarchy.version,
        log,
        attrs.evolve(bpf_options, source=broken),
    )
    try:
        assert sampler.latency_problem is not None
        assert "refused" in sampler.latency_problem, sampler.latency_problem
        assert log.named("BPF latency probe refused")
        assert "block_rq_complete" not in sampler.info["attach"]
        cg = kubelet_root.leaf("counted-anyway")
        target = Target.of(cg)
        assert disk.mount is not None
        fio_result(start_fio(run_in_cgroup, cg, disk.mount, "randwrite", number_ios=100))
        assert sampler.read([target])[target][disk.device].wios == 100
        assert sampler.read_latency([target]) is None
    finally:
        sampler.close()
