"""The administrator's floor, decided in the pure layer: which limits each container gets,
and why (`Enforcement`), for every kind of container that runs.

Tenant-controlled exclusion rules (keyword in a name or image, pod labels, regex on names)
exempt a container from its pod's limits but never from the ceilings; only the
administrator's namespace settings lift those.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.kube.pods import parse_pod
from diskguard.model import (
    MAX_IOPS,
    CgroupVersion,
    ContainerKind,
    DesiredLimits,
    Device,
    DeviceLimits,
    IOLimits,
    LimitField,
)
from diskguard.policy.exclusion import Exclusion, ExclusionFilter, ExclusionRule
from diskguard.policy.plan import ContainerPlan, Enforcement, PodPlan, enforcement_for, plan_pod
from diskguard.policy.resolve import Guardrails, KeyMemory, device_limits, namespace_policy
from diskguard.policy.shares import disk_capacities
from diskguard.policy.values import LimitSettings, Share
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.web.status import source_kind

P = "iops-limit"
DEFAULTS = IOLimits(500, 500)
CEILINGS = IOLimits(riops=1000, wiops=800, rbps=0, wbps=50 * 2**20)
# The shipped default keywords: tenants choose container names and images.
FILTER = ExclusionFilter.from_strings(
    "pause,istio-proxy,psmdb,kube-system,koordinator,apisix",
    "kube-system",
    "diskguard.io/exclude=true",
    "/batch-[0-9]+/",
)


def plan(
    obj: dict[str, Any],
    *,
    guardrails: Guardrails = Guardrails(CEILINGS),
    ns_annotations: dict[str, str] | None = None,
) -> PodPlan:
    pod = parse_pod(obj)
    ns = None
    if ns_annotations is not None:
        ns = namespace_policy(pod.namespace, ns_annotations, P, None)
    return plan_pod(
        pod,
        prefix=P,
        defaults=DEFAULTS,
        exclusion=FILTER,
        previous=None,
        namespace=ns,
        guardrails=guardrails,
    )


def only(p: PodPlan, name: str) -> ContainerPlan:
    [c] = [c for c in p.containers if c.ref.container == name]
    return c


# -- the typed decision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (ExclusionRule.KEYWORD, Enforcement.CEILINGS),
        (ExclusionRule.LABEL_SELECTOR, Enforcement.CEILINGS),
        (ExclusionRule.REGEX, Enforcement.CEILINGS),
        (ExclusionRule.NAMESPACE, Enforcement.EXEMPT),
    ],
)
def test_enforcement_by_rule(rule: ExclusionRule, expected: Enforcement) -> None:
    assert enforcement_for(Exclusion(rule, "why")) is expected
    assert enforcement_for(None) is Enforcement.POD_LIMITS


@pytest.mark.parametrize(
    ("containers", "labels", "name", "rule"),
    [
        ((("app-pause", "busybox:1.36"),), {}, "app-pause", ExclusionRule.KEYWORD),
        ((("web", "registry.example.com/apisix/evil:1"),), {}, "web", ExclusionRule.KEYWORD),
        (
            (("web", "busybox:1.36"),),
            {"diskguard.io/exclude": "true"},
            "web",
            ExclusionRule.LABEL_SELECTOR,
        ),
    ],
)
def test_tenant_named_exclusion_gets_the_ceilings(
    containers: tuple[tuple[str, str], ...], labels: dict[str, str], name: str, rule: ExclusionRule
) -> None:
    # The pod even asks for unlimited and a low write-iops: neither reaches the container.
    obj = make_pod(
        "web-0",
        containers=containers,
        labels=labels,
        annotations={f"{P}/iops": "0", f"{P}/write-iops": "7"},
    )
    c = only(plan(obj), name)
    assert c.enforcement is Enforcement.CEILINGS
    assert c.exclusion is not None and c.exclusion.rule is rule
    assert c.resolution is not None
    assert c.resolution.limits == CEILINGS
    assert c.resolution.keep == frozenset()
    assert not c.left_alone
    assert source_kind(c.resolution.origins[LimitField.WIOPS]) == "ceiling"
    assert c.resolution.sources[LimitField.WIOPS] == (
        f"excluded by {rule.value}, clamped to the env ceiling LIMIT_CEILING_WRITE_IOPS=800"
    )
    assert c.resolution.sources[LimitField.RBPS] == f"excluded by {rule.value}, no ceiling"
    assert source_kind(c.resolution.origins[LimitField.RBPS]) == "excluded"


def test_regex_exclusion_gets_the_ceilings() -> None:
    c = only(plan(make_pod("batch-17")), "app")
    assert c.enforcement is Enforcement.CEILINGS
    assert c.resolution is not None and c.resolution.limits == CEILINGS


def test_excluded_container_gets_neither_defaults_nor_pod_limits_without_ceilings() -> None:
    obj = make_pod(
        "web-0",
        containers=(("app", "busybox"), ("istio-proxy", "istio/proxyv2:1.20")),
        annotations={f"{P}/iops": "100"},
    )
    p = plan(obj, guardrails=Guardrails())
    app, proxy = only(p, "app"), only(p, "istio-proxy")
    assert app.resolution is not None and app.resolution.limits == IOLimits(100, 100)
    assert proxy.enforcement is Enforcement.CEILINGS
    assert proxy.resolution is not None and proxy.resolution.limits.is_unlimited()
    assert proxy.left_alone and not app.left_alone


def test_excluded_namespace_lifts_everything() -> None:
    obj = make_pod("p", "kube-system", containers=(("app-pause", "pause:3.9"), ("main", "x")))
    p = plan(obj)
    for c in p.containers:
        assert c.enforcement is Enforcement.EXEMPT
        assert c.resolution is None and c.left_alone
        assert c.exclusion is not None and c.exclusion.rule is ExclusionRule.NAMESPACE


def test_allow_unlimited_namespace_lifts_the_env_ceilings_of_excluded_containers() -> None:
    obj = make_pod("p", "batch", containers=(("app-pause", "busybox"),))
    guardrails = Guardrails(CEILINGS, frozenset({"batch"}))
    c = only(plan(obj, guardrails=guardrails), "app-pause")
    assert c.enforcement is Enforcement.CEILINGS
    assert c.resolution is not None and c.resolution.limits.is_unlimited()
    # ... but the namespace's own ceilings still hold.
    c = only(
        plan(obj, guardrails=guardrails, ns_annotations={f"{P}/max-write-iops": "300"}),
        "app-pause",
    )
    assert c.resolution is not None and c.resolution.limits == IOLimits(wiops=300)


def test_namespace_ceiling_holds_excluded_containers_below_the_env_ceiling() -> None:
    obj = make_pod("p", "team", containers=(("koordinator-agent", "busybox"),))
    c = only(plan(obj, ns_annotations={f"{P}/max-iops": "200"}), "koordinator-agent")
    assert c.resolution is not None
    assert c.resolution.limits == IOLimits(200, 200, 0, 50 * 2**20)
    assert "namespace ceiling iops-limit/max-iops=200" in c.resolution.sources[LimitField.RIOPS]


def test_smart_limit_does_not_reach_excluded_containers() -> None:
    obj = make_pod(
        "p",
        containers=(("app", "busybox"), ("app-pause", "busybox")),
        annotations={f"{P}/smart-limit": "true", f"{P}/auto-iops": "50", f"{P}/auto-bps": "0"},
    )
    p = plan(obj)
    app, excluded = only(p, "app"), only(p, "app-pause")
    assert app.resolution is not None and app.resolution.limits.riops == 50
    assert excluded.resolution is not None and excluded.resolution.limits == CEILINGS


def test_exclusion_never_loosens_beyond_the_ceiling_property() -> None:
    @given(
        name=st.sampled_from(["app", "app-pause", "istio-proxy", "apisix-gw", "x-psmdb"]),
        image=st.sampled_from(["busybox", "reg/apisix/x:1", "pause:3.9"]),
        labelled=st.booleans(),
        iops=st.sampled_from(["0", "1", "100", "5000", "bad", None]),
    )
    def check(name: str, image: str, labelled: bool, iops: str | None) -> None:
        annotations = {f"{P}/iops": iops} if iops is not None else {}
        labels = {"diskguard.io/exclude": "true"} if labelled else {}
        obj = make_pod("w", containers=((name, image),), annotations=annotations, labels=labels)
        c = only(plan(obj), name)
        assert c.resolution is not None
        for field, ceiling in CEILINGS.as_dict().items():
            got = getattr(c.resolution.limits, field)
            if ceiling:
                assert 0 < got <= ceiling, (field, got)

    check()


# -- every container that runs --------------------------------------------------------------


def test_every_running_container_kind_is_planned_with_the_pods_limits() -> None:
    obj = make_pod(
        "p",
        containers=(("app", "busybox"),),
        sidecars=(("mesh", "envoy:1"),),
        init_containers=(("setup", "busybox"),),
        ephemeral=(("debugger", "busybox"),),
        annotations={f"{P}/write-iops": "70"},
    )
    p = plan(obj)
    kinds = {c.ref.container: c.kind for c in p.containers}
    # The completed init container has no cgroup any more: not planned.
    assert kinds == {
        "app": ContainerKind.REGULAR,
        "mesh": ContainerKind.SIDECAR,
        "debugger": ContainerKind.EPHEMERAL,
    }
    for c in p.containers:
        assert c.enforcement is Enforcement.POD_LIMITS
        assert c.resolution is not None
        assert c.resolution.limits == IOLimits(500, 70, 0, CEILINGS.wbps)


def test_a_running_init_container_is_planned_and_the_waiting_ones_are_not() -> None:
    obj = make_pod(
        "p",
        phase="Pending",
        init_containers=(("fetch", "busybox"), ("migrate", "busybox"), ("warm", "busybox")),
        sidecars=(("log-shipper", "fluent-bit:3"),),
        running_init="migrate",
    )
    p = plan(obj)
    assert {c.ref.container: c.kind for c in p.containers} == {
        "migrate": ContainerKind.INIT,
        "log-shipper": ContainerKind.SIDECAR,
    }


def test_sidecar_and_ephemeral_containers_are_subject_to_exclusion_rules_too() -> None:
    obj = make_pod(
        "p",
        sidecars=(("istio-proxy", "istio/proxyv2:1.20"),),
        ephemeral=(("dbg", "reg/apisix/tools:1"),),
    )
    p = plan(obj)
    for name in ("istio-proxy", "dbg"):
        c = only(p, name)
        assert c.enforcement is Enforcement.CEILINGS
        assert c.resolution is not None and c.resolution.limits == CEILINGS


def test_parse_pod_reads_every_container_list() -> None:
    obj = make_pod(
        "p",
        sidecars=(("mesh", "envoy:1"),),
        init_containers=(("setup", "busybox"),),
        ephemeral=(("debugger", "busybox:1"),),
    )
    pod = parse_pod(obj)
    by_name = {c.name: c for c in pod.containers}
    assert by_name["mesh"].kind is ContainerKind.SIDECAR and by_name["mesh"].running
    assert by_name["setup"].kind is ContainerKind.INIT and not by_name["setup"].running
    assert by_name["debugger"].kind is ContainerKind.EPHEMERAL and by_name["debugger"].running
    assert by_name["debugger"].image == "busybox:1"
    assert all(c.container_id for c in pod.containers)


def test_parse_pod_ephemeral_status_without_spec_is_ignored() -> None:
    """A status entry is joined to a spec entry by name; a stray status gives no container."""
    obj = make_pod("p")
    obj["status"]["ephemeralContainerStatuses"] = [
        {"name": "ghost", "state": {"running": {}}, "containerID": "containerd://" + "a" * 64}
    ]
    assert [c.name for c in parse_pod(obj).containers] == ["app"]


def test_make_pod_running_init_is_validated() -> None:
    with pytest.raises(ValueError, match="running_init"):
        make_pod("p", init_containers=(("a", "x"),), running_init="a")  # not Pending
    with pytest.raises(ValueError, match="running_init"):
        make_pod("p", phase="Pending", init_containers=(("a", "x"),), running_init="b")
    with pytest.raises(ValueError, match="unique"):
        make_pod("p", sidecars=(("app", "x"),))


def test_make_pod_shapes_sidecars_and_ephemeral_containers_like_the_api() -> None:
    obj = make_pod("p", sidecars=(("mesh", "envoy:1"),), ephemeral=(("dbg", "busybox"),))
    [mesh] = obj["spec"]["initContainers"]
    assert mesh["restartPolicy"] == "Always"
    [dbg] = obj["spec"]["ephemeralContainers"]
    assert dbg["targetContainerName"] == "app" and "resources" not in dbg
    [dbg_status] = obj["status"]["ephemeralContainerStatuses"]
    assert "running" in dbg_status["state"] and dbg_status["containerID"].startswith(
        "containerd://"
    )


def test_the_desired_limits_are_per_device_the_same_on_every_data_disk() -> None:
    disks = (Device(8, 0, "sda"), Device(8, 16, "sdb"))
    pod = parse_pod(make_pod("web", annotations={f"{P}/iops": "300"}))
    [limited] = plan_pod(
        pod, prefix=P, defaults=DEFAULTS, exclusion=FILTER, previous=None, devices=disks
    ).containers
    assert [d for d, _ in limited.desired.devices] == list(disks)
    for disk in disks:
        wanted = limited.desired.get(disk)
        assert wanted is not None and wanted.against(IOLimits()) == IOLimits(300, 300)
    assert limited.desired.get(Device(9, 0)) is None  # not a data disk: left alone
    exempt = plan_pod(
        parse_pod(make_pod("sys", "kube-system")),
        prefix=P,
        defaults=DEFAULTS,
        exclusion=FILTER,
        previous=None,
        devices=disks,
    ).containers[0]
    assert exempt.enforcement is Enforcement.EXEMPT
    assert all(w == DeviceLimits() for _, w in exempt.desired.devices)


# -- percentages of each disk's capacity ----------------------------------------------------

FAST = Device(259, 0, "nvme0n1")
SLOWER = Device(8, 16, "sdb")
# Measured (or declared) per disk: read and write IOPS, read and write bytes/s.
CAPACITY = {FAST: IOLimits(8000, 2000, 2 * 2**30, 2**30), SLOWER: IOLimits(1200, 800, 0, 0)}


def plan_on_disks(
    annotations: dict[str, str],
    *,
    capacity: dict[Device, IOLimits] = CAPACITY,
    defaults: IOLimits | LimitSettings = DEFAULTS,
    guardrails: Guardrails = Guardrails(),
    ns_annotations: dict[str, str] | None = None,
    previous: KeyMemory | None = None,
    containers: tuple[tuple[str, str], ...] = (("app", "busybox"),),
) -> PodPlan:
    pod = parse_pod(make_pod("web", "team", annotations=annotations, containers=containers))
    disks = tuple(capacity)
    ns = None
    if ns_annotations is not None:
        ns = namespace_policy("team", ns_annotations, P, None, capacity)
    return plan_pod(
        pod,
        prefix=P,
        defaults=defaults,
        exclusion=FILTER,
        previous=previous,
        namespace=ns,
        guardrails=guardrails,
        devices=disks,
        capacity=capacity,
    )


def on(c: ContainerPlan, device: Device) -> IOLimits:
    wanted = c.desired.get(device)
    assert wanted is not None
    return wanted.against(IOLimits())


def test_two_disks_of_different_speeds_get_the_same_share_of_each() -> None:
    p = plan_on_disks({f"{P}/write-iops": "25%", f"{P}/read-iops": "10%"})
    [app] = p.containers
    assert on(app, FAST) == IOLimits(800, 500)
    assert on(app, SLOWER) == IOLimits(120, 200)
    # The pod's resolution (Events, /status, smart limit) is the first data disk's.
    assert p.resolution.limits == IOLimits(800, 500)
    assert p.resolution.sources[LimitField.WIOPS] == (
        f"annotation {P}/write-iops (25% of 2000 on 259:0)"
    )
    slower = app.resolution_on(SLOWER)
    assert slower is not None
    assert slower.sources[LimitField.WIOPS] == f"annotation {P}/write-iops (25% of 800 on 8:16)"
    assert source_kind(slower.origins[LimitField.WIOPS]) == "annotation"
    assert p.resolution.memory["write-iops"] == Share(Decimal(25))


def test_a_combined_key_sets_both_directions_from_their_own_capacity() -> None:
    [app] = plan_on_disks({f"{P}/iops": "50%"}).containers
    assert on(app, FAST) == IOLimits(4000, 1000)
    assert on(app, SLOWER) == IOLimits(600, 400)


def test_absolute_values_are_resolved_once_for_every_disk() -> None:
    p = plan_on_disks({f"{P}/write-iops": "300"}, guardrails=Guardrails(CEILINGS))
    [app] = p.containers
    assert app.per_device == ()
    assert app.desired == DesiredLimits.same(tuple(CAPACITY), device_limits(p.resolution))
    assert app.resolution_on(SLOWER) is app.resolution


def test_a_percentage_ceiling_clamps_an_absolute_request_per_disk() -> None:
    ceilings = LimitSettings(wiops=Share(Decimal(50)))
    p = plan_on_disks({f"{P}/write-iops": "600"}, guardrails=Guardrails(ceilings))
    [app] = p.containers
    assert on(app, FAST).wiops == 600  # under 50 % of 2000
    assert on(app, SLOWER).wiops == 400  # 50 % of 800
    slower = app.resolution_on(SLOWER)
    assert slower is not None
    assert [(c.key, c.asked, c.enforced) for c in slower.clamps] == [(f"{P}/write-iops", 600, 400)]
    assert slower.sources[LimitField.WIOPS] == (
        f"annotation {P}/write-iops, clamped to the env ceiling "
        "LIMIT_CEILING_WRITE_IOPS=400 (50% of 800 on 8:16)"
    )
    # Nothing clamped on the first disk; the pod's clamps still say what the other clamped.
    [clamp] = p.resolution.clamps
    assert (clamp.device, clamp.asked, clamp.enforced) == (SLOWER, 600, 400)
    assert clamp.why == slower.sources[LimitField.WIOPS]


def test_a_namespace_ceiling_fails_closed_on_a_disk_of_unknown_capacity() -> None:
    """A remembered namespace `max-*` percentage, then a data disk nobody measured: the
    ceiling there is the share of the slowest known disk's capacity, never none."""
    ns = {f"{P}/max-iops": "10%"}
    first = namespace_policy("team", ns, P, None, CAPACITY)
    new_disk = Device(8, 32, "sdc")
    capacity = {**CAPACITY, new_disk: IOLimits()}
    later = namespace_policy("team", ns, P, first.memory, capacity)
    assert "iops" in later.maxima.parsed.invalid  # a disk without capacity: said, kept
    pod = parse_pod(make_pod("web", "team", annotations={f"{P}/iops": "0"}))
    p = plan_pod(
        pod,
        prefix=P,
        defaults=DEFAULTS,
        exclusion=FILTER,
        previous=None,
        namespace=later,
        devices=tuple(capacity),
        capacity=capacity,
    )
    [app] = p.containers
    assert on(app, FAST) == IOLimits(800, 200)
    assert on(app, SLOWER) == IOLimits(120, 80)
    # Unlimited asked, 10 % of the slowest known disk (1,200 read, 800 write IOPS) enforced.
    assert on(app, new_disk) == IOLimits(120, 80)


