"""Bounded parsing and bounded tables (pure: no kernel). Every value from the API is cut
to a length limit before it is parsed and before it is shown; the tables keyed by pod go
when the pod goes, so memory follows the pods on the node, not the churn."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskguard.agent.reconciler import Reconciler, ReconcileSettings
from diskguard.agent.smart import SmartLimiter
from diskguard.config import SmartConfig
from diskguard.kube.events import EventRequest
from diskguard.kube.pods import parse_pod, pod_event
from diskguard.kube.watch import Changed, Relisted
from diskguard.model import CgroupVersion, IOLimits, LimitField
from diskguard.node.applier import Applier
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.limits import backend_for
from diskguard.policy.annotations import parse_limit_annotations, parse_smart_annotations
from diskguard.policy.exclusion import ExclusionFilter
from diskguard.policy.plan import plan_pod
from diskguard.policy.resolve import Guardrails, key_set, namespace_policy, resolve_limits
from diskguard.policy.smart import Decision, SmartSettings
from diskguard.policy.values import MAX_VALUE_LENGTH, LimitValueError, parse_bps, parse_iops
from diskguard.testing.fakeapi.objects import make_pod

P = "iops-limit"
HUGE = "1" * 5000


@pytest.mark.parametrize("parse", [parse_iops, parse_bps])
@pytest.mark.parametrize("text", [HUGE, "9" * 4301, " " * 100 + "5", "é" * 300_000])
def test_an_over_long_value_is_refused_without_echoing_it(parse: object, text: str) -> None:
    with pytest.raises(LimitValueError) as err:
        parse(text)  # type: ignore[operator]
    message = str(err.value)
    assert len(message) < 200, message
    assert f"({len(text)} characters)" in message
    assert str(MAX_VALUE_LENGTH) in message


def test_the_longest_valid_values_still_parse() -> None:
    assert parse_iops(" " * 10 + "4294967294" + " " * 10) == 4294967294
    assert parse_bps("9223372036854775807000m") == 9223372036854775807


def test_planning_a_pod_and_a_namespace_full_of_huge_values_never_raises() -> None:
    annotations = {
        f"{P}/{k}": HUGE
        for k in ("iops", "read-iops", "write-iops", "bps", "read-bps", "write-bps")
    }
    parsed = parse_limit_annotations(annotations, P)
    assert not parsed.values and len(parsed.invalid) == 6
    smart = parse_smart_annotations(
        {f"{P}/smart-limit": "true", f"{P}/auto-iops": HUGE, f"{P}/auto-bps": HUGE}, P
    )
    assert (smart.auto_iops, smart.auto_bps) == (0, 0) and len(smart.problems) == 2
    assert all(len(p) < 300 for p in smart.problems)
    ns = namespace_policy(
        "ns", {f"{P}/default-{k}": HUGE for k in ("iops", "bps")} | {f"{P}/max-iops": HUGE}, P, None
    )
    resolution = resolve_limits(
        key_set(annotations, P, None), IOLimits(500, 500), namespace=ns, pod_namespace="ns"
    )
    assert resolution.keep == {"riops", "wiops", "rbps", "wbps"}


def test_v2_plan_raises_one_to_two_and_v1_keeps_it() -> None:
    pod_obj = make_pod("p", annotations={f"{P}/write-iops": "1", f"{P}/read-bps": "1"})
    pod = parse_pod(pod_obj)
    common = {"prefix": P, "defaults": IOLimits(500, 500), "exclusion": ExclusionFilter()}
    v2 = plan_pod(pod, previous=None, cgroup_version=CgroupVersion.V2, **common)  # type: ignore[arg-type]
    assert v2.resolution.limits == IOLimits(riops=500, wiops=2, rbps=2)
    assert v2.resolution.raised == {"wiops", "rbps"}
    assert "raised to 2" in v2.resolution.sources[LimitField.WIOPS]
    v1 = plan_pod(pod, previous=None, cgroup_version=CgroupVersion.V1, **common)  # type: ignore[arg-type]
    assert v1.resolution.limits == IOLimits(riops=500, wiops=1, rbps=1)
    # A ceiling of 1 (and so a kept kernel value clamped to it) is raised on v2 too.
    ceiling = plan_pod(
        pod,
        previous=None,
        cgroup_version=CgroupVersion.V2,
        guardrails=Guardrails(ceilings=IOLimits(riops=1)),
        **common,  # type: ignore[arg-type]
    )
    assert ceiling.resolution.limits.riops == 2 and ceiling.resolution.ceilings.riops == 2


def _reconciler(tmp_path: Path) -> Reconciler:
    hierarchy = CgroupHierarchy(CgroupVersion.V1, tmp_path)
    applier = Applier(hierarchy, backend_for(CgroupVersion.V1), (), None, "/dg")
    events: list[EventRequest] = []
    return Reconciler(
        ReconcileSettings("node-1", P, IOLimits(500, 500), ExclusionFilter(), 60.0),
        applier,
        events.append,
    )


def test_parse_failures_go_with_their_pod(tmp_path: Path) -> None:
    reconciler = _reconciler(tmp_path)
    for i in range(50):
        bad = make_pod(f"bad-{i}")
        bad["metadata"]["annotations"] = {"x": 1}  # not a string: unparseable
        reconciler.on_pod_event(pod_event(Changed("ADDED", bad)))
        if i % 2:
            reconciler.on_pod_event(pod_event(Changed("DELETED", bad)))
    assert len(reconciler._states) == 25
    assert all(s.parse_failure and s.pod is None for s in reconciler._states.values())
    reconciler.on_pod_event(pod_event(Relisted((make_pod("good"),), "2")))
    assert len(reconciler._states) == 1
    [pod] = reconciler.pods.values()
    assert pod.name == "good"


async def test_smart_decisions_go_with_their_pod(tmp_path: Path) -> None:
    reconciler = _reconciler(tmp_path)
    smart = SmartConfig(monitor_interval=10.0, settings=SmartSettings(window=60.0))
    limiter = SmartLimiter(smart, reconciler, None, None, P)  # type: ignore[arg-type]
    for i in range(100):
        limiter.decisions[f"uid-{i}"] = Decision("lift", reason="gone")
    await limiter.evaluate()
    assert limiter.decisions == {}
