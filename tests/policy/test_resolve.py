"""Annotation priority, defaults, namespace policy, ceilings, invalid values (pure)."""

from collections.abc import Mapping
from decimal import Decimal

from diskguard.model import Device, IOLimits, LimitField
from diskguard.policy.resolve import (
    Guardrails,
    KeyMemory,
    NamespacePolicy,
    Resolution,
    device_limits,
    key_set,
    namespace_policy,
    resolve_limits,
)
from diskguard.policy.values import Share

P = "iops-limit"
DEFAULTS = IOLimits(riops=500, wiops=500, rbps=0, wbps=0)


def resolve(
    annotations: Mapping[str, str],
    previous: KeyMemory | None = None,
    *,
    namespace: NamespacePolicy | None = None,
    guardrails: Guardrails = Guardrails(),
    pod_namespace: str = "team-a",
) -> Resolution:
    return resolve_limits(
        key_set(annotations, P, previous),
        DEFAULTS,
        namespace=namespace,
        guardrails=guardrails,
        pod_namespace=pod_namespace,
    )


def ns(
    annotations: Mapping[str, str], previous: tuple[KeyMemory, KeyMemory] | None = None
) -> NamespacePolicy:
    return namespace_policy("team-a", annotations, P, previous)


def test_no_annotations_gives_env_defaults() -> None:
    res = resolve({})
    assert res.limits == DEFAULTS
    assert set(res.sources.values()) == {"env default"}
    assert not res.annotation_driven


def test_direction_key_beats_combined_key_beats_default() -> None:
    res = resolve({f"{P}/iops": "300", f"{P}/read-iops": "100", f"{P}/bps": "10Mi"})
    assert res.limits == IOLimits(riops=100, wiops=300, rbps=10 * 2**20, wbps=10 * 2**20)
    assert res.sources[LimitField.RIOPS] == f"annotation {P}/read-iops"
    assert res.sources[LimitField.WIOPS] == f"annotation {P}/iops"


def test_zero_removes_the_limit_in_that_direction() -> None:
    res = resolve({f"{P}/write-iops": "0"})
    assert res.limits == IOLimits(riops=500, wiops=0)


def test_other_prefixes_and_unknown_keys_are_ignored() -> None:
    res = resolve({"other/iops": "1", f"{P}/smart-limit": "true", f"{P}/iopsx": "5"})
    assert res.limits == DEFAULTS


def test_invalid_value_keeps_the_last_good_value() -> None:
    good = resolve({f"{P}/write-iops": "100"})
    bad = resolve({f"{P}/write-iops": "abc"}, previous=good.memory)
    assert bad.limits.wiops == 100
    assert "last good value" in bad.sources[LimitField.WIOPS]
    still = resolve({f"{P}/write-iops": "-5"}, previous=bad.memory)
    assert still.limits.wiops == 100


def test_invalid_value_on_first_sight_keeps_the_kernel_value() -> None:
    res = resolve({f"{P}/write-iops": "1.5", f"{P}/iops": "300"})
    assert res.keep == frozenset({"wiops"})
    assert res.limits.wiops == 300  # only where the kernel holds nothing
    assert device_limits(res).against(IOLimits(wiops=42)).wiops == 42
    assert device_limits(res).against(IOLimits()).wiops == 300
    assert "kernel" in res.sources[LimitField.WIOPS]
    again = resolve({f"{P}/write-iops": "1.5", f"{P}/iops": "300"}, previous=res.memory)
    assert again.keep == frozenset({"wiops"})


def test_bad_value_for_a_key_that_was_absent_keeps_what_was_in_force() -> None:
    before = resolve({f"{P}/iops": "200"})
    after = resolve({f"{P}/iops": "200", f"{P}/read-iops": "lots"}, previous=before.memory)
    assert after.limits.riops == 200
    assert not after.keep


def test_fixing_the_value_applies_it() -> None:
    bad = resolve({f"{P}/write-iops": "abc"}, previous={"write-iops": 100})
    fixed = resolve({f"{P}/write-iops": "70"}, previous=bad.memory)
    assert fixed.limits.wiops == 70
    assert fixed.memory["write-iops"] == 70


def test_removing_annotations_returns_to_defaults() -> None:
    res = resolve({}, previous={"write-iops": 100})
    assert res.limits == DEFAULTS
    assert res.memory == {}


def test_describe_names_every_field_and_source() -> None:
    text = resolve({f"{P}/read-bps": "1Mi"}).describe()
    assert "rbps=1048576 (annotation iops-limit/read-bps)" in text
    assert "wbps=unlimited (env default)" in text


# ---------------------------------------------------------------- guardrails


CEIL = Guardrails(ceilings=IOLimits(riops=1000, wiops=1000, rbps=0, wbps=50 * 2**20))


def test_ceiling_clamps_a_request_above_it_and_says_so() -> None:
    res = resolve({f"{P}/write-iops": "5000"}, guardrails=CEIL)
    assert res.limits.wiops == 1000
    assert (
        "clamped" in res.sources[LimitField.WIOPS]
        and "LIMIT_CEILING_WRITE_IOPS=1000" in res.sources[LimitField.WIOPS]
    )
    assert [(c.field, c.key, c.asked, c.enforced) for c in res.clamps] == [
        ("wiops", f"{P}/write-iops", 5000, 1000)
    ]


def test_ceiling_clamps_unlimited() -> None:
    res = resolve({f"{P}/iops": "0", f"{P}/write-bps": "0"}, guardrails=CEIL)
    assert res.limits == IOLimits(riops=1000, wiops=1000, rbps=0, wbps=50 * 2**20)
    assert {c.field for c in res.clamps} == {"riops", "wiops", "wbps"}


