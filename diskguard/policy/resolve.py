"""Pure decision: which IO limits a pod's containers should have, and why.

Per direction, the first of these that says something wins:
  the pod's direction key (`read-iops`) > the pod's combined key (`iops`)
  > the namespace's `default-read-iops` > `default-iops` > the env default.
Then the ceiling clamps it: the stricter of the env ceiling (`LIMIT_CEILING_*`, lifted for
pods in `ALLOW_UNLIMITED_NAMESPACES`) and the namespace's `max-*` keys. Unlimited (0) counts
as above any ceiling.

A pod key whose value is invalid never lowers protection: its last good value (remembered
across updates) stays in force; if this process never saw a good value (fresh start), the
kernel's current value is kept. An invalid namespace key keeps its last good value, or is
ignored on a fresh start (and a Warning Event on the Namespace says so).

A value may be a percentage of the disk's capacity (a `Share`, policy/shares.py): it is
resolved per data disk, before the priority chain, so everything after it compares numbers.
A remembered share on a disk whose capacity is no longer known counts as a bad value with
no good one seen: the kernel's value stays (a namespace key is ignored there).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from diskguard.model import Device, DeviceLimits, IOLimits, LimitField
from diskguard.policy.annotations import LIMIT_KEYS, AnnotationLimits, parse_limit_annotations
from diskguard.policy.shares import NO_DISKS, UNKNOWN, Capacities, share_text
from diskguard.policy.source import ENV_DEFAULT, Source, SourceKind
from diskguard.policy.values import LimitSettings, LimitValue, Share, render_limit

# Memory of a set of limit keys: suffix -> last good value (a number or a share), or None
# when the last good value is unknown to this process (the kernel's value is kept). A suffix
# missing from the mapping was absent, so the next key in priority order decides.
KeyMemory = Mapping[str, LimitValue | None]

SMART_LIMIT = Source(SourceKind.SMART, "smart limit")


@attrs.frozen
class Candidate:
    """One key's say on one field: a value, or None for "keep what the kernel holds"."""

    value: LimitValue | None
    source: Source
    share: Share | None = None  # on one disk: the share `value` was resolved from


@attrs.frozen
class Clamp:
    """A pod asked for more than its ceiling allows."""

    field: LimitField
    key: str
    asked: int  # 0 = unlimited
    enforced: int
    share: Share | None = None  # the percentage `asked` was resolved from
    # With percentages, on which data disk (None: the same on every one), and why there.
    device: Device | None = None
    why: str = ""


@attrs.frozen
class Resolution:
    """The limits a pod asks for, per IOLimits field, with where each one came from."""

    # For fields in `keep`, the value used only where the kernel holds no limit yet.
    limits: IOLimits
    keep: frozenset[LimitField] = frozenset()
    origins: Mapping[LimitField, Source] = attrs.field(factory=dict, hash=False)
    memory: KeyMemory = attrs.field(factory=dict, hash=False)
    ceilings: IOLimits = IOLimits()
    # Per field with a ceiling, which setting it comes from (env or namespace).
    ceiling_sources: Mapping[LimitField, str] = attrs.field(factory=dict, hash=False)
    clamps: tuple[Clamp, ...] = ()
    # The limits without the smart limit: the reference smart limit judges IO against.
    static: IOLimits = IOLimits()
    auto: IOLimits = IOLimits()  # the automatic limit in force (0 = none)
    # Fields whose limit was below the smallest the kernel accepts, raised to it (v2: 1 -> 2).
    raised: frozenset[LimitField] = frozenset()

    @property
    def sources(self) -> dict[LimitField, str]:
        """Per field, where its value came from, in words (for people: Events, /status)."""
        return {f: o.text for f, o in self.origins.items()}

    @property
    def annotation_driven(self) -> bool:
        """Anything but the plain env defaults (a default raised to the kernel's minimum
        counts too: the pod's Event says so)."""
        return bool(self.raised) or any(
            o.kind is not SourceKind.ENV_DEFAULT or o.clamped for o in self.origins.values()
        )

    def describe(self) -> str:
        """One line for Events and logs: `riops=100 (annotation iops-limit/iops), ...`."""
        parts = []
        for field in LimitField:
            shown = "kept" if field in self.keep else render_limit(self.limits.get(field))
            origin = self.origins.get(field)
            parts.append(f"{field}={shown} ({origin.text if origin else '?'})")
        return ", ".join(parts)