def test_the_same_limits_on_every_disk_are_not_repeated_per_disk() -> None:
    same = {FAST: IOLimits(1000, 1000), SLOWER: IOLimits(1000, 1000)}
    [app] = plan_on_disks({f"{P}/write-iops": "25%"}, capacity=same).containers
    assert on(app, FAST) == on(app, SLOWER) == IOLimits(500, 250)
    assert app.per_device == ()


def test_a_percentage_request_above_an_absolute_ceiling_is_clamped_and_says_so() -> None:
    p = plan_on_disks({f"{P}/write-iops": "100%"}, guardrails=Guardrails(IOLimits(wiops=1000)))
    [clamp] = p.resolution.clamps
    assert (clamp.asked, clamp.enforced, clamp.share) == (2000, 1000, Share(Decimal(100)))
    assert on(p.containers[0], SLOWER).wiops == 800


def test_a_percentage_env_default_applies_per_disk() -> None:
    defaults = LimitSettings(riops=500, wiops=Share(Decimal(10)))
    p = plan_on_disks({}, defaults=defaults)
    [app] = p.containers
    assert (on(app, FAST), on(app, SLOWER)) == (IOLimits(500, 200), IOLimits(500, 80))
    assert p.resolution.sources[LimitField.WIOPS] == "env default (10% of 2000 on 259:0)"
    assert not p.resolution.annotation_driven


