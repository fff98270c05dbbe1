"""Smart-limit decisions with a controlled clock: bursts, sustained load, exact threshold
edges, missing samples, counter resets (as zero-rate samples), hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import IOLimits, Rates
from diskguard.policy.smart import AutoLimit, Decision, Sample, SmartSettings, window_samples
from diskguard.testing.smart_oracle import decide, pod_decision

STATIC = IOLimits(riops=500, wiops=500)
S = SmartSettings(window=10.0)


def series(values: list[float], *, metric: str = "wiops", start: float = 0.0) -> list[Sample]:
    """One sample per second: values[i] is the rate over (start+i, start+i+1]."""
    return [
        Sample.of(at=start + i + 1, interval=1.0, rates=Rates(**{metric: v}))
        for i, v in enumerate(values)
    ]


def run(
    samples: list[Sample],
    now: float | None = None,
    current: AutoLimit = AutoLimit(),
    settings: SmartSettings = S,
    static: IOLimits = STATIC,
) -> Decision:
    return decide(samples, samples[-1].at if now is None else now, static, current, settings, "c")


def test_sustained_load_for_a_whole_window_triggers() -> None:
    d = run(series([480.0] * 10))
    assert d.action == "apply"
    assert d.auto == AutoLimit(iops=240, bps=0)  # half the lowest sustained rate
    assert [t.metric for t in d.triggers] == ["wiops"]
    assert "write IOPS stayed at or above 0.8 x 500 = 400 for 10s" in d.reason


def test_exact_threshold_triggers_and_just_below_does_not() -> None:
    assert run(series([400.0] * 10)).action == "apply"
    assert run(series([400.0] * 9 + [399.99])).action == "none"


def test_burst_shorter_than_the_window_never_triggers() -> None:
    samples = series([0.0] * 5 + [500.0] * 9)
    assert run(samples).action == "none"
    assert run(series([500.0] * 9)).action == "none"  # not a full window yet


def test_a_gap_in_the_samples_means_no_full_window() -> None:
    samples = series([480.0] * 12)
    del samples[5:8]  # three missing samples
    assert window_samples(samples, samples[-1].at, 10.0) is None
    assert run(samples).action == "none"


def test_stale_history_is_not_judged() -> None:
    samples = series([480.0] * 10)
    assert run(samples, now=samples[-1].at + 5).action == "none"


def test_a_counter_reset_sample_breaks_the_streak() -> None:
    # A reset shows up as one low-rate interval (the lower bound the tracker reports).
    assert run(series([480.0] * 5 + [3.0] + [480.0] * 4)).action == "none"


def test_unlimited_direction_uses_declared_capacity_or_is_not_judged() -> None:
    static = IOLimits(riops=500, wiops=0, rbps=0, wbps=0)
    heavy = series([9000.0] * 10)
    assert run(heavy, static=static).action == "none"
    with_capacity = SmartSettings(window=10.0, device_iops=10000)
    d = run(heavy, static=static, settings=with_capacity)
    assert d.action == "apply" and d.triggers[0].reference == 10000


def test_bps_is_judged_against_bps_limits_and_capacity() -> None:
    static = IOLimits(rbps=10 << 20)
    d = run(series([9.5 * 2**20] * 10, metric="rbps"), static=static)
    assert d.action == "apply"
    assert d.auto == AutoLimit(iops=0, bps=int(9.5 * 2**20 * 0.5))


def test_configured_auto_values_win_and_floor_applies() -> None:
    assert (
        run(series([480.0] * 10), settings=SmartSettings(window=10, auto_iops=77)).auto.iops == 77
    )
    low = IOLimits(wiops=12)
    assert run(series([12.0] * 10), static=low).auto.iops == 10  # floor, not 6


def test_lift_after_a_calm_window_only() -> None:
    current = AutoLimit(iops=240)
    assert run(series([230.0] * 10), current=current).action == "none"  # steady: stays
    assert run(series([100.0] * 10), current=current).action == "lift"  # < 0.5 x 240
    assert run(series([100.0] * 9 + [130.0]), current=current).action == "none"


@given(st.floats(min_value=0, max_value=1000), st.floats(min_value=0.1, max_value=1.0))
def test_no_flapping_under_a_steady_load(rate: float, fraction: float) -> None:
    """Whatever the steady load, after apply the (auto-limited) rate never lifts at once."""
    first = run(series([rate] * 10))
    if first.action != "apply":
        return
    limited_rate = min(rate, first.auto.iops)
    if limited_rate >= S.remove_threshold * first.auto.iops:
        assert run(series([limited_rate] * 10), current=first.auto).action == "none"


def test_pod_decision_applies_on_any_container_and_lifts_when_all_are_calm() -> None:
    apply = run(series([480.0] * 10))
    calm = Decision("lift", reason="calm")
    assert pod_decision({"a": apply, "b": Decision("none")}, AutoLimit()).action == "apply"
    auto = AutoLimit(iops=240)
    assert pod_decision({"a": calm, "b": Decision("none")}, auto).action == "none"
    assert pod_decision({"a": calm, "b": calm}, auto).action == "lift"
    assert pod_decision({}, auto).action == "none"


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0])
def test_window_coverage_with_other_intervals(interval: float) -> None:
    n = int(10 / interval)
    samples = [
        Sample.of(at=(i + 1) * interval, interval=interval, rates=Rates(wiops=450))
        for i in range(n)
    ]
    assert run(samples).action == "apply"
    assert run(samples[1:]).action == "none"


def test_buckets_summarise_raw_samples_and_reject_gaps() -> None:
    from diskguard.policy.smart import Bucket

    bucket = Bucket()
    for i, v in enumerate([450.0, 420.0, 480.0]):
        bucket.add(i + 1.0, 1.0, Rates(wiops=v))
    sample = bucket.close(1.0)
    assert sample is not None
    assert (sample.at, sample.interval) == (3.0, 3.0)
    assert sample.low.wiops == sample.high.wiops == pytest.approx(450.0)  # the mean
    gappy = Bucket()
    gappy.add(1.0, 1.0, Rates())
    gappy.add(5.0, 1.0, Rates())
    assert gappy.close(1.0) is None
    assert Bucket().close(1.0) is None


def test_buckets_smooth_the_kernels_slice_jitter() -> None:
    from diskguard.policy.smart import Bucket

    # Under a 500 IOPS limit, 0.25 s samples can alternate 350/550: each raw sample dips
    # below the threshold (400), the bucket mean (450) does not.
    raw = [
        Sample.of(0.25 * (i + 1), 0.25, Rates(wiops=350.0 if i % 2 else 550.0)) for i in range(40)
    ]
    assert run(raw).action == "none"
    buckets = []
    for start in range(0, 40, 2):
        b = Bucket()
        for smp in raw[start : start + 2]:
            b.add(smp.at, smp.interval, smp.low)
        closed = b.close(0.25)
        assert closed is not None
        buckets.append(closed)
    assert run(buckets).action == "apply"


def test_decisions_on_buckets_match_decisions_on_raw_samples() -> None:
    from diskguard.policy.smart import Bucket

    raw = series([450.0, 420.0, 480.0, 500.0, 410.0, 430.0, 440.0, 460.0, 470.0, 405.0])
    buckets = []
    for chunk in (raw[:5], raw[5:]):
        b = Bucket()
        for smp in chunk:
            b.add(smp.at, smp.interval, smp.low)
        closed = b.close(1.0)
        assert closed is not None
        buckets.append(closed)
    assert run(buckets).action == run(raw).action == "apply"
