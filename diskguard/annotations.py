"""The pod annotations diskguard reads, and their parsing into per-key values or errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from diskguard.limitvalues import LimitValueError, parse_bps, parse_iops

# Annotation key suffix -> (parser, the IOLimits fields it sets). A direction-specific key
# outranks the combined key, which outranks the env default (see policy.resolve_limits).
LIMIT_KEYS: dict[str, tuple[Callable[[str], int], tuple[str, ...]]] = {
    "read-iops": (parse_iops, ("riops",)),
    "write-iops": (parse_iops, ("wiops",)),
    "iops": (parse_iops, ("riops", "wiops")),
    "read-bps": (parse_bps, ("rbps",)),
    "write-bps": (parse_bps, ("wbps",)),
    "bps": (parse_bps, ("rbps", "wbps")),
}

# For each IOLimits field, the keys that may set it, strongest first.
FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "riops": ("read-iops", "iops"),
    "wiops": ("write-iops", "iops"),
    "rbps": ("read-bps", "bps"),
    "wbps": ("write-bps", "bps"),
}


@attrs.frozen
class InvalidAnnotation:
    key: str  # full annotation key, prefix included
    value: str
    reason: str


@attrs.frozen
class AnnotationLimits:
    """What a pod's limit annotations say: good values by key suffix, and the bad ones."""

    values: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    invalid: Mapping[str, InvalidAnnotation] = attrs.field(factory=dict, hash=False)

    def present(self, suffix: str) -> bool:
        return suffix in self.values or suffix in self.invalid


def parse_limit_annotations(
    annotations: Mapping[str, str], prefix: str, stem: str = ""
) -> AnnotationLimits:
    """Pods use `prefix/read-iops`…; namespaces `prefix/default-read-iops` and
    `prefix/max-read-iops`… (stem `default-` / `max-`), parsed the same way."""
    values: dict[str, int] = {}
    invalid: dict[str, InvalidAnnotation] = {}
    for suffix, (parse, _fields) in LIMIT_KEYS.items():
        key = f"{prefix}/{stem}{suffix}"
        raw = annotations.get(key)
        if raw is None:
            continue
        try:
            values[suffix] = parse(raw)
        except LimitValueError as exc:
            invalid[suffix] = InvalidAnnotation(key=key, value=raw, reason=str(exc))
    return AnnotationLimits(values=values, invalid=invalid)
