"""Saturation: how much of its limit a container uses, and when to tell its owner.

Per direction, the observed rate divided by the limit the kernel holds, for each unit that
has a limit (IOPS, bytes/s), and the higher of the two: a container at either limit is held
back. The rates must be counted as blk-throttle counts them — bios before merging — or
merged sequential IO at its IOPS limit would read far below 1 (the agent feeds bio-level
counts from the cgroup's own counters).

A container saturated (>= SATURATED) for `intervals` consecutive sampling intervals gets
one IOLimitSaturated Event; another only after it has been below for as many intervals and
`cooldown` has passed since the last. Pure; times are the caller's clock in seconds.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

import attrs

from diskguard.model import ContainerKey, Device, Direction, IOLimits, LimitField, LimitUnit, Rates

SATURATED = 0.95


@attrs.frozen
class DirectionSaturation:
    """One container's direction on one device."""

    ratio: float  # observed / limit, the higher of the limited units
    saturated_seconds: float  # cumulative seconds at >= SATURATED


# Per container, device and direction (those with a limit and a rate).
Saturation = Mapping[ContainerKey, Mapping[Device, Mapping[Direction, DirectionSaturation]]]


def saturation(rates: Rates, limits: IOLimits) -> dict[Direction, float]:
    """Per direction with a limit: the highest rate/limit among its limited units."""
    out: dict[Direction, float] = {}
    for field in LimitField:
        limit = limits.get(field)
        if limit <= 0:
            continue
        ratio = rates.get(field) / limit
        if ratio > out.get(field.direction, -1.0):
            out[field.direction] = ratio
    return out


def busiest_unit(rates: Rates, limits: IOLimits, direction: Direction) -> LimitField | None:
    """The limited field of `direction` closest to (or past) its limit."""
    fields = [f for f in LimitField if f.direction is direction and limits.get(f) > 0]
    return max(fields, key=lambda f: rates.get(f) / limits.get(f), default=None)


def unit_words(field: LimitField, value: float) -> str:
    if field.unit is LimitUnit.IOPS:
        return f"{value:,.0f} IOPS"
    return f"{value / 2**20:,.1f} MiB/s"


@attrs.define
class _Episode:
    saturated_for: int = 0  # consecutive saturated intervals
    calm_for: int = 0  # consecutive unsaturated intervals since the last Event
    announced: bool = False  # an Event went out for the current episode
    last_event: float | None = None


class SaturationEvents:
    """When each container's owner hears that its limit holds it back."""

    def __init__(self, intervals: int, cooldown: float) -> None:
        self.intervals = intervals  # 0: no Events
        self.cooldown = cooldown
        self._state: dict[Hashable, _Episode] = {}

    def update(self, key: Hashable, saturated: bool, now: float) -> bool:
        """One interval of `key`; True when an Event is due now."""
        if self.intervals <= 0 or (not saturated and key not in self._state):
            return False  # nothing to remember of a container never saturated
        state = self._state.setdefault(key, _Episode())
        if not saturated:
            state.saturated_for = 0
            state.calm_for += 1
            if state.calm_for >= self.intervals:
                state.announced = False  # the episode is over
                if state.last_event is None or now - state.last_event >= self.cooldown:
                    del self._state[key]  # nothing left to hold back: forget it
            return False
        state.calm_for = 0
        state.saturated_for += 1
        if state.announced or state.saturated_for < self.intervals:
            return False
        if state.last_event is not None and now - state.last_event < self.cooldown:
            return False
        state.announced = True
        state.last_event = now
        return True

    def forget(self, keep: Iterable[Hashable]) -> None:
        """Drop the containers that are gone (bounded by the containers on the node)."""
        alive = set(keep)
        for key in set(self._state) - alive:
            del self._state[key]
