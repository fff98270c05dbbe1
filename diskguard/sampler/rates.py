"""Turn successive cumulative counter snapshots into per-interval rates. Pure; clock injected."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

import attrs

from diskguard.model import Counters, Device, Rates
from diskguard.sampler.base import Target

Clock = Callable[[], float]


@attrs.frozen
class RateSample:
    """Rates over one interval ending at `at` (clock seconds) and lasting `interval` s: from
    the sampler's counters (RateTracker) or from the kubelet's cAdvisor metrics."""

    at: float
    interval: float
    rates: Rates


def counters_reset(old: Counters, new: Counters) -> bool:
    return (
        new.rios < old.rios
        or new.wios < old.wios
        or new.rbytes < old.rbytes
        or new.wbytes < old.wbytes
    )


_IDLE = Rates()


def rates_between(old: Counters, new: Counters, seconds: float) -> Rates:
    """Rates from `old` to `new`; a counter that went backwards restarted from zero."""
    if seconds <= 0:
        raise ValueError("interval must be positive")
    if new == old:  # an idle container, most of them most of the time
        return _IDLE
    # After a restart (cgroup recreated, BPF map entry evicted) everything counted so far
    # happened since the restart, which lies inside this interval: a lower bound, never
    # a negative rate.
    base = Counters() if counters_reset(old, new) else old
    return Rates(
        riops=(new.rios - base.rios) / seconds,
        wiops=(new.wios - base.wios) / seconds,
        rbps=(new.rbytes - base.rbytes) / seconds,
        wbps=(new.wbytes - base.wbytes) / seconds,
    )


@attrs.define
class _Series:
    at: float
    counters: dict[Device, Counters]
    history: dict[Device, deque[RateSample]]
    interval: float = 0.0  # the seconds the last rates were measured over


class RateTracker:
    """Keeps the last snapshot and a bounded rate history per target and device.

    Series are keyed by Target, i.e. by (cgroup id, path): a cgroup id reused by a new
    directory starts a new series. A target missing from a snapshot is forgotten (its
    container is gone); if it comes back it starts over with a fresh baseline.
    """

    def __init__(self, history: int = 60, clock: Clock = time.monotonic) -> None:
        if history < 1:
            raise ValueError("history must keep at least one interval")
        self._history_len = history
        self._clock = clock
        self._series: dict[Target, _Series] = {}

    def update(
        self, snapshot: Mapping[Target, Mapping[Device, Counters]]
    ) -> dict[Target, dict[Device, Rates]]:
        """Record a snapshot taken now; return the rates since the previous one.

        Targets seen for the first time (or whose clock did not advance) get no rates yet.
        """
        now = self._clock()
        out: dict[Target, dict[Device, Rates]] = {}
        for target, counters in snapshot.items():
            series = self._series.get(target)
            if series is None:
                self._series[target] = _Series(now, dict(counters), {})
                continue
            elapsed = now - series.at
            if elapsed <= 0:
                continue  # keep the older baseline; the next call measures a longer interval
            rates: dict[Device, Rates] = {}
            for device, current in counters.items():
                previous = series.counters.get(device)
                if previous is None:
                    continue  # device new to this target: this snapshot is its baseline
                r = rates_between(previous, current, elapsed)
                rates[device] = r
                series.history.setdefault(device, deque(maxlen=self._history_len)).append(
                    RateSample(at=now, interval=elapsed, rates=r)
                )
            for stale in series.history.keys() - counters.keys():
                del series.history[stale]
            series.at = now
            series.interval = elapsed
            series.counters = dict(counters)
            out[target] = rates
        for gone in self._series.keys() - snapshot.keys():
            del self._series[gone]
        return out

    def history(self, target: Target) -> dict[Device, tuple[RateSample, ...]]:
        """Oldest first, at most `history` intervals per device."""
        series = self._series.get(target)
        if series is None:
            return {}
        return {device: tuple(samples) for device, samples in series.history.items()}

    def interval(self, target: Target) -> float | None:
        """The seconds the target's latest rates were measured over (None: no rates yet)."""
        series = self._series.get(target)
        return series.interval if series is not None and series.interval > 0 else None

    def latest(self, target: Target) -> dict[Device, RateSample]:
        series = self._series.get(target)
        if series is None:
            return {}
        return {device: samples[-1] for device, samples in series.history.items() if samples}

    @property
    def targets(self) -> frozenset[Target]:
        return frozenset(self._series)