def test_request_below_the_ceiling_is_untouched() -> None:
    res = resolve({f"{P}/write-iops": "10"}, guardrails=CEIL)
    assert res.limits.wiops == 10 and not res.clamps


def test_defaults_above_a_ceiling_are_clamped_without_a_clamp_event() -> None:
    low = Guardrails(ceilings=IOLimits(riops=100))
    res = resolve({}, guardrails=low)
    assert res.limits.riops == 100
    assert not res.clamps


def test_allowed_namespace_may_ask_for_unlimited() -> None:
    guard = Guardrails(ceilings=CEIL.ceilings, allow_unlimited_namespaces=frozenset({"batch"}))
    res = resolve({f"{P}/iops": "0"}, guardrails=guard, pod_namespace="batch")
    assert (res.limits.riops, res.limits.wiops) == (0, 0)
    other = resolve({f"{P}/iops": "0"}, guardrails=guard, pod_namespace="web")
    assert (other.limits.riops, other.limits.wiops) == (1000, 1000)


def test_namespace_default_replaces_the_env_default() -> None:
    policy = ns({f"{P}/default-iops": "200", f"{P}/default-write-iops": "50"})
    res = resolve({}, namespace=policy)
    assert (res.limits.riops, res.limits.wiops) == (200, 50)
    assert res.sources[LimitField.WIOPS] == f"namespace annotation {P}/default-write-iops"
    # the pod's own annotation still wins
    assert resolve({f"{P}/write-iops": "70"}, namespace=policy).limits.wiops == 70


def test_namespace_ceiling_tightens_the_env_ceiling() -> None:
    policy = ns({f"{P}/max-write-iops": "300"})
    res = resolve({f"{P}/write-iops": "900"}, namespace=policy, guardrails=CEIL)
    assert res.limits.wiops == 300
    assert "namespace ceiling" in res.sources[LimitField.WIOPS]
    # a looser namespace ceiling does not loosen the env one
    loose = ns({f"{P}/max-iops": "5000"})
    assert resolve({f"{P}/iops": "4000"}, namespace=loose, guardrails=CEIL).limits.wiops == 1000


def test_namespace_ceiling_applies_in_allowed_namespaces_too() -> None:
    guard = Guardrails(allow_unlimited_namespaces=frozenset({"team-a"}))
    res = resolve({f"{P}/iops": "0"}, namespace=ns({f"{P}/max-iops": "400"}), guardrails=guard)
    assert (res.limits.riops, res.limits.wiops) == (400, 400)


def test_bad_namespace_key_keeps_the_last_good_policy() -> None:
    good = ns({f"{P}/max-write-iops": "300"})
    bad = ns({f"{P}/max-write-iops": "lots"}, previous=good.memory)
    assert resolve({f"{P}/write-iops": "900"}, namespace=bad).limits.wiops == 300
    assert bad.maxima.parsed.invalid  # so the agent can warn on the Namespace


def test_bad_namespace_key_on_first_sight_is_ignored() -> None:
    bad = ns({f"{P}/default-iops": "x"})
    assert resolve({}, namespace=bad).limits == DEFAULTS


def test_kept_kernel_value_is_clamped_too() -> None:
    res = resolve({f"{P}/write-iops": "abc"}, guardrails=CEIL)
    assert device_limits(res).against(IOLimits(wiops=0)).wiops == 500  # nothing held: fallback
    assert device_limits(res).against(IOLimits(wiops=7000)).wiops == 1000
    assert device_limits(res).against(IOLimits(wiops=70)).wiops == 70


# ---------------------------------------------------------------- percentages, on one disk

DISK = Device(259, 0, "nvme0n1")
KNOWN = {DISK: IOLimits(4000, 2000, 2**30, 2**29)}


def test_a_percentage_is_resolved_against_the_disk_given() -> None:
    keys = key_set({f"{P}/write-iops": "25%", f"{P}/bps": "50%"}, P, None, capacity=KNOWN)
    res = resolve_limits(keys, DEFAULTS, device=DISK, capacity=KNOWN[DISK])
    assert res.limits == IOLimits(500, 500, 2**29, 2**28)
    assert res.sources[LimitField.RBPS] == f"annotation {P}/bps (50% of {2**30} on 259:0)"
    assert res.memory == {"write-iops": Share(Decimal(25)), "bps": Share(Decimal(50))}


def test_a_remembered_percentage_survives_a_bad_value() -> None:
    good = key_set({f"{P}/write-iops": "25%"}, P, None, capacity=KNOWN)
    bad = key_set({f"{P}/write-iops": "fast"}, P, good.memory, capacity=KNOWN)
    res = resolve_limits(bad, DEFAULTS, device=DISK, capacity=KNOWN[DISK])
    assert res.limits.wiops == 500
    assert res.sources[LimitField.WIOPS] == (
        f"last good value of {P}/write-iops (25% of 2000 on 259:0)"
    )


def test_a_percentage_is_invalid_without_the_disks_capacity() -> None:
    unknown = {DISK: IOLimits(4000, 0)}  # read IOPS known, write IOPS not
    assert "write-iops" not in key_set({f"{P}/read-iops": "5%"}, P, None, capacity=unknown).memory
    keys = key_set({f"{P}/iops": "5%"}, P, None, capacity=unknown)  # sets both directions
    assert keys.parsed.invalid["iops"].reason.startswith("5% is a share of each data disk")
    assert keys.memory == {"iops": None}


def test_a_percentage_needs_a_data_disk() -> None:
    keys = key_set({f"{P}/write-iops": "25%"}, P, None)
    assert "no data disk is known" in keys.parsed.invalid["write-iops"].reason
