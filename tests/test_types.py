"""The typed vocabulary of limits: LimitField, Source, render_limit (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import (
    MAX_BPS,
    MAX_IOPS,
    Direction,
    IOLimits,
    LimitField,
    LimitUnit,
    Rates,
)
from diskguard.policy.annotations import LIMIT_KEYS
from diskguard.policy.resolve import Guardrails, key_set, resolve_limits
from diskguard.policy.source import Source, SourceKind, SourceLabel
from diskguard.policy.values import Unlimited, limit_json, render_limit
from diskguard.tools.status import render

P = "iops-limit"


def test_limit_field_facts() -> None:
    facts = {
        f: (f.unit, f.direction, f.words, f.env_suffix, f.v1_knob, f.v2_key, f.kernel_max)
        for f in LimitField
    }
    assert facts == {
        LimitField.RIOPS: (
            LimitUnit.IOPS,
            Direction.READ,
            "read IOPS",
            "READ_IOPS",
            "blkio.throttle.read_iops_device",
            "riops",
            MAX_IOPS,
        ),
        LimitField.WIOPS: (
            LimitUnit.IOPS,
            Direction.WRITE,
            "write IOPS",
            "WRITE_IOPS",
            "blkio.throttle.write_iops_device",
            "wiops",
            MAX_IOPS,
        ),
        LimitField.RBPS: (
            LimitUnit.BPS,
            Direction.READ,
            "read B/s",
            "READ_BPS",
            "blkio.throttle.read_bps_device",
            "rbps",
            MAX_BPS,
        ),
        LimitField.WBPS: (
            LimitUnit.BPS,
            Direction.WRITE,
            "write B/s",
            "WRITE_BPS",
            "blkio.throttle.write_bps_device",
            "wbps",
            MAX_BPS,
        ),
    }


def test_annotation_keys_per_field() -> None:
    assert {k: fields for k, (_parse, fields) in LIMIT_KEYS.items()} == {
        "read-iops": (LimitField.RIOPS,),
        "write-iops": (LimitField.WIOPS,),
        "iops": (LimitField.RIOPS, LimitField.WIOPS),
        "read-bps": (LimitField.RBPS,),
        "write-bps": (LimitField.WBPS,),
        "bps": (LimitField.RBPS, LimitField.WBPS),
    }
    assert LimitField.WBPS.annotation_suffixes == ("write-bps", "bps")


_LIMIT = st.integers(min_value=0, max_value=MAX_BPS)


@given(st.builds(IOLimits, _LIMIT, _LIMIT, _LIMIT, _LIMIT), st.sampled_from(LimitField), _LIMIT)
def test_iolimits_accessors(limits: IOLimits, field: LimitField, value: int) -> None:
    assert limits.as_dict() == {
        "riops": limits.riops,
        "wiops": limits.wiops,
        "rbps": limits.rbps,
        "wbps": limits.wbps,
    }
    assert IOLimits.of(limits.as_dict()) == limits
    changed = limits.replace(field, value)
    assert changed.get(field) == value
    assert all(changed.get(f) == limits.get(f) for f in LimitField if f is not field)


def test_rates_accessors() -> None:
    rates = Rates(1.0, 2.0, 3.0, 4.0)
    assert [rates.get(f) for f in LimitField] == [1.0, 2.0, 3.0, 4.0]
    assert Rates.of({f: rates.get(f) for f in LimitField}) == rates


@pytest.mark.parametrize(
    ("value", "style", "shown"),
    [
        (0, Unlimited.WORDS, "unlimited"),
        (None, Unlimited.WORDS, "unlimited"),
        (0, Unlimited.KERNEL, "max"),
        (0, Unlimited.TABLE, "-"),
        (None, Unlimited.TABLE, "-"),
        (250, Unlimited.WORDS, "250"),
        (250, Unlimited.KERNEL, "250"),
        (250, Unlimited.TABLE, "250"),
    ],
)
def test_render_limit(value: int | None, style: Unlimited, shown: str) -> None:
    assert render_limit(value, style) == shown


def test_render_limit_number_format_and_json() -> None:
    assert render_limit(2048, Unlimited.TABLE, lambda v: f"{v // 1024}KiB") == "2KiB"
    assert render_limit(0, Unlimited.TABLE, lambda v: f"{v // 1024}KiB") == "-"
    assert limit_json(0) is None
    assert limit_json(7) == 7


def test_source_labels() -> None:
    def label(kind: SourceKind, *, clamped: bool = False) -> str:
        return Source(kind, "text", clamped=clamped).label

    assert label(SourceKind.ANNOTATION) == "annotation"
    assert label(SourceKind.LAST_GOOD) == "annotation"
    assert label(SourceKind.KERNEL) == "kernel"
    assert label(SourceKind.NAMESPACE) == "namespace"
    assert label(SourceKind.ENV_DEFAULT) == "default"
    assert label(SourceKind.SMART) == "smart"
    assert label(SourceKind.EXCLUDED) == "excluded"
    for kind in SourceKind:
        expected = "smart" if kind is SourceKind.SMART else "ceiling"
        assert label(kind, clamped=True) == expected
    assert {str(x) for x in SourceLabel} == {
        "annotation",
        "namespace",
        "default",
        "ceiling",
        "kernel",
        "smart",
        "excluded",
    }


def test_source_text_is_not_read_back() -> None:
    """Source text that reads like another kind (the old prose guess said "smart") does not
    change the kind or its label: they come from the enum."""
    prefix = "smart limit clamped namespace"
    keys = key_set({f"{prefix}/iops": "100"}, prefix, None)
    res = resolve_limits(keys, IOLimits(), guardrails=Guardrails())
    origin = res.origins[LimitField.RIOPS]
    assert origin.kind is SourceKind.ANNOTATION
    assert origin.label == "annotation"
    assert origin.key == f"{prefix}/iops"
    assert res.sources[LimitField.RIOPS] == f"annotation {prefix}/iops"


def test_origins_through_resolution() -> None:
    keys = key_set({f"{P}/read-iops": "5000", f"{P}/write-iops": "x"}, P, {"write-iops": 40})
    res = resolve_limits(
        keys, IOLimits(rbps=1 << 20), guardrails=Guardrails(ceilings=IOLimits(riops=1000))
    )
    kinds = {f: (o.kind, o.label) for f, o in res.origins.items()}
    assert kinds == {
        LimitField.RIOPS: (SourceKind.ANNOTATION, "ceiling"),
        LimitField.WIOPS: (SourceKind.LAST_GOOD, "annotation"),
        LimitField.RBPS: (SourceKind.ENV_DEFAULT, "default"),
        LimitField.WBPS: (SourceKind.ENV_DEFAULT, "default"),
    }
    assert res.sources[LimitField.RIOPS] == (
        f"annotation {P}/read-iops, clamped to the env ceiling LIMIT_CEILING_READ_IOPS=1000"
    )
    assert [(c.field, c.key, c.asked, c.enforced) for c in res.clamps] == [
        (LimitField.RIOPS, f"{P}/read-iops", 5000, 1000)
    ]


def test_status_summary_renders_limits_as_before() -> None:
    """`diskguard status`: limits in field order, unlimited (0 or null) as `-`."""
    lines: list[str] = []
    render(
        {
            "node": "n1",
            "ready": True,
            "version": "1",
            "cgroup": {"version": "v2"},
            "containers": [
                {
                    "namespace": "ns",
                    "pod": "p",
                    "container": "c",
                    "desired": {"limits": {"riops": 100, "wiops": None, "rbps": 0, "wbps": 2048}},
                    "kernel": {"8:0": {"riops": 100, "wiops": None, "rbps": None, "wbps": 2048}},
                    "in_sync": True,
                }
            ],
        },
        lines.append,
    )
    assert lines[2] == "limits as riops/wiops/rbps/wbps (- = none)"
    assert lines[4].split() == ["ns/p/c", "100/-/-/2048", "100/-/-/2048", "yes"]
