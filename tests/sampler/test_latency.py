"""The latency histogram model (pure) and doctor's completion-probe check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import Device, Direction
from diskguard.sampler.base import Target
from diskguard.sampler.btf import VMLINUX_BTF
from diskguard.sampler.latency import (
    SLOTS,
    DeviceLatency,
    LatencyHistogram,
    latency_between,
    lower_bound_seconds,
    percentiles,
    upper_bound_seconds,
)
from diskguard.tools.doctor import Doctor, Status


def slot_of(us: int) -> int:
    """The kernel's slot for a time in whole microseconds (bpf_log2l(us) - 1, clamped)."""
    return min(max(us.bit_length(), 1) - 1, SLOTS - 1)


def hist_of(times_us: list[int]) -> LatencyHistogram:
    slots = [0] * SLOTS
    for us in times_us:
        slots[slot_of(us)] += 1
    return LatencyHistogram(tuple(slots), sum(times_us) * 1000)


def test_slot_bounds_are_powers_of_two_in_microseconds() -> None:
    assert lower_bound_seconds(0) == 0 and upper_bound_seconds(0) == 2e-6
    assert lower_bound_seconds(5) == 32e-6 and upper_bound_seconds(5) == 64e-6
    assert upper_bound_seconds(SLOTS - 1) == math.inf
    for us in (0, 1, 2, 3, 4, 63, 64, 100, 1_000_000):
        s = slot_of(us)
        assert lower_bound_seconds(s) <= us / 1e6 < upper_bound_seconds(s), us


def test_wrong_slot_count_is_refused() -> None:
    with pytest.raises(ValueError, match="26 slots"):
        LatencyHistogram((1, 2, 3))


def test_empty_histogram_has_no_quantile_not_zero() -> None:
    assert LatencyHistogram().quantile(0.5) is None
    assert percentiles(DeviceLatency()) == dict.fromkeys(
        ("read_p50_seconds", "read_p99_seconds", "write_p50_seconds", "write_p99_seconds")
    )
    with pytest.raises(ValueError):
        LatencyHistogram().quantile(1.5)


@given(st.lists(st.integers(min_value=2, max_value=10_000_000), min_size=1, max_size=300))
def test_quantile_is_within_a_factor_two_of_the_true_value(times_us: list[int]) -> None:
    hist = hist_of(times_us)
    ordered = sorted(times_us)
    for q in (0.5, 0.9, 0.99):
        true = ordered[max(math.ceil(q * len(ordered)) - 1, 0)] / 1e6
        est = hist.quantile(q)
        assert est is not None
        assert true / 2 <= est <= true * 2, (q, true, est)


def test_open_ended_slot_reports_its_lower_bound() -> None:
    hist = hist_of([60_000_000])  # a minute: past the last bounded slot
    assert hist.quantile(0.99) == lower_bound_seconds(SLOTS - 1)


def test_cumulative_buckets_end_with_inf_and_the_count() -> None:
    hist = hist_of([1, 5, 5, 100, 3_000])
    buckets = hist.cumulative()
    assert len(buckets) == SLOTS
    assert buckets[-1] == (math.inf, 5)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert buckets[0] == (2e-6, 1)


def test_since_subtracts_and_survives_an_evicted_entry() -> None:
    old, new = hist_of([10, 20]), hist_of([10, 20, 30, 400])
    assert new.since(old) == hist_of([30, 400])
    # Entry evicted from the LRU map and recreated: counts restart below the old ones.
    restarted = hist_of([7])
    assert restarted.since(new) == restarted


def test_latency_between_snapshots() -> None:
    t1, t2 = Target(101, Path("/sys/fs/cgroup/a")), Target(102, Path("/sys/fs/cgroup/b"))
    dev = Device(7, 0)
    old = {t1: {dev: DeviceLatency(hist_of([10]), hist_of([]))}}
    new = {
        t1: {dev: DeviceLatency(hist_of([10, 50]), hist_of([900]))},
        t2: {dev: DeviceLatency(hist_of([3]), hist_of([]))},
    }
    out = latency_between(old, new)
    assert out[t1][dev].read == hist_of([50]) and out[t1][dev].write == hist_of([900])
    assert out[t2][dev] == new[t2][dev]  # no baseline: all of it is new
    assert out[t1][dev].get(Direction.WRITE) == hist_of([900])
    assert latency_between(None, new) == new


def test_doctor_says_when_the_completion_probe_is_unavailable(tmp_path: Path) -> None:
    doc = Doctor(env={}, btf_path=tmp_path / "missing")
    doc._latency()
    [finding] = doc.findings
    assert finding.status is Status.WARN and "unavailable" in finding.detail
    broken = tmp_path / "vmlinux"
    broken.write_bytes(b"\x00" * 64)
    doc = Doctor(env={}, btf_path=broken)
    doc._latency()
    assert doc.findings[0].status is Status.WARN


@pytest.mark.skipif(not VMLINUX_BTF.exists(), reason="needs kernel BTF")
def test_doctor_finds_the_completion_probe_in_this_kernels_btf() -> None:
    doc = Doctor(env={})
    doc._latency()
    [finding] = doc.findings
    assert finding.status is Status.OK, finding.detail
    assert "block_rq_complete" in finding.detail
