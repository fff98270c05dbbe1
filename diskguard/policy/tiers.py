"""Graded smart limits (SMART_LIMIT_TIERS): several windows, each with its own thresholds
and limit (pure; the clock is a number passed in).

A tier *triggers* for a container when, in some direction and unit, every sample of its
full window is at or above the tier's threshold. The thresholds and limits are amounts:

  500, 100Mi     absolute (IO operations/s; bytes/s with the usual quantities)
  80%            of the reference: the direction's static limit, else the disk's capacity
                 (today's single-window rule)
  80%cap         of the disk's capacity only (measured or declared)
  50%obs         of the rate observed: the lowest sustained rate in the window (limits only)

When several tiers trigger, the strictest limit among them is in force (per unit); a tier
that triggers while a looser automatic limit is in force tightens it (escalation), never
loosens it. Removal is sticky: every tier with a full window must be below
`remove_threshold x` the automatic limit in force, continuously for `remove_delay` seconds.

The syntax (README: Smart limit tiers): tiers separated by `;`, each a comma-separated list
of `key=value` with keys `name` (optional; default the window), `window` (Go duration),
`iops`, `bps` (thresholds), `limit-iops`, `limit-bps`, `limit` (both units):

  window=15m,iops=80%,bps=80%,limit=50%obs; window=60m,iops=50%,limit-iops=25%cap
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence

import attrs

from diskguard.model import IOLimits, LimitField, LimitUnit
from diskguard.policy.smart import AutoLimit, Sample, SmartSettings, window_samples
from diskguard.policy.values import LimitValueError, parse_bps, parse_iops

_METRICS = {u: tuple(f for f in LimitField if f.unit is u) for u in LimitUnit}
MAX_TIERS = 8
# History is kept per monitor interval for the longest window: bounded, and a typo (1e300)
# is refused at start-up instead of failing the smart-limit task later.
MAX_WINDOW = 24 * 3600.0
DEFAULT_TIER = "default"  # the single window's name (SMART_LIMIT_TIERS unset)
MAX_TIERS_TEXT = 2048
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")


class TierError(ValueError):
    """SMART_LIMIT_TIERS does not parse; the message says where and what is accepted."""


class Of(enum.Enum):
    """What a relative amount is a fraction of."""

    ABSOLUTE = ""
    REFERENCE = "%"  # the static limit of that direction, else the capacity
    CAPACITY = "%cap"
    OBSERVED = "%obs"


@attrs.frozen
class Amount:
    value: float  # the absolute amount (an exact int), or the fraction (0.8 for 80%)
    of: Of = Of.ABSOLUTE

    def resolve(self, *, reference: int, capacity: int, observed: float) -> float | None:
        """The amount in the unit, or None when what it is a fraction of is unknown (no
        static limit and no capacity; no capacity). Not rounded: a threshold compares
        exactly (0.8 x 1 IOPS is not 0)."""
        base: float | None
        if self.of is Of.ABSOLUTE:
            return self.value
        if self.of is Of.REFERENCE:
            base = reference or capacity or None
        elif self.of is Of.CAPACITY:
            base = capacity or None
        else:
            base = observed
        return None if base is None else self.value * base

    def __str__(self) -> str:
        if self.of is Of.ABSOLUTE:
            return str(int(self.value))
        return f"{self.value * 100:g}{self.of.value}"


@attrs.frozen
class Tier:
    name: str
    window: float  # seconds
    iops: Amount | None = None  # thresholds; None: this unit is not judged by the tier
    bps: Amount | None = None
    limit_iops: Amount | None = None  # the limit it applies; None: none for that unit
    limit_bps: Amount | None = None

    def threshold(self, unit: LimitUnit) -> Amount | None:
        return self.iops if unit is LimitUnit.IOPS else self.bps

    def limit(self, unit: LimitUnit) -> Amount | None:
        return self.limit_iops if unit is LimitUnit.IOPS else self.limit_bps


@attrs.frozen
class Capacity:
    """What the data disks can do; 0 = unknown. `iops`/`bps` are declared for both
    directions (SMART_LIMIT_DEVICE_*); `measured` (by `diskguard profile`, per limit field,
    the slowest data disk's) takes their place when every data disk was measured."""

    iops: int = 0
    bps: int = 0
    measured: IOLimits | None = None

    def of(self, metric: LimitField) -> int:
        if self.measured is not None and (value := self.measured.get(metric)):
            return value
        return self.iops if metric.unit is LimitUnit.IOPS else self.bps


def _amount(text: str, unit: LimitUnit, *, limit: bool) -> Amount:
    for of in (Of.OBSERVED, Of.CAPACITY, Of.REFERENCE):
        if text.endswith(of.value):
            if of is Of.OBSERVED and not limit:
                raise TierError(f"{text!r}: %obs (of the observed rate) is for limits only")
            number = text[: -len(of.value)].strip()
            try:
                fraction = float(number) / 100
            except ValueError:
                raise TierError(f"{text!r}: expected a percentage such as 80{of.value}") from None
            if not 0 < fraction <= 1:
                raise TierError(f"{text!r}: a percentage must be in (0, 100]")
            return Amount(fraction, of)
    try:
        value = parse_iops(text) if unit is LimitUnit.IOPS else parse_bps(text)
    except LimitValueError as e:
        raise TierError(f"{text!r}: {e}") from None
    if value <= 0:
        raise TierError(f"{text!r}: an amount must be positive")
    return Amount(value)


_KEYS = ("name", "window", "iops", "bps", "limit", "limit-iops", "limit-bps")


def _field_amount(
    fields: dict[str, str], key: str, unit: LimitUnit, *, limit: bool, where: str
) -> Amount | None:
    text = fields.get(key)
    if text is None:
        return None
    try:
        return _amount(text, unit, limit=limit)
    except TierError as e:
        raise TierError(f"{where}: {key}={e}") from None


def _parse_tier(where: str, part: str, parse_duration: Callable[[str], float]) -> Tier:
    fields: dict[str, str] = {}
    for item in part.split(","):
        key, sep, value = item.strip().partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise TierError(f"{where}: expected key=value, got {item.strip()!r}")
        if key not in _KEYS:
            raise TierError(f"{where}: unknown key {key!r} (keys: {', '.join(_KEYS)})")
        if key in fields:
            raise TierError(f"{where}: {key} given twice")
        fields[key] = value
    if "window" not in fields:
        raise TierError(f"{where}: window= is required (a duration such as 15m)")
    try:
        window = parse_duration(fields["window"])
    except ValueError:
        raise TierError(f"{where}: window={fields['window']!r} is not a duration") from None
    if window > MAX_WINDOW:
        raise TierError(f"{where}: window longer than {MAX_WINDOW / 3600:g}h")
    name = fields.get("name", fields["window"]).lower()
    if not _NAME.fullmatch(name):
        raise TierError(f"{where}: name {name!r} must be a short DNS label")
    if name == DEFAULT_TIER:
        raise TierError(
            f"{where}: the name {DEFAULT_TIER!r} is the single window's (pods limited before "
            "tiers count as under it)"
        )
    both = fields.get("limit")
    if both is not None and ("limit-iops" in fields or "limit-bps" in fields):
        raise TierError(f"{where}: limit= and limit-iops=/limit-bps= exclude each other")
    if both is not None:
        if not both.endswith(tuple(of.value for of in Of if of is not Of.ABSOLUTE)):
            raise TierError(
                f"{where}: limit={both!r} applies to IOPS and bytes/s alike, so it must be "
                "relative (50%obs, 25%cap, 50%); give absolute limits as limit-iops=/limit-bps="
            )
        fields["limit-iops"] = fields["limit-bps"] = both
    tier = Tier(
        name=name,
        window=window,
        iops=_field_amount(fields, "iops", LimitUnit.IOPS, limit=False, where=where),
        bps=_field_amount(fields, "bps", LimitUnit.BPS, limit=False, where=where),
        limit_iops=_field_amount(fields, "limit-iops", LimitUnit.IOPS, limit=True, where=where),
        limit_bps=_field_amount(fields, "limit-bps", LimitUnit.BPS, limit=True, where=where),
    )
    if tier.iops is None and tier.bps is None:
        raise TierError(f"{where}: no threshold (iops= and/or bps=)")
    if tier.limit_iops is None and tier.limit_bps is None:
        raise TierError(f"{where}: no limit (limit=, limit-iops= or limit-bps=)")
    if not any(tier.threshold(u) is not None and tier.limit(u) is not None for u in LimitUnit):
        raise TierError(
            f"{where}: a threshold and a limit in the same unit are needed (iops= with "
            "limit-iops=, or bps= with limit-bps=): a tier judges and limits per unit"
        )
    return tier


def parse_tiers(text: str, parse_duration: Callable[[str], float]) -> tuple[Tier, ...]:
    """The tiers of SMART_LIMIT_TIERS, shortest window first; TierError says what is wrong
    (`parse_duration` is config's Go-duration parser, raising ValueError)."""
    if len(text) > MAX_TIERS_TEXT:
        raise TierError(f"longer than {MAX_TIERS_TEXT} characters")
    parts = [p.strip() for p in text.split(";")]
    tiers = [
        _parse_tier(f"tier {number}", part, parse_duration)
        for number, part in enumerate(parts, start=1)
        if part
    ]
    if not tiers:
        raise TierError("no tier")
    if len(tiers) > MAX_TIERS:
        raise TierError(f"at most {MAX_TIERS} tiers")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise TierError("two tiers have the same name (name= tells them apart)")
    return tuple(sorted(tiers, key=lambda t: t.window))


@attrs.frozen
class TierTrigger:
    tier: str
    metric: LimitField = attrs.field(converter=LimitField)
    observed: float  # the lowest rate in the tier's window
    threshold: float
    window: float = 0.0  # seconds
    fraction: float | None = None  # the threshold as a fraction of `reference`, or absolute
    reference: int = 0


@attrs.frozen
class TierVerdict:
    """One container against every tier: the strictest triggered limit per unit (0: none),
    which tier set it, what triggered, and whether every judged tier is calm."""

    limit: AutoLimit = AutoLimit()
    tier: str = ""  # the tier whose limit is in force (the first unit's, IOPS first)
    triggers: tuple[TierTrigger, ...] = ()
    calm: bool = False  # every tier with a full window is below the removal threshold
    judged: bool = False  # at least one tier had a full window
    iops_tier: str = ""  # which tier set each unit's limit ("" = no limit in that unit)
    bps_tier: str = ""


def judge(
    samples: Sequence[Sample],
    now: float,
    static: IOLimits,
    capacity: Capacity,
    current: AutoLimit,
    tiers: Sequence[Tier],
    *,
    remove_threshold: float,
    minimum: AutoLimit = AutoLimit(),
    in_force: str = "",
) -> TierVerdict:
    """Every tier over its own window of `samples`; `minimum` floors limits that are
    fractions of a rate (a computed limit never goes below it, nor below 1).

    While an automatic limit holds, nothing may feed on the rates it shaped: the tier
    `in_force` is judged for calm only, and no limit that is a fraction of the observed
    rate (`%obs`) tightens a unit that already has an automatic limit (two such tiers would
    otherwise take turns halving it). Absolute and capacity-relative limits still tighten:
    that is how a longer tier escalates."""
    best: dict[LimitUnit, tuple[int, str]] = {}
    triggers: list[TierTrigger] = []
    calm = True
    judged = False
    held = current.as_limits()
    for tier in tiers:
        window = window_samples(samples, now, tier.window)
        if window is None:
            continue
        judged = True
        lowest = {m: min(s.low.get(m) for s in window) for m in LimitField}
        highest = {m: max(s.high.get(m) for s in window) for m in LimitField}
        if current.active and any(
            highest[m] >= remove_threshold * lim for m in LimitField if (lim := held.get(m))
        ):
            calm = False
        if current.active and tier.name == in_force:
            continue
        for unit in LimitUnit:
            threshold, cap = tier.threshold(unit), tier.limit(unit)
            if threshold is None or cap is None:
                continue
            fired = []
            for metric in _METRICS[unit]:
                at = threshold.resolve(
                    reference=static.get(metric), capacity=capacity.of(metric), observed=0.0
                )
                if at is not None and lowest[metric] >= at:
                    fired.append(
                        TierTrigger(
                            tier.name,
                            metric,
                            lowest[metric],
                            at,
                            tier.window,
                            None if threshold.of is Of.ABSOLUTE else threshold.value,
                            _reference_of(threshold, static.get(metric), capacity.of(metric)),
                        )
                    )
            if not fired:
                continue
            held_in_unit = current.iops if unit is LimitUnit.IOPS else current.bps
            if cap.of is Of.OBSERVED and held_in_unit:
                continue  # the observed rate is our own limit's doing
            observed = min(t.observed for t in fired)
            # `50%` of the static limit of what fired (the lowest), else of the capacity.
            reference = min(
                (static.get(t.metric) for t in fired if static.get(t.metric)), default=0
            )
            # Of the capacity of what fired, too (a measured disk's read and write differ).
            known = min((c for t in fired if (c := capacity.of(t.metric))), default=0)
            resolved = cap.resolve(reference=reference, capacity=known, observed=observed)
            if resolved is None:
                continue  # a fraction of an unknown capacity: this tier cannot limit
            value = int(resolved)
            if cap.of is not Of.ABSOLUTE:
                floor = minimum.iops if unit is LimitUnit.IOPS else minimum.bps
                value = max(value, floor, 1)
            triggers.extend(fired)
            if unit not in best or value < best[unit][0]:
                best[unit] = (value, tier.name)
    strictest_limit = AutoLimit(
        best.get(LimitUnit.IOPS, (0, ""))[0], best.get(LimitUnit.BPS, (0, ""))[0]
    )
    tier_name = next((best[u][1] for u in LimitUnit if u in best), "")
    return TierVerdict(
        strictest_limit,
        tier_name,
        tuple(triggers),
        calm and judged,
        judged,
        iops_tier=best.get(LimitUnit.IOPS, (0, ""))[1],
        bps_tier=best.get(LimitUnit.BPS, (0, ""))[1],
    )


def _reference_of(threshold: Amount, static: int, capacity: int) -> int:
    """What a relative threshold was a fraction of (for the reason text)."""
    if threshold.of is Of.CAPACITY:
        return capacity
    if threshold.of is Of.REFERENCE:
        return static or capacity
    return 0


def tighter(new: AutoLimit, current: AutoLimit) -> bool:
    """Whether `new` limits some unit more than `current` does (0 = no limit)."""
    return any(
        n and (not c or n < c) for n, c in ((new.iops, current.iops), (new.bps, current.bps))
    )


def strictest(limits: Sequence[AutoLimit]) -> AutoLimit:
    """Per unit, the lowest non-zero value (a pod's containers combined)."""
    iops = min((a.iops for a in limits if a.iops), default=0)
    bps = min((a.bps for a in limits if a.bps), default=0)
    return AutoLimit(iops, bps)


@attrs.frozen
class Removal:
    """Sticky removal: since when every tier has been calm (None: not calm now)."""

    calm_since: float | None = None

    def update(self, calm: bool, now: float) -> Removal:
        if not calm:
            return Removal(None)
        return self if self.calm_since is not None else Removal(now)

    def due(self, now: float, delay: float) -> bool:
        return self.calm_since is not None and now - self.calm_since >= delay


def single_tier(settings: SmartSettings) -> Tier:
    """Today's single-window mode as one tier (SMART_LIMIT_TIERS unset): thresholds are
    fractions of the reference (the static limit, else the declared device capacity); the
    limit is SMART_LIMIT_AUTO_* where set, else `reduction` x the lowest sustained rate."""

    def limit(auto: int) -> Amount:
        return Amount(float(auto)) if auto else Amount(settings.reduction, Of.OBSERVED)

    return Tier(
        name=DEFAULT_TIER,
        window=settings.window,
        iops=Amount(settings.io_threshold, Of.REFERENCE),
        bps=Amount(settings.bps_threshold, Of.REFERENCE),
        limit_iops=limit(settings.auto_iops),
        limit_bps=limit(settings.auto_bps),
    )