def test_a_namespace_default_and_ceiling_as_percentages() -> None:
    ns = {f"{P}/default-write-iops": "10%", f"{P}/max-read-iops": "5%"}
    p = plan_on_disks({f"{P}/read-iops": "900"}, ns_annotations=ns)
    [app] = p.containers
    assert on(app, FAST) == IOLimits(400, 200)  # 900 asked, 5 % of 8000 = 400
    assert on(app, SLOWER) == IOLimits(60, 80)
    assert p.resolution.sources[LimitField.WIOPS] == (
        f"namespace annotation {P}/default-write-iops (10% of 2000 on 259:0)"
    )
    assert (
        "namespace ceiling iops-limit/max-read-iops=400 (5% of 8000 on 259:0)"
        in (p.resolution.sources[LimitField.RIOPS])
    )


def test_excluded_containers_are_held_to_each_disks_percentage_ceiling() -> None:
    ceilings = LimitSettings(riops=1000, wiops=Share(Decimal(50)))
    p = plan_on_disks(
        {}, guardrails=Guardrails(ceilings), containers=(("app", "x"), ("app-pause", "x"))
    )
    excluded = only(p, "app-pause")
    assert excluded.enforcement is Enforcement.CEILINGS
    assert (on(excluded, FAST), on(excluded, SLOWER)) == (IOLimits(1000, 1000), IOLimits(1000, 400))


