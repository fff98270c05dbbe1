"""Observed capacity: the highest rate each data disk has sustained, per limit field.

"Sustained" is the lowest rate over a whole window (CAPACITY_OBSERVED_WINDOW): a burst
shorter than the window does not count. The peak is the highest such since the agent
started. It is reported (/status, metrics) beside the measured capacity, never used to
resolve limits: it is observed under the limits themselves and would feed back on itself.

Pure; times are the caller's clock in seconds.
"""

from __future__ import annotations

from collections import deque

import attrs

from diskguard.model import Device, LimitField, Rates


@attrs.define
class _Disk:
    # The samples that cover the window: (end, length), oldest first.
    samples: deque[tuple[float, float]] = attrs.field(factory=deque)
    # Per field, the window's minimum in O(1): (end, value) with values increasing from
    # the front (a sample that is beaten by a later, lower one can never be the minimum).
    lows: dict[LimitField, deque[tuple[float, float]]] = attrs.field(
        factory=lambda: {f: deque() for f in LimitField}
    )
    peak: dict[LimitField, float] = attrs.field(factory=dict)


class SustainedPeaks:
    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError("the window must be positive")
        self.window = window
        self._disks: dict[Device, _Disk] = {}

    def add(self, device: Device, at: float, interval: float, rates: Rates) -> None:
        """One interval of the disk's rates, ending at `at` and lasting `interval` s."""
        disk = self._disks.setdefault(device, _Disk())
        disk.samples.append((at, interval))
        for field, lows in disk.lows.items():
            value = rates.get(field)
            while lows and lows[-1][1] >= value:
                lows.pop()
            lows.append((at, value))
        start = at - self.window
        # Keep exactly the samples that cover the window (the oldest may start before it).
        while len(disk.samples) > 1 and disk.samples[1][0] - disk.samples[1][1] <= start:
            disk.samples.popleft()
        first_end, first_length = disk.samples[0]
        for lows in disk.lows.values():
            while lows[0][0] < first_end:
                lows.popleft()
        if first_end - first_length > start + 1e-9:
            return  # not a whole window of history yet
        for field, lows in disk.lows.items():
            sustained = lows[0][1]
            if sustained > disk.peak.get(field, 0.0):
                disk.peak[field] = sustained

    def forget(self, keep: set[Device]) -> None:
        """Drop disks that are no longer data disks."""
        for device in set(self._disks) - keep:
            del self._disks[device]

    def peaks(self) -> dict[Device, Rates]:
        """Per disk, the highest sustained rate of each field (0 until a window is full)."""
        return {
            device: Rates(**{f.value: disk.peak.get(f, 0.0) for f in LimitField})
            for device, disk in self._disks.items()
        }
