"""Graded smart limits (SMART_LIMIT_TIERS): parsing, the strictest triggered tier, escalation,
sticky removal; with a controlled clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.config import parse_seconds
from diskguard.model import IOLimits, LimitUnit, Rates
from diskguard.policy.smart import AutoLimit, Sample, SmartAction, SmartSettings
from diskguard.policy.tiers import (
    Amount,
    Capacity,
    Of,
    Removal,
    Tier,
    TierError,
    judge,
    parse_tiers,
    single_tier,
    strictest,
    tighter,
)
from diskguard.testing.smart_oracle import decide

STATIC = IOLimits(riops=500, wiops=500)
seconds = parse_seconds


def series(values: list[float], *, start: float = 0.0) -> list[Sample]:
    """One write-IOPS sample per second: values[i] is the rate over (start+i, start+i+1]."""
    return [
        Sample.of(at=start + i + 1, interval=1.0, rates=Rates(wiops=v))
        for i, v in enumerate(values)
    ]


def test_the_readme_example_parses_shortest_window_first() -> None:
    tiers = parse_tiers(
        "window=60m,iops=50%,limit-iops=25%cap; window=15m,iops=80%,bps=80%,limit=50%obs",
        seconds,
    )
    assert [t.name for t in tiers] == ["15m", "60m"]
    short, long = tiers
    assert short.window == 900 and long.window == 3600
    assert short.iops == short.bps == Amount(0.8, Of.REFERENCE)
    assert short.limit_iops == short.limit_bps == Amount(0.5, Of.OBSERVED)
    assert long.bps is None and long.limit_bps is None
    assert long.limit_iops == Amount(0.25, Of.CAPACITY)
    absolute = parse_tiers("name=hot,window=90s,bps=100Mi,limit-bps=20Mi", seconds)[0]
    assert absolute.bps == Amount(100 * 2**20) and absolute.limit_bps == Amount(20 * 2**20)
    assert absolute.name == "hot" and str(absolute.limit_bps) == str(20 * 2**20)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "no tier"),
        ("iops=80%,limit=50%obs", "window= is required"),
        ("window=soon,iops=80%,limit=50%obs", "not a duration"),
        ("window=1m,iops=80%,limit=50%obs,colour=red", "unknown key 'colour'"),
        ("window=1m,iops=80%", "no limit"),
        ("window=1m,limit=50%obs", "no threshold"),
        ("window=1m,iops=80%obs,limit=50%obs", "for limits only"),
        ("window=1m,iops=180%,limit=50%obs", "(0, 100]"),
        ("window=1m,iops=lots%,limit=50%obs", "percentage"),
        ("window=1m,iops=-5,limit=50%obs", "iops="),
        ("window=1m,iops=80%,limit=50%obs,limit-iops=10", "exclude each other"),
        ("window=1m,iops=80%,iops=70%,limit=50%obs", "given twice"),
        ("window=1m,iops=80%,limit=5%obs,junk", "key=value"),
        ("window=1m,iops=80%,limit=1%obs;window=1m,iops=70%,limit=1%obs", "same name"),
        (";".join(f"name=t{i},window={i + 1}m,iops=80%,limit=5%obs" for i in range(9)), "at most"),
        ("window=1m,iops=80%,limit=1%obs" + " " * 3000, "longer than"),
        ("name=Bad_Name,window=1m,iops=80%,limit=1%obs", "DNS label"),
        ("name=default,window=1m,iops=80%,limit=1%obs", "single window's"),
        ("window=1m,iops=80%,limit=500", "must be relative"),
        ("window=1m,iops=80%,limit-bps=50%obs", "same unit"),
        ("window=25h,iops=80%,limit=50%obs", "longer than 24h"),
        ("window=1e300,iops=80%,limit=50%obs", "longer than 24h"),
    ],
)
def test_bad_tiers_say_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(TierError, match=None) as err:
        parse_tiers(text, seconds)
    assert said in str(err.value), str(err.value)


SHORT = Tier("short", 10.0, iops=Amount(0.8, Of.REFERENCE), limit_iops=Amount(0.5, Of.OBSERVED))
LONG = Tier("long", 30.0, iops=Amount(0.6, Of.REFERENCE), limit_iops=Amount(0.25, Of.CAPACITY))


def test_one_tier_is_todays_single_window() -> None:
    verdict = judge(
        series([480.0] * 10), 10.0, STATIC, Capacity(), AutoLimit(), [SHORT],
        remove_threshold=0.5,
    )  # fmt: skip
    assert verdict.limit == AutoLimit(iops=240) and verdict.tier == "short"
    [trigger] = verdict.triggers
    assert (trigger.observed, trigger.threshold) == (480.0, 400)
    burst = judge(
        series([100.0] * 5 + [480.0] * 5), 10.0, STATIC, Capacity(), AutoLimit(), [SHORT],
        remove_threshold=0.5,
    )  # fmt: skip
    assert burst.limit == AutoLimit() and not burst.triggers


def test_the_strictest_triggered_tier_is_in_force() -> None:
    samples = series([480.0] * 30)
    both = judge(
        samples, 30.0, STATIC, Capacity(iops=800), AutoLimit(), [SHORT, LONG],
        remove_threshold=0.5,
    )  # fmt: skip
    assert both.limit == AutoLimit(iops=200) and both.tier == "long"  # 25% of 800 < 240
    assert {t.tier for t in both.triggers} == {"short", "long"}
    # Without a known capacity the long tier cannot set its limit: the short one's holds.
    unknown = judge(
        samples, 30.0, STATIC, Capacity(), AutoLimit(), [SHORT, LONG], remove_threshold=0.5
    )
    assert unknown.limit == AutoLimit(iops=240) and unknown.tier == "short"


def test_a_measured_capacity_is_per_direction_and_takes_the_declared_ones_place() -> None:
    """`diskguard profile` measures reads and writes apart: a capacity-relative amount is
    of the direction it judges, and a measured figure wins over the declared one."""
    tier = Tier("cap", 10.0, iops=Amount(0.8, Of.CAPACITY), limit_iops=Amount(0.5, Of.CAPACITY))
    measured = Capacity(iops=10_000, measured=IOLimits(riops=2000, wiops=500, rbps=1, wbps=1))
    writes = judge(
        series([450.0] * 10), 10.0, IOLimits(), measured, AutoLimit(), [tier],
        remove_threshold=0.5,
    )  # fmt: skip
    # 450 write IOPS >= 80 % of the disk's 500: limited to half of the write capacity.
    assert writes.limit == AutoLimit(iops=250) and writes.triggers[0].threshold == 400
    reads = [Sample.of(at=i + 1, interval=1.0, rates=Rates(riops=450.0)) for i in range(10)]
    calm = judge(reads, 10.0, IOLimits(), measured, AutoLimit(), [tier], remove_threshold=0.5)
    assert calm.limit == AutoLimit() and not calm.triggers  # 450 < 80 % of 2000
    declared = judge(
        series([450.0] * 10), 10.0, IOLimits(), Capacity(iops=10_000), AutoLimit(), [tier],
        remove_threshold=0.5,
    )  # fmt: skip
    assert declared.limit == AutoLimit()  # 450 < 80 % of the declared 10,000


def test_a_computed_limit_never_goes_below_the_floor() -> None:
    verdict = judge(
        series([480.0] * 10), 10.0, STATIC, Capacity(), AutoLimit(),
        [Tier("t", 10.0, iops=Amount(0.8, Of.REFERENCE), limit_iops=Amount(0.01, Of.OBSERVED))],
        remove_threshold=0.5, minimum=AutoLimit(iops=10),
    )  # fmt: skip
    assert verdict.limit == AutoLimit(iops=10)


def test_escalation_only_tightens() -> None:
    assert tighter(AutoLimit(iops=200), AutoLimit(iops=300))
    assert not tighter(AutoLimit(iops=400), AutoLimit(iops=300))
    assert tighter(AutoLimit(bps=1), AutoLimit(iops=300))  # a unit that had none
    assert not tighter(AutoLimit(), AutoLimit(iops=300))
    assert strictest([AutoLimit(300, 0), AutoLimit(200, 5), AutoLimit()]) == AutoLimit(200, 5)


def test_removal_needs_every_full_window_calm_for_the_delay() -> None:
    current = AutoLimit(iops=240)
    quiet = series([50.0] * 30)
    calm = judge(quiet, 30.0, STATIC, Capacity(), current, [SHORT, LONG], remove_threshold=0.5)
    assert calm.calm and calm.judged
    # The long window still holds a busy stretch: not calm, however quiet the short one is.
    mixed = series([240.0] * 15 + [50.0] * 15)
    busy = judge(mixed, 30.0, STATIC, Capacity(), current, [SHORT, LONG], remove_threshold=0.5)
    assert not busy.calm
    # No full window yet: nothing is judged, so nothing is calm.
    young = judge(
        series([50.0] * 5), 5.0, STATIC, Capacity(), current, [SHORT], remove_threshold=0.5
    )
    assert not young.judged and not young.calm
    removal = Removal().update(True, 100.0)
    assert not removal.due(100.0 + 299, 300) and removal.due(100.0 + 300, 300)
    assert removal.update(True, 200.0).calm_since == 100.0  # stays calm since the start
    assert removal.update(False, 250.0) == Removal()  # any busy check starts over


@given(
    limit=st.integers(min_value=20, max_value=1000),
    noise=st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=30, max_size=30),
)
def test_a_container_running_at_its_automatic_limit_is_never_calm(
    limit: int, noise: list[float]
) -> None:
    """No flapping: held at its automatic limit (the kernel's ±5 %), a container stays
    limited; removal needs it well below (remove_threshold 0.5)."""
    samples = series([limit * (1 + n) for n in noise])
    verdict = judge(
        samples, 30.0, STATIC, Capacity(), AutoLimit(iops=limit), [SHORT, LONG],
        remove_threshold=0.5,
    )  # fmt: skip
    assert verdict.judged and not verdict.calm


@given(
    rates=st.lists(st.floats(min_value=0, max_value=2000), min_size=30, max_size=30),
    capacity=st.integers(min_value=0, max_value=5000),
)
def test_the_limit_in_force_is_the_lowest_of_the_triggered_tiers(
    rates: list[float], capacity: int
) -> None:
    tiers = [SHORT, LONG]
    samples = series(rates)
    together = judge(samples, 30.0, STATIC, Capacity(iops=capacity), AutoLimit(), tiers,
                     remove_threshold=0.5)  # fmt: skip
    alone = [
        judge(
            samples, 30.0, STATIC, Capacity(iops=capacity), AutoLimit(), [t], remove_threshold=0.5
        ).limit
        for t in tiers
    ]
    assert together.limit == strictest(alone)
    for trigger in together.triggers:
        assert trigger.observed >= trigger.threshold
    assert all(t.metric.unit is LimitUnit.IOPS for t in together.triggers)


@given(
    rates=st.lists(st.floats(min_value=0, max_value=1500), min_size=12, max_size=12),
    static=st.integers(min_value=0, max_value=1000),
    device=st.integers(min_value=0, max_value=3000),
    auto=st.sampled_from([0, 77]),
    current=st.sampled_from([AutoLimit(), AutoLimit(iops=200)]),
)
def test_the_single_window_tier_decides_as_the_single_window_mode(
    rates: list[float], static: int, device: int, auto: int, current: AutoLimit
) -> None:
    """SMART_LIMIT_TIERS unset keeps today's behaviour: the same trigger, the same automatic
    limit, the same lift, on any history."""
    settings = SmartSettings(window=10.0, device_iops=device, auto_iops=auto)
    limits = IOLimits(riops=static, wiops=static)
    samples = series(rates)
    old = decide(samples, 12.0, limits, current, settings, "c")
    new = judge(
        samples, 12.0, limits, Capacity(iops=device), current, [single_tier(settings)],
        remove_threshold=settings.remove_threshold,
        minimum=AutoLimit(settings.min_iops, settings.min_bps),
    )  # fmt: skip
    if current.active:
        assert (old.action is SmartAction.LIFT) == new.calm
    else:
        assert (old.action is SmartAction.APPLY) == bool(new.triggers)
        assert old.auto == new.limit


def test_no_limit_feeds_on_the_rates_an_automatic_limit_shaped() -> None:
    """Right after a limit of 50 % of the observed rate, the window still holds the rates
    from before it. The tier in force is judged for calm only, and no %obs limit tightens a
    unit that already has an automatic limit: two such tiers would take turns halving it
    (1000 -> 500 -> 250 -> ...). An absolute limit of another tier still tightens."""
    samples = series([2000.0] * 8 + [1000.0] * 2)
    current = AutoLimit(iops=1000)
    halving = [
        Tier("a", 10.0, iops=Amount(200), limit_iops=Amount(0.5, Of.OBSERVED)),
        Tier("b", 5.0, iops=Amount(200), limit_iops=Amount(0.5, Of.OBSERVED)),
    ]
    for in_force in ("a", "b", ""):
        again = judge(
            samples, 10.0, STATIC, Capacity(), current, halving, remove_threshold=0.5,
            in_force=in_force,
        )  # fmt: skip
        assert again.limit == AutoLimit(), in_force
    absolute = Tier("c", 10.0, iops=Amount(200), limit_iops=Amount(300))
    tightened = judge(
        samples, 10.0, STATIC, Capacity(), current, [*halving, absolute], remove_threshold=0.5,
        in_force="a",
    )  # fmt: skip
    assert tightened.limit == AutoLimit(iops=300) and tightened.iops_tier == "c"
    # A unit without an automatic limit yet may still get one from a %obs tier.
    bps = Tier("d", 10.0, bps=Amount(100), limit_bps=Amount(0.5, Of.OBSERVED))
    wbps = [Sample.of(at=i + 1.0, interval=1.0, rates=Rates(wbps=400.0)) for i in range(10)]
    new_unit = judge(wbps, 10.0, STATIC, Capacity(), current, [bps], remove_threshold=0.5)
    assert new_unit.limit == AutoLimit(bps=200) and new_unit.bps_tier == "d"


def test_a_percent_limit_is_of_the_static_limit_else_the_capacity() -> None:
    tier = Tier("p", 10.0, iops=Amount(0.8, Of.REFERENCE), limit_iops=Amount(0.5, Of.REFERENCE))
    busy = series([480.0] * 10)
    assert judge(busy, 10.0, STATIC, Capacity(), AutoLimit(), [tier],
                 remove_threshold=0.5).limit == AutoLimit(iops=250)  # fmt: skip
    unlimited = IOLimits()
    assert judge(busy, 10.0, unlimited, Capacity(iops=500), AutoLimit(), [tier],
                 remove_threshold=0.5).limit == AutoLimit(iops=250)  # fmt: skip
    floor = Tier("z", 10.0, iops=Amount(1), limit_iops=Amount(0.01, Of.OBSERVED))
    slow = series([10.0] * 10)
    assert judge(slow, 10.0, STATIC, Capacity(), AutoLimit(), [floor], remove_threshold=0.5,
                 minimum=AutoLimit()).limit == AutoLimit(iops=1)  # fmt: skip
