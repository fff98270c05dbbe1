"""Pure decision: which IO limits a pod's containers should have, and why.

Priority per direction: the direction's own key (`read-iops`) > the combined key (`iops`)
> the env default. A key whose value is invalid never lowers protection: its last good
value (remembered across updates) stays in force; if this process has never seen a good
value for it (fresh start), the kernel's current value is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from diskguard.annotations import FIELD_KEYS, AnnotationLimits
from diskguard.model import LIMIT_FIELDS, IOLimits

# Memory of a pod's limit keys: suffix -> last good value, or None when the last good value
# is unknown to this process (the kernel's value is kept). A suffix missing from the mapping
# was absent, so the next key in priority order decides.
KeyMemory = Mapping[str, int | None]


@attrs.frozen
class Resolution:
    """The limits a pod asks for, per IOLimits field, with where each one came from."""

    # For fields in `keep`, the value used only where the kernel holds no limit yet.
    limits: IOLimits
    keep: frozenset[str] = frozenset()
    sources: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    memory: KeyMemory = attrs.field(factory=dict, hash=False)

    @property
    def annotation_driven(self) -> bool:
        return any(src != "default" for src in self.sources.values())

    def describe(self) -> str:
        """One line for Events and logs: `riops=100 (annotation iops-limit/iops), ...`."""
        parts = []
        for field in LIMIT_FIELDS:
            value = getattr(self.limits, field)
            shown = "kept" if field in self.keep else (str(value) if value else "unlimited")
            parts.append(f"{field}={shown} ({self.sources.get(field, '?')})")
        return ", ".join(parts)


def resolve_limits(
    parsed: AnnotationLimits,
    prefix: str,
    defaults: IOLimits,
    previous: KeyMemory | None,
) -> Resolution:
    """Resolve one pod's limits. `previous` is None for a pod this process has not seen."""
    memory: dict[str, int | None] = {}
    for suffix in {s for keys in FIELD_KEYS.values() for s in keys}:
        if suffix in parsed.values:
            memory[suffix] = parsed.values[suffix]
        elif suffix in parsed.invalid:
            memory[suffix] = previous.get(suffix) if previous is not None else None
            if previous is not None and suffix not in previous:
                # The key was absent before and is bad now: what was in force (the next key
                # in priority order) stays, so remember nothing for it.
                del memory[suffix]

    values: dict[str, int] = {}
    keep: set[str] = set()
    sources: dict[str, str] = {}
    for field in LIMIT_FIELDS:
        chosen: int | None = None
        for suffix in FIELD_KEYS[field]:
            if suffix in parsed.values:
                chosen = parsed.values[suffix]
                source = f"annotation {prefix}/{suffix}"
            elif suffix in parsed.invalid and suffix in memory:
                remembered = memory[suffix]
                bad = parsed.invalid[suffix]
                if remembered is None:
                    keep.add(field)
                    sources[field] = f"kept from the kernel: {bad.key} is invalid"
                    continue  # the fallback below only applies where the kernel has none
                chosen = remembered
                source = f"last good value of {prefix}/{suffix}"
            else:
                continue
            break
        if chosen is None:
            chosen = getattr(defaults, field)
            source = "default"
        values[field] = chosen
        sources.setdefault(field, source)
    return Resolution(
        limits=IOLimits(**values), keep=frozenset(keep), sources=sources, memory=memory
    )


def limits_to_enforce(resolution: Resolution, kernel: IOLimits) -> IOLimits:
    """Fold the kernel's current values into the fields the resolution keeps."""
    if not resolution.keep:
        return resolution.limits
    values = resolution.limits.as_dict()
    for field in resolution.keep:
        held = getattr(kernel, field)
        if held:
            values[field] = held
    return IOLimits(**values)
