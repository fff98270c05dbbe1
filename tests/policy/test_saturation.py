"""Saturation: the fraction of its limit a container uses, and when its owner hears of it."""

from __future__ import annotations

from diskguard.model import Direction, IOLimits, LimitField, Rates
from diskguard.policy.saturation import SaturationEvents, busiest_unit, saturation


def test_the_higher_of_the_limited_units_per_direction() -> None:
    limits = IOLimits(riops=1000, wiops=200, wbps=10 * 2**20)
    rates = Rates(riops=100.0, wiops=50.0, wbps=9.5 * 2**20, rbps=5e9)
    got = saturation(rates, limits)
    # read: only IOPS is limited (bytes/s is not, however high); write: bytes/s is closer.
    assert got == {Direction.READ: 0.1, Direction.WRITE: 0.95}
    assert busiest_unit(rates, limits, Direction.WRITE) is LimitField.WBPS
    assert saturation(rates, IOLimits()) == {}  # unlimited: no saturation at all


def test_one_event_per_episode_after_the_intervals() -> None:
    events = SaturationEvents(intervals=3, cooldown=0.0)
    said = [events.update("c", True, float(t)) for t in range(6)]
    assert said == [False, False, True, False, False, False]
    # Below for fewer intervals than it takes: still the same episode.
    assert not any(events.update("c", s, 6.0 + t) for t, s in enumerate([False, False, True]))
    assert [events.update("c", True, 9.0 + t) for t in range(3)] == [False, False, False]
    # Below for a whole run of intervals ends it; the next saturation is a new one.
    for t in range(3):
        events.update("c", False, 12.0 + t)
    assert [events.update("c", True, 15.0 + t) for t in range(3)] == [False, False, True]


def test_the_cooldown_holds_back_a_new_episode_until_it_has_passed() -> None:
    events = SaturationEvents(intervals=1, cooldown=100.0)
    assert events.update("c", True, 0.0)
    events.update("c", False, 1.0)
    assert not events.update("c", True, 2.0)  # a new episode, within the cooldown
    assert not events.update("c", True, 50.0)
    assert events.update("c", True, 100.0)  # still saturated when the cooldown ends


def test_no_events_when_disabled_and_gone_containers_are_forgotten() -> None:
    off = SaturationEvents(intervals=0, cooldown=0.0)
    assert not any(off.update("c", True, float(t)) for t in range(100))
    events = SaturationEvents(intervals=2, cooldown=0.0)
    events.update("gone", True, 0.0)
    events.forget(["kept"])
    assert not events.update("gone", True, 1.0)  # starts over: one interval, not two