def _remember(parsed: AnnotationLimits, previous: KeyMemory | None) -> dict[str, LimitValue | None]:
    memory: dict[str, LimitValue | None] = {}
    for suffix in LIMIT_KEYS:
        if suffix in parsed.values:
            memory[suffix] = parsed.values[suffix]
        elif suffix in parsed.invalid:
            if previous is None:
                memory[suffix] = None
            elif suffix in previous:
                memory[suffix] = previous[suffix]
            # else: absent before and bad now; what was in force (the next key) stays.
    return memory


def _candidates(
    parsed: AnnotationLimits, memory: KeyMemory, key_of: Mapping[str, str], kind: SourceKind
) -> dict[LimitField, list[Candidate]]:
    """Per field, this layer's candidates in priority order."""
    what = "annotation" if kind is SourceKind.ANNOTATION else "namespace annotation"
    out: dict[LimitField, list[Candidate]] = {}
    for field in LimitField:
        chain = []
        for suffix in field.annotation_suffixes:
            key = key_of[suffix]
            if suffix in parsed.values:
                chain.append(Candidate(parsed.values[suffix], Source(kind, f"{what} {key}", key)))
            elif suffix in parsed.invalid and suffix in memory:
                remembered = memory[suffix]
                if remembered is None:
                    kept = Source(SourceKind.KERNEL, f"kept from the kernel: {key} is invalid", key)
                    chain.append(Candidate(None, kept))
                else:
                    good = Source(SourceKind.LAST_GOOD, f"last good value of {key}", key)
                    chain.append(Candidate(remembered, good))
        out[field] = chain
    return out


@attrs.frozen
class KeySet:
    """One set of limit keys (a pod's, a namespace's defaults or maxima), resolved."""

    parsed: AnnotationLimits
    memory: KeyMemory = attrs.field(hash=False)
    candidates: Mapping[LimitField, list[Candidate]] = attrs.field(hash=False)


def key_set(
    annotations: Mapping[str, str],
    prefix: str,
    previous: KeyMemory | None,
    *,
    stem: str = "",
    kind: SourceKind = SourceKind.ANNOTATION,
    capacity: Capacities = NO_DISKS,
) -> KeySet:
    """`kind`: ANNOTATION for a pod's keys, NAMESPACE for a namespace's. `capacity`: the
    data disks a percentage must be resolvable on (see `parse_limit_annotations`)."""
    parsed = parse_limit_annotations(annotations, prefix, stem, capacity)
    memory = _remember(parsed, previous)
    keys = {s: f"{prefix}/{stem}{s}" for s in LIMIT_KEYS}
    return KeySet(parsed, memory, _candidates(parsed, memory, keys, kind))


@attrs.frozen
class NamespacePolicy:
    """A namespace's own defaults and ceilings, from its annotations."""

    name: str
    defaults: KeySet
    maxima: KeySet

    @property
    def memory(self) -> tuple[KeyMemory, KeyMemory]:
        return (self.defaults.memory, self.maxima.memory)


def namespace_policy(
    name: str,
    annotations: Mapping[str, str],
    prefix: str,
    previous: tuple[KeyMemory, KeyMemory] | None,
    capacity: Capacities = NO_DISKS,
) -> NamespacePolicy:
    prev_defaults, prev_maxima = previous if previous is not None else (None, None)
    ns = SourceKind.NAMESPACE
    return NamespacePolicy(
        name=name,
        defaults=key_set(
            annotations, prefix, prev_defaults, stem="default-", kind=ns, capacity=capacity
        ),
        maxima=key_set(annotations, prefix, prev_maxima, stem="max-", kind=ns, capacity=capacity),
    )


@attrs.frozen
class Guardrails:
    """The administrator's side: env ceilings and where pods may ask for unlimited."""

    # 0 = no ceiling; a share is of each disk's capacity (config requires a declared one).
    ceilings: LimitSettings | IOLimits = IOLimits()
    allow_unlimited_namespaces: frozenset[str] = frozenset()


