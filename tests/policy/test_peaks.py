"""Observed capacity: the highest rate sustained over a whole window, per disk and field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import Device, Rates
from diskguard.policy.peaks import SustainedPeaks

DISK = Device(259, 0, "nvme0n1")


def feed(peaks: SustainedPeaks, values: list[float], *, interval: float = 1.0) -> None:
    for i, v in enumerate(values):
        peaks.add(DISK, (i + 1) * interval, interval, Rates(wiops=v, rbps=v * 4096))


def test_nothing_counts_before_a_whole_window() -> None:
    peaks = SustainedPeaks(window=5.0)
    feed(peaks, [900.0] * 4)
    assert peaks.peaks()[DISK] == Rates()
    feed(peaks, [900.0] * 5)
    assert peaks.peaks()[DISK].wiops == 900.0


def test_a_burst_shorter_than_the_window_is_not_capacity() -> None:
    peaks = SustainedPeaks(window=5.0)
    feed(peaks, [100.0] * 5 + [5000.0] * 4 + [100.0] * 5)
    assert peaks.peaks()[DISK].wiops == 100.0
    assert peaks.peaks()[DISK].rbps == 100.0 * 4096


def test_the_peak_is_the_highest_sustained_level_and_never_falls() -> None:
    peaks = SustainedPeaks(window=3.0)
    feed(peaks, [100.0] * 3 + [700.0, 800.0, 750.0] + [10.0] * 10)
    assert peaks.peaks()[DISK].wiops == 700.0  # the lowest of the best 3-second stretch


def test_disks_that_are_no_longer_data_disks_are_forgotten() -> None:
    peaks = SustainedPeaks(window=1.0)
    other = Device(8, 0, "sda")
    peaks.add(other, 1.0, 1.0, Rates(riops=5.0))
    feed(peaks, [1.0])
    peaks.forget({DISK})
    assert set(peaks.peaks()) == {DISK}


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=10),
)
def test_the_peak_equals_the_best_window_minimum(values: list[float], window: int) -> None:
    peaks = SustainedPeaks(window=float(window))
    feed(peaks, values)
    windows = [values[i : i + window] for i in range(len(values) - window + 1)]
    want = max((min(w) for w in windows), default=0.0)
    assert peaks.peaks()[DISK].wiops == want
