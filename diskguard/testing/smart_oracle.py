"""The single-window smart-limit decision as it was before tiers (SMART_LIMIT_TIERS): the
oracle the tier engine is checked against (tests/policy/test_tiers.py: the single window as
one tier decides the same on any history) and the spec of today's default behaviour
(tests/policy/test_smart.py). The agent itself decides with diskguard.policy.tiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from diskguard.model import IOLimits, LimitField, LimitUnit
from diskguard.policy.smart import (
    AutoLimit,
    Decision,
    Sample,
    SmartAction,
    SmartSettings,
    Trigger,
    window_samples,
)

NOTHING = Decision(SmartAction.NONE)


def _reference(metric: LimitField, static: IOLimits, settings: SmartSettings) -> int:
    value = static.get(metric)
    if value:
        return value
    return settings.device_iops if metric.unit is LimitUnit.IOPS else settings.device_bps


def decide(
    samples: Sequence[Sample],
    now: float,
    static: IOLimits,
    current: AutoLimit,
    settings: SmartSettings,
    container: str,
) -> Decision:
    """What to do about one container now, given its rate history."""
    window = window_samples(samples, now, settings.window)
    if window is None:
        return NOTHING  # not enough history (e.g. right after start): judge nothing
    lowest = {m: min(s.low.get(m) for s in window) for m in LimitField}
    highest = {m: max(s.high.get(m) for s in window) for m in LimitField}

    if current.active:
        calm = all(
            highest[m] < settings.remove_threshold * limit
            for m in LimitField
            if (limit := current.as_limits().get(m))
        )
        if calm:
            return Decision(
                SmartAction.LIFT,
                reason=(
                    f"{container}: IO stayed below {settings.remove_threshold:g} x the automatic "
                    f"limit for {settings.window:g}s"
                ),
            )
        return NOTHING

    triggers = []
    for metric in LimitField:
        reference = _reference(metric, static, settings)
        if not reference:
            continue
        threshold = (
            settings.io_threshold if metric.unit is LimitUnit.IOPS else settings.bps_threshold
        )
        if lowest[metric] >= threshold * reference:
            triggers.append(Trigger(metric, lowest[metric], reference, threshold))
    if not triggers:
        return NOTHING

    auto_iops = auto_bps = 0
    for unit in LimitUnit:
        fired = [t for t in triggers if t.metric.unit is unit]
        if not fired:
            continue
        iops = unit is LimitUnit.IOPS
        configured = settings.auto_iops if iops else settings.auto_bps
        floor = settings.min_iops if iops else settings.min_bps
        computed = max(floor, int(min(t.observed for t in fired) * settings.reduction))
        value = configured or computed
        if iops:
            auto_iops = value
        else:
            auto_bps = value
    reason = "; ".join(
        f"{container}: {t.metric.words} stayed at or above {t.threshold:g} x {t.reference} "
        f"= {t.threshold * t.reference:g} for {settings.window:g}s (lowest {t.observed:.0f})"
        for t in triggers
    )
    return Decision(SmartAction.APPLY, AutoLimit(auto_iops, auto_bps), tuple(triggers), reason)


def pod_decision(decisions: Mapping[str, Decision], current: AutoLimit) -> Decision:
    """Combine per-container decisions of one pod: any trigger applies; lift only when
    every judged container is calm."""
    applies = [d for d in decisions.values() if d.action is SmartAction.APPLY]
    if applies and not current.active:
        iops = min((d.auto.iops for d in applies if d.auto.iops), default=0)
        bps = min((d.auto.bps for d in applies if d.auto.bps), default=0)
        return Decision(
            SmartAction.APPLY,
            AutoLimit(iops, bps),
            tuple(t for d in applies for t in d.triggers),
            "; ".join(d.reason for d in applies),
        )
    lift = SmartAction.LIFT
    if current.active and decisions and all(d.action is lift for d in decisions.values()):
        return Decision(lift, reason="; ".join(d.reason for d in decisions.values()))
    return NOTHING