def _on_disk(
    candidate: Candidate, field: LimitField, capacity: int, device: Device | None
) -> Candidate:
    """`candidate` on one disk: a share turned into its number there; None ("keep what
    the kernel holds") where that disk's capacity is unknown."""
    share = candidate.value
    if not isinstance(share, Share):
        return candidate
    source = candidate.source
    if not capacity:
        where = f" on {device}" if device is not None else ""
        what = source.key or source.text
        text = f"kept from the kernel: {what}={share} has no known capacity{where}"
        return Candidate(None, Source(SourceKind.KERNEL, text, source.key))
    value = min(share.of(capacity), field.kernel_max)
    detail = share_text(share, capacity, device)
    return Candidate(value, attrs.evolve(source, text=f"{source.text} ({detail})"), share)


def _number(candidate: Candidate) -> int | None:
    """A candidate's value once `_on_disk` resolved it (never a share)."""
    value = candidate.value
    assert not isinstance(value, Share)
    return value


def resolve_limits(
    pod: KeySet,
    defaults: LimitSettings | IOLimits,
    *,
    namespace: NamespacePolicy | None = None,
    guardrails: Guardrails = Guardrails(),
    pod_namespace: str = "",
    auto: IOLimits = IOLimits(),
    auto_source: Source = SMART_LIMIT,
    device: Device | None = None,
    capacity: IOLimits = UNKNOWN,
    ceiling_capacity: IOLimits = UNKNOWN,
) -> Resolution:
    """Resolve one pod's limits from its keys, its namespace's policy, the env and the
    automatic (smart) limit, which can only make a limit stricter.

    `device` and its `capacity` (0 = unknown per field): the disk percentages are resolved
    on (plan.plan_pod resolves once per data disk when any value is a percentage). A
    percentage default on a disk of unknown capacity keeps the kernel's value (a pod key)
    or is skipped (a namespace key); a percentage ceiling there is resolved against
    `ceiling_capacity` instead (the slowest data disk whose capacity is known), so a
    ceiling fails closed: it never lapses for want of a capacity. Only when no disk's
    capacity is known at all is it no ceiling (the config's declared capacity rules that
    out for the env ceilings; a namespace key is then invalid, with an Event)."""
    values: dict[LimitField, int] = {}
    keep: set[LimitField] = set()
    sources: dict[LimitField, Source] = {}
    ceilings: dict[LimitField, int] = {}
    ceiling_sources: dict[LimitField, str] = {}
    clamps: list[Clamp] = []
    env_ceilings_apply = pod_namespace not in guardrails.allow_unlimited_namespaces
    for field in LimitField:
        cap = capacity.get(field)
        chain = [_on_disk(c, field, cap, device) for c in pod.candidates[field]]
        if namespace is not None:
            # A namespace key that is invalid with no good value seen is ignored.
            mine = (_on_disk(c, field, cap, device) for c in namespace.defaults.candidates[field])
            chain += [c for c in mine if c.value is not None]
        chain.append(_on_disk(Candidate(defaults.get(field), ENV_DEFAULT), field, cap, device))
        chosen = next((c for c in chain if c.value is not None), chain[-1])
        if chain[0].value is None:
            keep.add(field)
            sources[field] = chain[0].source
        value = _number(chosen) or 0  # nothing but kept values: unlimited where none is held

        # Where this disk's capacity is unknown, a percentage ceiling is of the slowest
        # known disk's: never more than it allows there.
        on = device if cap else None
        ceiling, ceiling_source = _ceiling(
            field, namespace, guardrails, env_ceilings_apply, cap or ceiling_capacity.get(field), on
        )
        ceilings[field] = ceiling
        if ceiling:
            ceiling_sources[field] = ceiling_source
        if ceiling and (value == 0 or value > ceiling):
            clamped = chosen.source.clamped_to(ceiling_source)
            if chosen.source.kind is SourceKind.ANNOTATION:
                clamps.append(
                    Clamp(
                        field,
                        chosen.source.key,
                        value,
                        ceiling,
                        chosen.share,
                        device,
                        clamped.text,
                    )
                )
            sources.setdefault(field, clamped)
            value = ceiling
        values[field] = value
        sources.setdefault(field, chosen.source)
    static = IOLimits.of(values)
    effective = static.stricter(auto)
    for field in LimitField:
        if effective.get(field) != static.get(field):
            sources[field] = auto_source
    return Resolution(
        limits=effective,
        static=static,
        auto=auto,
        keep=frozenset(keep),
        origins=sources,
        memory=pod.memory,
        ceilings=IOLimits.of(ceilings),
        ceiling_sources=ceiling_sources,
        clamps=tuple(clamps),
    )


