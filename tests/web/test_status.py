"""/status per container: the desired limits, per data disk when percentages make them differ
(pure: built from a plan, no agent)."""

from __future__ import annotations

from diskguard.kube.pods import parse_pod
from diskguard.model import Device, IOLimits
from diskguard.policy.exclusion import ExclusionFilter
from diskguard.policy.plan import PodPlan, plan_pod
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.web.status import container_json

P = "iops-limit"
FAST = Device(259, 0, "nvme0n1")
SLOWER = Device(8, 16, "sdb")
CAPACITY = {FAST: IOLimits(8000, 2000), SLOWER: IOLimits(1200, 800)}


def planned(write_iops: str) -> PodPlan:
    pod = parse_pod(make_pod("web", annotations={f"{P}/write-iops": write_iops}))
    return plan_pod(
        pod,
        prefix=P,
        defaults=IOLimits(500, 500),
        exclusion=ExclusionFilter(),
        previous=None,
        devices=(FAST, SLOWER),
        capacity=CAPACITY,
    )


def test_desired_per_device_when_a_percentage_makes_the_disks_differ() -> None:
    plan = planned("25%")
    desired = container_json(plan, plan.containers[0], None)["desired"]
    assert desired["limits"]["wiops"] == 500  # the first data disk's
    per_device = desired["per_device"]
    assert set(per_device) == {"259:0", "8:16"}
    assert per_device["8:16"]["limits"] == {"riops": 500, "wiops": 200, "rbps": None, "wbps": None}
    assert per_device["8:16"]["sources"]["wiops"] == (
        f"annotation {P}/write-iops (25% of 800 on 8:16)"
    )
    assert per_device["8:16"]["source_kinds"]["wiops"] == "annotation"
    assert per_device["259:0"]["limits"] == desired["limits"]


def test_no_per_device_for_absolute_limits() -> None:
    plan = planned("300")
    desired = container_json(plan, plan.containers[0], None)["desired"]
    assert desired["limits"]["wiops"] == 300
    assert desired["per_device"] is None
