"""Device service-time histograms (request issue -> completion) as the BPF program keeps them.

Pure: the bucket layout the kernel side uses (bpf/diskguard_io.c, DG_LAT_SLOTS), interval
deltas and quantile estimates. Slot i (i >= 1) counts times in [2^i, 2^(i+1)) microseconds,
slot 0 times below 2 us, and the last slot everything from 2^(SLOTS-1) us up.
"""

from __future__ import annotations

import math

import attrs

from diskguard.model import Device, Direction
from diskguard.sampler.base import Target

SLOTS = 26


def upper_bound_seconds(slot: int) -> float:
    """The exclusive upper bound of a slot in seconds (inf for the last one)."""
    if slot >= SLOTS - 1:
        return math.inf
    return float(2 ** (slot + 1)) / 1e6


def lower_bound_seconds(slot: int) -> float:
    return 0.0 if slot == 0 else float(2**slot) / 1e6


def _slots(value: tuple[int, ...]) -> tuple[int, ...]:
    if len(value) != SLOTS:
        raise ValueError(f"a latency histogram has {SLOTS} slots, got {len(value)}")
    return tuple(value)


@attrs.frozen
class LatencyHistogram:
    """Counts per log2 slot (not cumulative) and the sum of all times in nanoseconds."""

    slots: tuple[int, ...] = attrs.field(converter=_slots, factory=lambda: (0,) * SLOTS)
    sum_ns: int = 0

    @property
    def count(self) -> int:
        return sum(self.slots)

    def since(self, old: LatencyHistogram) -> LatencyHistogram:
        """What was added since `old`; if any slot went backwards the map entry was evicted
        and recreated, so everything in `self` is new."""
        if self.slots == old.slots:  # the common case for an idle container: cheap
            return _EMPTY if self.sum_ns == old.sum_ns else self
        if any(n < o for n, o in zip(self.slots, old.slots, strict=True)) or (
            self.sum_ns < old.sum_ns
        ):
            return self
        return LatencyHistogram(
            tuple(n - o for n, o in zip(self.slots, old.slots, strict=True)),
            self.sum_ns - old.sum_ns,
        )

    def plus(self, other: LatencyHistogram) -> LatencyHistogram:
        """Both together (LATENCY_METRICS=pod sums a pod's containers)."""
        return LatencyHistogram(
            tuple(a + b for a, b in zip(self.slots, other.slots, strict=True)),
            self.sum_ns + other.sum_ns,
        )

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, cumulative count) per slot, as Prometheus buckets."""
        out = []
        total = 0
        for slot, n in enumerate(self.slots):
            total += n
            out.append((upper_bound_seconds(slot), total))
        return out

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds, interpolated linearly inside its slot the way
        Prometheus' histogram_quantile does; None when the histogram is empty. The estimate
        lies in the same power-of-two slot as the true value, so it is within a factor 2."""
        if not 0 <= q <= 1:
            raise ValueError("quantile must be within 0..1")
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for slot, n in enumerate(self.slots):
            if n and seen + n >= rank:
                lower = lower_bound_seconds(slot)
                if slot == SLOTS - 1:
                    return lower  # open-ended slot: its lower bound is all we know
                upper = upper_bound_seconds(slot)
                return lower + (upper - lower) * max(rank - seen, 0) / n
            seen += n
        return lower_bound_seconds(SLOTS - 1)  # not reached: rank <= total


_EMPTY = LatencyHistogram()


@attrs.frozen
class DeviceLatency:
    """Service-time histograms of one cgroup on one device, per direction."""

    read: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    write: LatencyHistogram = attrs.field(factory=LatencyHistogram)

    def get(self, direction: Direction) -> LatencyHistogram:
        return self.read if direction is Direction.READ else self.write

    def since(self, old: DeviceLatency) -> DeviceLatency:
        return DeviceLatency(self.read.since(old.read), self.write.since(old.write))


LatencySnapshot = dict[Target, dict[Device, DeviceLatency]]


def latency_between(
    old: LatencySnapshot | None, new: LatencySnapshot
) -> dict[Target, dict[Device, DeviceLatency]]:
    """Per target and device, what was added between two snapshots (all of `new` for a
    target or device `old` does not have)."""
    out: dict[Target, dict[Device, DeviceLatency]] = {}
    for target, per_device in new.items():
        before = (old or {}).get(target, {})
        out[target] = {
            dev: (lat.since(before[dev]) if dev in before else lat)
            for dev, lat in per_device.items()
        }
    return out


def percentiles(lat: DeviceLatency) -> dict[str, float | None]:
    """p50/p99 per direction in seconds (None: no request completed), for /status and top."""
    return {
        "read_p50_seconds": lat.read.quantile(0.5),
        "read_p99_seconds": lat.read.quantile(0.99),
        "write_p50_seconds": lat.write.quantile(0.5),
        "write_p99_seconds": lat.write.quantile(0.99),
    }