def held_to_ceilings(resolution: Resolution, why: Source) -> Resolution:
    """The limits of a container that an exclusion rule a tenant can satisfy (a keyword in
    its name or image, its pod's labels, a regex on its names) exempts from the pod's
    limits: none of the defaults, none of the pod's annotations, no smart limit - but never
    more than the ceilings, which only the administrator's namespace settings lift (see
    `resolve_limits`: `ALLOW_UNLIMITED_NAMESPACES` drops the env ceilings).

    `why` starts every field's source; keep tenant-chosen text out of it (it is shown in
    Events and /status)."""
    ceilings = resolution.ceilings
    sources = {
        field: (
            why.clamped_to(resolution.ceiling_sources.get(field, "ceiling"))
            if ceilings.get(field)
            else why.noted("no ceiling")
        )
        for field in LimitField
    }
    return Resolution(
        limits=ceilings,
        static=ceilings,
        origins=sources,
        memory=resolution.memory,
        ceilings=ceilings,
        ceiling_sources=resolution.ceiling_sources,
    )


def _ceiling(
    field: LimitField,
    namespace: NamespacePolicy | None,
    guardrails: Guardrails,
    env_applies: bool,
    capacity: int,
    device: Device | None,
) -> tuple[int, str]:
    env, env_note = 0, ""
    if env_applies:
        setting = Candidate(guardrails.ceilings.get(field), ENV_DEFAULT)
        on_disk = _on_disk(setting, field, capacity, device)
        env = _number(on_disk) or 0
        if on_disk.share is not None:
            env_note = f" ({share_text(on_disk.share, capacity, device)})"
    maxima = [] if namespace is None else namespace.maxima.candidates[field]
    first = next(
        (c for c in (_on_disk(m, field, capacity, device) for m in maxima) if c.value is not None),
        None,
    )
    ns = 0 if first is None else _number(first) or 0
    if ns and (not env or ns < env):
        assert first is not None
        ns_note = f" ({share_text(first.share, capacity, device)})" if first.share else ""
        return ns, f"namespace ceiling {first.source.key}={ns}{ns_note}"
    if env:
        return env, f"env ceiling LIMIT_CEILING_{field.env_suffix}={env}{env_note}"
    return 0, ""


def raise_to_kernel_minimum(resolution: Resolution, minimum: int) -> Resolution:
    """Raise every limit below the smallest the kernel accepts (io.max refuses 1) to that
    minimum, in the plan, so what the kernel reads back matches it and a resync rewrites
    nothing; the ceilings too, since kept kernel values are clamped to them."""
    if minimum <= 1:
        return resolution

    def up(limits: IOLimits) -> IOLimits:
        return IOLimits.of(
            {f: minimum if 0 < v < minimum else v for f, v in limits.as_dict().items()}
        )

    raised = frozenset(f for f, v in resolution.limits.as_dict().items() if 0 < v < minimum)
    if not raised and up(resolution.ceilings) == resolution.ceilings:
        return resolution
    sources = dict(resolution.origins)
    for field in raised:
        sources[field] = sources.get(field, ENV_DEFAULT).noted(
            f"raised to {minimum} (the smallest limit the kernel accepts)"
        )
    return attrs.evolve(
        resolution,
        limits=up(resolution.limits),
        ceilings=up(resolution.ceilings),
        origins=sources,
        raised=raised,
    )


def device_limits(resolution: Resolution) -> DeviceLimits:
    """What a cgroup should hold on each data device under `resolution`."""
    return DeviceLimits(resolution.limits, resolution.keep, resolution.ceilings)