# A disk that `diskguard profile` has not measured, with nothing declared.
UNMEASURED = {FAST: CAPACITY[FAST], SLOWER: IOLimits()}


def test_a_percentage_with_a_disk_of_unknown_capacity_is_invalid_and_the_last_good_stays() -> None:
    p = plan_on_disks({f"{P}/write-iops": "25%"}, capacity=UNMEASURED, previous={"write-iops": 70})
    [bad] = p.parsed.invalid.values()
    assert (bad.key, bad.value) == (f"{P}/write-iops", "25%")
    assert "IOPS capacity of sdb (8:16) is not known" in bad.reason
    assert "diskguard profile" in bad.reason and "SMART_LIMIT_DEVICE_IOPS" in bad.reason
    [app] = p.containers
    assert on(app, FAST).wiops == on(app, SLOWER).wiops == 70
    assert p.resolution.memory == {"write-iops": 70}
    assert "last good value" in p.resolution.sources[LimitField.WIOPS]


def test_a_percentage_with_a_disk_of_unknown_capacity_keeps_the_kernel_on_a_fresh_start() -> None:
    p = plan_on_disks({f"{P}/write-iops": "25%"}, capacity=UNMEASURED)
    assert p.parsed.invalid
    assert p.resolution.keep == frozenset({LimitField.WIOPS})
    for _, wanted in p.containers[0].desired.devices:
        assert wanted.against(IOLimits(wiops=42)).wiops == 42


