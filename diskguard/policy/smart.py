"""Smart limit values and history (pure; the clock is a number passed in): samples, the
buckets they are averaged into, full windows, the automatic limit and the decision types.
The decisions themselves are policy/tiers.py's; this is what they mean for the single
window, which is one tier (testing/smart_oracle.py keeps its original code as the oracle):

A container *triggers* when, in some direction, every sample of a full history window is at
or above `threshold x reference`, where the reference is the container's effective static
limit in that direction, or the declared device capacity where that direction is
unlimited (no capacity declared: the direction is not judged). IOPS and bytes/s are judged
separately, read and write separately. A burst shorter than the window never triggers, and
a window with a gap (missing samples) is not full.

On trigger the pod gets an automatic limit: the configured value, or half the lowest rate
seen in the window (so it really lowers the sustained rate), never below the floor. The
automatic IOPS (bytes/s) limit applies to both directions, like `iops-limit/iops`, and the
effective limit per direction is the stricter of the static and the automatic one.

The limit is *lifted* when every sample of a full window is below
`remove_threshold x automatic limit` in both directions. Under a steady load the container
runs at its automatic limit, well above that, so apply and lift never alternate.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence

import attrs

from diskguard.model import IOLimits, LimitField, Rates

# Samples may jitter around the nominal interval: a gap shorter than this fraction of one
# interval is not a gap.
_COVERAGE_SLACK = 0.5
# The window itself must be covered to within this fraction of an interval (timer jitter
# only), so a burst shorter than the window never counts as sustained.
_START_SLACK = 0.05


@attrs.frozen
class Sample:
    """The container's rates over one interval ending at `at` (seconds): the lowest and
    highest per-sample-interval rates seen in it. A raw sample has low == high; a bucket
    summarises many (history stays small: one bucket per monitor interval)."""

    at: float
    interval: float
    low: Rates
    high: Rates

    @classmethod
    def of(cls, at: float, interval: float, rates: Rates) -> Sample:
        return cls(at, interval, rates, rates)


@attrs.frozen
class SmartSettings:
    window: float  # seconds
    io_threshold: float = 0.8
    bps_threshold: float = 0.8
    remove_threshold: float = 0.5
    auto_iops: int = 0  # 0 = computed
    auto_bps: int = 0  # 0 = computed
    device_iops: int = 0  # capacity reference for unlimited directions; 0 = not judged
    device_bps: int = 0
    min_iops: int = 10  # floor of a computed automatic limit
    min_bps: int = 1 << 20
    reduction: float = 0.5  # computed automatic limit = reduction x lowest sustained rate


@attrs.frozen
class AutoLimit:
    """An automatic limit in force (from the pod's annotations): 0 = none for that unit."""

    iops: int = 0
    bps: int = 0

    def as_limits(self) -> IOLimits:
        return IOLimits.per_unit(self.iops, self.bps)

    @property
    def active(self) -> bool:
        return bool(self.iops or self.bps)


@attrs.frozen
class Trigger:
    metric: LimitField = attrs.field(converter=LimitField)
    observed: float  # lowest rate in the window
    reference: int
    threshold: float


class SmartAction(enum.StrEnum):
    """What to do about a pod's automatic limit (also the `action` of patch counters)."""

    APPLY = "apply"
    LIFT = "lift"
    NONE = "none"


@attrs.frozen
class Decision:
    action: SmartAction = attrs.field(converter=SmartAction)
    auto: AutoLimit = AutoLimit()
    triggers: tuple[Trigger, ...] = ()
    reason: str = ""
    tier: str = ""  # SMART_LIMIT_TIERS: the tier whose limit is in force


@attrs.define
class Bucket:
    """Accumulates raw samples of one container into one Sample (one per monitor pass).

    The bucket's rate is the mean over its samples, weighted by their intervals: the kernel
    releases throttled IO in time slices, so single short samples swing around the limit
    (160/240 IOPS under a 200 IOPS limit at 0.25 s) while their mean is exact."""

    first_start: float | None = None
    last_at: float = 0.0
    covered: float = 0.0
    amount: dict[LimitField, float] = attrs.Factory(dict)

    def add(self, at: float, interval: float, rates: Rates) -> None:
        if self.first_start is None:
            self.first_start = at - interval
        self.last_at = at
        self.covered += interval
        for m in LimitField:
            self.amount[m] = self.amount.get(m, 0.0) + rates.get(m) * interval

    def close(self, max_interval: float) -> Sample | None:
        """The bucket as one Sample, or None if it is empty or has a gap (missed samples)."""
        if self.first_start is None or self.covered <= 0:
            return None
        span = self.last_at - self.first_start
        if span - self.covered > _COVERAGE_SLACK * max_interval:
            return None
        mean = Rates.of({m: v / self.covered for m, v in self.amount.items()})
        return Sample(self.last_at, span, mean, mean)


def window_samples(samples: Sequence[Sample], now: float, window: float) -> list[Sample] | None:
    """The samples inside the window ending now, or None if they do not cover all of it."""
    inside = [s for s in samples if s.at > now - window and s.at <= now]
    if not inside:
        return None
    slack = _COVERAGE_SLACK * max(s.interval for s in inside)
    start = inside[0].at - inside[0].interval
    start_slack = _START_SLACK * inside[0].interval
    if start > now - window + start_slack or now - inside[-1].at > slack + inside[-1].interval:
        return None
    # Gaps: each sample must start where the previous one ended.
    for prev, cur in itertools.pairwise(inside):
        if cur.at - cur.interval > prev.at + slack:
            return None
    return inside
