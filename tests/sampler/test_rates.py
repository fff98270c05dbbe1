"""RateTracker: counters → rates with a fake clock (pure)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import Counters, Device, Rates
from diskguard.sampler.base import Target
from diskguard.sampler.rates import RateTracker, rates_between

DEV = Device(7, 0, "loop0")
DEV2 = Device(254, 0, "vda")
A = Target(100, Path("/sys/fs/cgroup/blkio/kubepods/pod1/a"))
B = Target(200, Path("/sys/fs/cgroup/blkio/kubepods/pod1/b"))


@attrs.define
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def c(rios: int = 0, wios: int = 0, rbytes: int = 0, wbytes: int = 0) -> Counters:
    return Counters(rios=rios, wios=wios, rbytes=rbytes, wbytes=wbytes)


def test_first_snapshot_is_a_baseline_then_rates_per_second(clock: FakeClock) -> None:
    t = RateTracker(clock=clock)
    assert t.update({A: {DEV: c(10, 20, 4096, 8192)}}) == {}
    clock.tick(2)
    out = t.update({A: {DEV: c(110, 60, 4096 + 409600, 8192)}})
    assert out == {A: {DEV: Rates(riops=50.0, wiops=20.0, rbps=204800.0, wbps=0.0)}}
    sample = t.latest(A)[DEV]
    assert (sample.at, sample.interval) == (1002.0, 2.0)


def test_counter_decrease_is_a_restart_not_a_negative_rate(clock: FakeClock) -> None:
    t = RateTracker(clock=clock)
    t.update({A: {DEV: c(1000, 1000, 10**6, 10**6)}})
    clock.tick(1)
    out = t.update({A: {DEV: c(30, 1500, 30 * 4096, 2 * 10**6)}})
    # One field went back: everything counted since the restart happened in this interval.
    assert out[A][DEV] == Rates(riops=30.0, wiops=1500.0, rbps=30 * 4096.0, wbps=2e6)
    clock.tick(1)
    assert t.update({A: {DEV: c(40, 1500, 40 * 4096, 2 * 10**6)}})[A][DEV].riops == 10.0


def test_targets_appear_and_disappear(clock: FakeClock) -> None:
    t = RateTracker(clock=clock)
    t.update({A: {DEV: c(0)}})
    clock.tick(1)
    out = t.update({A: {DEV: c(5)}, B: {DEV: c(100)}})
    assert set(out) == {A}  # B is new: baseline only
    clock.tick(1)
    out = t.update({B: {DEV: c(150)}})
    assert out == {B: {DEV: Rates(riops=50.0)}}
    assert t.targets == {B}
    assert t.history(A) == {}
    clock.tick(1)
    assert t.update({A: {DEV: c(500)}, B: {DEV: c(150)}}).keys() == {B}  # A starts over


def test_reused_cgroup_id_is_a_new_series(clock: FakeClock) -> None:
    t = RateTracker(clock=clock)
    t.update({A: {DEV: c(10_000)}})
    clock.tick(1)
    reused = Target(A.cgroup_id, A.path.with_name("other"))
    # Fewer IOs than before would look like a reset, more like a burst: neither is right.
    assert t.update({reused: {DEV: c(20_000)}}) == {}
    clock.tick(1)
    assert t.update({reused: {DEV: c(20_100)}})[reused][DEV].riops == 100.0


def test_history_is_bounded_and_ordered(clock: FakeClock) -> None:
    t = RateTracker(history=3, clock=clock)
    for i in range(6):
        t.update({A: {DEV: c(rios=10 * i * i)}})
        clock.tick(1)
    hist = t.history(A)[DEV]
    assert [s.rates.riops for s in hist] == [50.0, 70.0, 90.0]
    assert [s.at for s in hist] == [1003.0, 1004.0, 1005.0]


def test_clock_not_advancing_keeps_the_baseline(clock: FakeClock) -> None:
    t = RateTracker(clock=clock)
    t.update({A: {DEV: c(0)}})
    assert t.update({A: {DEV: c(50)}}) == {}
    clock.tick(2)
    assert t.update({A: {DEV: c(100)}})[A][DEV].riops == 50.0


def test_devices_appearing_and_disappearing(clock: FakeClock) -> None:
    t = RateTracker(clock=clock)
    t.update({A: {DEV: c(0)}})
    clock.tick(1)
    out = t.update({A: {DEV: c(10), DEV2: c(500)}})
    assert set(out[A]) == {DEV}
    clock.tick(1)
    out = t.update({A: {DEV2: c(600)}})
    assert out[A] == {DEV2: Rates(riops=100.0)}
    assert set(t.history(A)) == {DEV2}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateTracker(history=0)
    with pytest.raises(ValueError):
        rates_between(c(), c(1), 0)


counters = st.builds(
    Counters,
    rios=st.integers(0, 10**9),
    wios=st.integers(0, 10**9),
    rbytes=st.integers(0, 10**15),
    wbytes=st.integers(0, 10**15),
)


@given(snapshots=st.lists(st.tuples(st.floats(0.0, 30.0), counters), min_size=1, max_size=30))
def test_rates_are_never_negative_and_integrate_to_the_increase(
    snapshots: list[tuple[float, Counters]],
) -> None:
    clock = FakeClock()
    t = RateTracker(history=100, clock=clock)
    integrated = 0.0
    resets = False
    prev: Counters | None = None
    for gap, snap in snapshots:
        clock.tick(gap)
        out = t.update({A: {DEV: snap}})
        if A in out:
            rates = out[A][DEV]
            assert min(rates.riops, rates.wiops, rates.rbps, rates.wbps) >= 0
            integrated += rates.riops * t.latest(A)[DEV].interval
            assert prev is not None
            resets |= snap.rios < prev.rios or snap.wios < prev.wios
            resets |= snap.rbytes < prev.rbytes or snap.wbytes < prev.wbytes
        if A in out or prev is None:
            prev = snap
    if not resets and prev is not None:
        assert integrated == pytest.approx(prev.rios - snapshots[0][1].rios, abs=1e-3)