def test_a_remembered_percentage_keeps_the_kernel_where_the_capacity_went() -> None:
    good = plan_on_disks({f"{P}/write-iops": "25%"})
    later = plan_on_disks(
        {f"{P}/write-iops": "25%"}, capacity=UNMEASURED, previous=good.resolution.memory
    )
    [app] = later.containers
    assert on(app, FAST).wiops == 500  # the last good 25 %, on the disk it can be resolved on
    slower = app.desired.get(SLOWER)
    assert slower is not None and LimitField.WIOPS in slower.keep
    assert slower.against(IOLimits(wiops=200)).wiops == 200
    # A bad value later: the last good percentage is still the one in force.
    bad = plan_on_disks({f"{P}/write-iops": "lots"}, previous=good.resolution.memory)
    assert on(bad.containers[0], SLOWER).wiops == 200


def test_a_namespace_percentage_without_capacity_is_ignored_on_first_sight() -> None:
    ns = {f"{P}/default-write-iops": "10%"}
    policy = namespace_policy("team", ns, P, None, UNMEASURED)
    assert "write-iops" in policy.defaults.parsed.invalid
    p = plan_on_disks({}, capacity=UNMEASURED, ns_annotations=ns)
    assert on(p.containers[0], SLOWER) == DEFAULTS


