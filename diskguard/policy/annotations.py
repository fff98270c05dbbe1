"""The pod annotations diskguard reads, and their parsing into per-key values or errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from diskguard.model import Direction, LimitField, LimitUnit
from diskguard.policy.names import is_dns1123_label
from diskguard.policy.shares import NO_DISKS, Capacities, unresolvable
from diskguard.policy.values import (
    LimitValue,
    LimitValueError,
    Share,
    parse_bps,
    parse_bps_value,
    parse_iops,
    parse_iops_value,
)


def _parser(unit: LimitUnit) -> Callable[[str], LimitValue]:
    return parse_iops_value if unit is LimitUnit.IOPS else parse_bps_value


# Annotation key suffix -> (parser, the IOLimits fields it sets). A direction-specific key
# outranks the combined key, which outranks the env default (see policy.resolve_limits).
# Limit keys take a number or a percentage of each disk's capacity (a Share); the smart
# limit's own keys below stay absolute.
LIMIT_KEYS: dict[str, tuple[Callable[[str], LimitValue], tuple[LimitField, ...]]] = {
    suffix: (_parser(unit), tuple(f for f in LimitField if suffix in f.annotation_suffixes))
    for unit in LimitUnit
    for suffix in (f"{Direction.READ}-{unit}", f"{Direction.WRITE}-{unit}", str(unit))
}


@attrs.frozen
class InvalidAnnotation:
    key: str  # full annotation key, prefix included
    value: str
    reason: str


@attrs.frozen
class AnnotationLimits:
    """What a pod's limit annotations say: good values by key suffix, and the bad ones."""

    values: Mapping[str, LimitValue] = attrs.field(factory=dict, hash=False)
    invalid: Mapping[str, InvalidAnnotation] = attrs.field(factory=dict, hash=False)


def parse_limit_annotations(
    annotations: Mapping[str, str],
    prefix: str,
    stem: str = "",
    capacity: Capacities = NO_DISKS,
) -> AnnotationLimits:
    """Pods use `prefix/read-iops`…; namespaces `prefix/default-read-iops` and
    `prefix/max-read-iops`… (stem `default-` / `max-`), parsed the same way.

    A percentage is good only where every data disk in `capacity` has a known capacity for
    every field its key sets; otherwise it is a bad value whose reason says how to fix it."""
    values: dict[str, LimitValue] = {}
    invalid: dict[str, InvalidAnnotation] = {}
    for suffix, (parse, fields) in LIMIT_KEYS.items():
        key = f"{prefix}/{stem}{suffix}"
        raw = annotations.get(key)
        if raw is None:
            continue
        try:
            value = parse(raw)
            if isinstance(value, Share) and (why := unresolvable(value, fields, capacity)):
                raise LimitValueError(why)
            values[suffix] = value
        except LimitValueError as exc:
            invalid[suffix] = InvalidAnnotation(key=key, value=raw, reason=str(exc))
    return AnnotationLimits(values=values, invalid=invalid)


# diskguard's own smart-limit keys (suffixes): written and removed only by the agent.
SMART_LIMIT = "smart-limit"
AUTO_IOPS = "auto-iops"
AUTO_BPS = "auto-bps"
LIMIT_REASON = "limit-reason"
SMART_LIMIT_TIER = "smart-limit-tier"  # the tier whose limit is in force (SMART_LIMIT_TIERS)
# Every key the agent writes: the admission policy lets it touch these and nothing else.
OWN_KEYS = (SMART_LIMIT, AUTO_IOPS, AUTO_BPS, LIMIT_REASON, SMART_LIMIT_TIER)
# Set by users: this pod is never smart-limited.
SMART_OPT_OUT = "smart-limit-opt-out"


@attrs.frozen
class SmartAnnotations:
    """What a pod's smart-limit keys say. Auto values count only while `smart-limit` is
    "true": the keys are diskguard's, and a half-removed set must not limit anything."""

    active: bool = False
    auto_iops: int = 0
    auto_bps: int = 0
    opted_out: bool = False
    problems: tuple[str, ...] = ()
    tier: str = ""  # the tier in force (SMART_LIMIT_TIERS); "" before tiers or when unreadable


def parse_smart_annotations(annotations: Mapping[str, str], prefix: str) -> SmartAnnotations:
    opted_out = annotations.get(f"{prefix}/{SMART_OPT_OUT}", "").strip().lower() == "true"
    if annotations.get(f"{prefix}/{SMART_LIMIT}", "").strip().lower() != "true":
        return SmartAnnotations(opted_out=opted_out)
    values: dict[str, int] = {}
    problems = []
    for suffix, parse in ((AUTO_IOPS, parse_iops), (AUTO_BPS, parse_bps)):
        raw = annotations.get(f"{prefix}/{suffix}")
        if raw is None:
            continue
        try:
            values[suffix] = parse(raw)
        except LimitValueError as exc:
            problems.append(f"{prefix}/{suffix}: {exc}")
    tier = annotations.get(f"{prefix}/{SMART_LIMIT_TIER}", "").strip()
    return SmartAnnotations(
        active=True,
        auto_iops=values.get(AUTO_IOPS, 0),
        auto_bps=values.get(AUTO_BPS, 0),
        opted_out=opted_out,
        problems=tuple(problems),
        # A label value in metrics: only a tier name as the agent writes them.
        tier=tier if len(tier) <= 32 and is_dns1123_label(tier) else "",
    )
