"""Annotation priority, defaults, and what happens to invalid values (pure)."""

from collections.abc import Mapping

from diskguard.annotations import parse_limit_annotations
from diskguard.model import IOLimits
from diskguard.policy import KeyMemory, Resolution, limits_to_enforce, resolve_limits

P = "iops-limit"
DEFAULTS = IOLimits(riops=500, wiops=500, rbps=0, wbps=0)


def resolve(annotations: Mapping[str, str], previous: KeyMemory | None = None) -> Resolution:
    return resolve_limits(parse_limit_annotations(annotations, P), P, DEFAULTS, previous)


def test_no_annotations_gives_env_defaults() -> None:
    res = resolve({})
    assert res.limits == DEFAULTS
    assert set(res.sources.values()) == {"default"}
    assert not res.annotation_driven


def test_direction_key_beats_combined_key_beats_default() -> None:
    res = resolve({f"{P}/iops": "300", f"{P}/read-iops": "100", f"{P}/bps": "10Mi"})
    assert res.limits == IOLimits(riops=100, wiops=300, rbps=10 * 2**20, wbps=10 * 2**20)
    assert res.sources["riops"] == f"annotation {P}/read-iops"
    assert res.sources["wiops"] == f"annotation {P}/iops"


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
    assert "last good value" in bad.sources["wiops"]
    # and it keeps being remembered while the value stays bad
    still = resolve({f"{P}/write-iops": "-5"}, previous=bad.memory)
    assert still.limits.wiops == 100


def test_invalid_value_on_first_sight_keeps_the_kernel_value() -> None:
    res = resolve({f"{P}/write-iops": "1.5", f"{P}/iops": "300"})
    assert res.keep == frozenset({"wiops"})
    assert res.limits.wiops == 300  # only where the kernel holds nothing
    assert limits_to_enforce(res, IOLimits(wiops=42)).wiops == 42
    assert limits_to_enforce(res, IOLimits()).wiops == 300
    assert "kernel" in res.sources["wiops"]
    # still unknown on the next update, so the kernel's value is still kept
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
    assert "wbps=unlimited (default)" in text