def test_a_declared_capacity_resolves_what_no_measurement_covers() -> None:
    declared = disk_capacities(tuple(CAPACITY), {FAST: CAPACITY[FAST]}, IOLimits.per_unit(400, 0))
    [app] = plan_on_disks({f"{P}/write-iops": "25%"}, capacity=declared).containers
    assert (on(app, FAST).wiops, on(app, SLOWER).wiops) == (500, 100)


def test_percentages_on_v2_are_raised_to_the_kernels_minimum() -> None:
    pod = parse_pod(make_pod("web", annotations={f"{P}/write-iops": "0.01%"}))
    p = plan_pod(
        pod,
        prefix=P,
        defaults=DEFAULTS,
        exclusion=FILTER,
        previous=None,
        cgroup_version=CgroupVersion.V2,
        devices=(SLOWER,),
        capacity={SLOWER: IOLimits(100, 100)},
    )
    assert p.resolution.limits.wiops == 2 and p.resolution.raised == {LimitField.WIOPS}


def test_a_pod_with_percentages_and_no_data_disk_is_planned_without_error() -> None:
    p = plan_on_disks({f"{P}/write-iops": "25%"}, capacity={})
    assert "no data disk is known" in p.parsed.invalid["write-iops"].reason
    assert p.containers[0].desired.devices == ()


def test_percentages_resolve_within_the_kernels_bounds_property() -> None:
    @given(
        percent=st.integers(1, 10_000).map(lambda h: f"{Decimal(h) / 100}%"),
        fast=st.integers(1, 2**40),
        slow=st.integers(1, 2**40),
    )
    def check(percent: str, fast: int, slow: int) -> None:
        capacity = {FAST: IOLimits.per_unit(fast, fast), SLOWER: IOLimits.per_unit(slow, slow)}
        p = plan_on_disks({f"{P}/write-iops": percent, f"{P}/bps": percent}, capacity=capacity)
        assert not p.parsed.invalid
        for device, wanted in p.containers[0].desired.devices:
            limits = wanted.against(IOLimits())
            cap = capacity[device].wiops
            assert 1 <= limits.wiops <= min(max(1, cap), MAX_IOPS)
            assert 1 <= limits.rbps <= max(1, cap)

    check()
