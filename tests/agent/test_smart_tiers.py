"""The smart-limit task's pod decision over tier verdicts (pure: no kernel, no API): the
strictest triggered limit, escalation that only tightens, sticky removal with its delay and
check interval."""

from __future__ import annotations

from typing import Any

from diskguard.agent.smart import SmartLimiter
from diskguard.config import SmartConfig
from diskguard.model import LimitField
from diskguard.policy.smart import AutoLimit, SmartAction, SmartSettings
from diskguard.policy.tiers import TierTrigger, TierVerdict


def limiter(**smart: Any) -> SmartLimiter:
    config = SmartConfig(monitor_interval=1.0, settings=SmartSettings(window=10.0), **smart)
    return SmartLimiter(config, None, None, None, "iops-limit")  # type: ignore[arg-type]


def fired(iops: int, tier: str = "default") -> TierVerdict:
    trigger = TierTrigger(tier, LimitField.WIOPS, 480.0, 400)
    return TierVerdict(
        AutoLimit(iops=iops), tier, (trigger,), calm=False, judged=True, iops_tier=tier
    )


CALM = TierVerdict(calm=True, judged=True)
BUSY = TierVerdict(calm=False, judged=True)


def test_the_strictest_container_limit_applies_and_names_its_tier() -> None:
    smart = limiter()
    decision = smart._pod_decision(
        "uid", {"a": fired(300, "15m"), "b": fired(200, "60m"), "c": BUSY}, AutoLimit(), 0.0
    )
    assert decision.action is SmartAction.APPLY and decision.auto == AutoLimit(iops=200)
    assert decision.tier == "60m" and "a: " in decision.reason and "b: " in decision.reason


def test_escalation_only_tightens_what_is_in_force() -> None:
    smart = limiter()
    current = AutoLimit(iops=250)
    looser = smart._pod_decision("uid", {"a": fired(300)}, current, 0.0)
    assert looser.action is SmartAction.NONE
    tighter = smart._pod_decision("uid", {"a": fired(100)}, current, 0.0)
    assert tighter.action is SmartAction.APPLY and tighter.auto == AutoLimit(iops=100)
    # A unit that had no limit gets one; the other keeps its value.
    bps = TierVerdict(AutoLimit(bps=1 << 20), "t", fired(0).triggers, judged=True, bps_tier="t")
    both = smart._pod_decision("uid", {"a": bps}, current, 0.0, "15m")
    assert both.auto == AutoLimit(iops=250, bps=1 << 20)
    assert both.tier == "t"  # the tier of what changed (the IOPS limit stays the 15m tier's)


def test_without_a_delay_the_limit_goes_at_the_first_calm_pass() -> None:
    smart = limiter()
    current = AutoLimit(iops=250)
    assert smart._pod_decision("uid", {"a": CALM, "b": BUSY}, current, 0.0).action is (
        SmartAction.NONE
    )
    assert smart._pod_decision("uid", {"a": CALM, "b": CALM}, current, 1.0).action is (
        SmartAction.LIFT
    )
    assert smart._pod_decision("uid", {}, current, 2.0).action is SmartAction.NONE


def test_removal_waits_for_the_delay_checked_at_its_interval() -> None:
    smart = limiter(remove_delay=300.0, remove_check_interval=60.0)
    current = AutoLimit(iops=250)
    calm = {"a": CALM}
    lift = SmartAction.LIFT
    assert smart._pod_decision("uid", calm, current, 0.0).action is not lift  # calm since 0
    for now in (30.0, 60.0, 120.0, 180.0, 240.0, 299.0):
        assert smart._pod_decision("uid", calm, current, now).action is not lift, now
    assert smart._pod_decision("uid", calm, current, 300.0).action is lift
    # A busy check starts the delay over; busy passes between checks are not looked at.
    smart = limiter(remove_delay=300.0, remove_check_interval=60.0)
    smart._pod_decision("uid", calm, current, 0.0)
    smart._pod_decision("uid", {"a": BUSY}, current, 60.0)  # checked: not calm
    smart._pod_decision("uid", calm, current, 120.0)  # checked: calm since 120
    assert smart._pod_decision("uid", calm, current, 360.0).action is not lift
    assert smart._pod_decision("uid", calm, current, 420.0).action is lift
    # A lift the patch budget deferred is retried at the next check, not a delay later.
    assert smart._pod_decision("uid", calm, current, 480.0).action is lift


def test_a_lift_is_decided_on_a_check_only() -> None:
    """A delay that is not a multiple of the check interval: nothing between two checks
    was looked at, so the lift waits for the check after the delay."""
    smart = limiter(remove_delay=90.0, remove_check_interval=60.0)
    current, calm, lift = AutoLimit(iops=250), {"a": CALM}, SmartAction.LIFT
    for now in (0.0, 60.0, 90.0, 100.0):
        assert smart._pod_decision("uid", calm, current, now).action is not lift, now
    assert smart._pod_decision("uid", calm, current, 120.0).action is lift
