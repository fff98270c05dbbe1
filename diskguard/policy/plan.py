"""Pure planning: from the pods on this node to what each container's cgroup should hold.

No I/O here. The reconciler feeds it pods, remembered key values and the exclusion filter;
the applier takes the resulting ContainerPlans to the kernel.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from diskguard.model import (
    V2_MIN_LIMIT,
    CgroupVersion,
    ContainerKind,
    ContainerRef,
    DesiredLimits,
    Device,
    DeviceLimits,
    IOLimits,
    LimitField,
    PodInfo,
)
from diskguard.policy.annotations import (
    AUTO_BPS,
    AUTO_IOPS,
    AnnotationLimits,
    parse_smart_annotations,
)
from diskguard.policy.exclusion import Exclusion, ExclusionFilter
from diskguard.policy.resolve import (
    Guardrails,
    KeyMemory,
    KeySet,
    NamespacePolicy,
    Resolution,
    device_limits,
    held_to_ceilings,
    key_set,
    raise_to_kernel_minimum,
    resolve_limits,
)
from diskguard.policy.shares import NO_DISKS, UNKNOWN, Capacities, involves_shares
from diskguard.policy.source import Source, SourceKind
from diskguard.policy.values import LimitSettings

# The smallest limit each cgroup version's kernel interface accepts.
KERNEL_MIN_LIMIT = {CgroupVersion.V1: 1, CgroupVersion.V2: V2_MIN_LIMIT}


class Enforcement(enum.Enum):
    """Why a container gets the limits it gets."""

    # Not excluded: the pod's limits (annotations, namespace and env defaults, smart
    # limit), clamped by the ceilings.
    POD_LIMITS = "pod_limits"
    # Excluded by a rule a tenant can satisfy (keyword in a name or image, pod labels,
    # regex on names): none of the pod's limits, but held to the ceilings.
    CEILINGS = "ceilings"
    # Excluded by EXCLUDE_NAMESPACES (the administrator's): no limit at all.
    EXEMPT = "exempt"


def enforcement_for(exclusion: Exclusion | None) -> Enforcement:
    """Only the administrator's rules lift the floor; a tenant-controlled match cannot."""
    if exclusion is None:
        return Enforcement.POD_LIMITS
    if exclusion.rule.tenant_controlled:
        return Enforcement.CEILINGS
    return Enforcement.EXEMPT


@attrs.frozen
class ContainerPlan:
    ref: ContainerRef
    # None exactly when `enforcement` is EXEMPT: any limit on the data devices is cleared.
    resolution: Resolution | None
    enforcement: Enforcement = Enforcement.POD_LIMITS
    exclusion: Exclusion | None = None
    kind: ContainerKind = ContainerKind.REGULAR
    # What the cgroup should hold on each data device.
    desired: DesiredLimits = attrs.field(factory=DesiredLimits)
    # The resolution on each data device, when percentages of disks' capacities make them
    # differ (`resolution` is the first one's); empty when `resolution` holds on every one.
    per_device: tuple[tuple[Device, Resolution], ...] = ()

    def resolution_on(self, device: Device) -> Resolution | None:
        """The resolution behind what the cgroup should hold on `device`."""
        for known, resolution in self.per_device:
            if known == device:
                return resolution
        return self.resolution

    @property
    def excluded_because(self) -> str:
        return self.exclusion.reason if self.exclusion is not None else ""

    @property
    def left_alone(self) -> bool:
        """Excluded with no limit to hold it to (exempt, or held to ceilings that are all
        unlimited): what /metrics counts as `excluded`."""
        if self.enforcement is Enforcement.POD_LIMITS:
            return False
        return self.resolution is None or self.resolution.limits.is_unlimited()


@attrs.frozen
class PodPlan:
    pod: PodInfo
    parsed: AnnotationLimits
    resolution: Resolution
    containers: tuple[ContainerPlan, ...]


def plan_pod(
    pod: PodInfo,
    *,
    prefix: str,
    defaults: LimitSettings | IOLimits,
    exclusion: ExclusionFilter,
    previous: KeyMemory | None,
    namespace: NamespacePolicy | None = None,
    guardrails: Guardrails = Guardrails(),
    cgroup_version: CgroupVersion = CgroupVersion.V1,
    devices: Sequence[Device] = (),
    capacity: Capacities = NO_DISKS,
) -> PodPlan:
    """Plan one pod's containers; `devices` are the data devices their limits go to, and
    `capacity` what each can do (0 = unknown), which percentages are resolved against: a
    pod whose limits involve a percentage is resolved once per data device."""
    disks = {device: capacity.get(device, UNKNOWN) for device in devices}
    keys = key_set(pod.annotations, prefix, previous, capacity=disks)
    parsed = keys.parsed
    smart = parse_smart_annotations(pod.annotations, prefix)
    auto = IOLimits.per_unit(smart.auto_iops, smart.auto_bps)
    auto_source = Source(
        SourceKind.SMART,
        f"smart limit {prefix}/{AUTO_IOPS} / {prefix}/{AUTO_BPS}",
        f"{prefix}/{AUTO_IOPS}",
    )

    def resolve_on(device: Device | None, disk: IOLimits) -> Resolution:
        resolution = resolve_limits(
            keys,
            defaults,
            namespace=namespace,
            guardrails=guardrails,
            pod_namespace=pod.namespace,
            auto=auto,
            auto_source=auto_source,
            device=device,
            capacity=disk,
            ceiling_capacity=slowest_known,
        )
        return raise_to_kernel_minimum(resolution, KERNEL_MIN_LIMIT[cgroup_version])

    # Per field, the slowest data disk whose capacity is known: what a percentage ceiling is
    # of on a disk whose own capacity is unknown (a ceiling fails closed).
    slowest_known = IOLimits.of(
        {f: min((c.get(f) for c in disks.values() if c.get(f)), default=0) for f in LimitField}
    )
    on_devices: tuple[tuple[Device, Resolution], ...] = ()
    if devices and _involves_shares(keys, namespace, defaults, guardrails):
        on_devices = tuple((d, resolve_on(d, disks[d])) for d in devices)
        # The first disk's resolution speaks for the pod (Events, /status), with what any
        # disk clamped: a request held to its ceiling on one disk only is still said.
        resolution = on_devices[0][1]
        clamps = tuple(c for _, r in on_devices for c in r.clamps)
        if clamps != resolution.clamps:
            resolution = attrs.evolve(resolution, clamps=clamps)
    else:
        # The same on every disk: resolved once (the common case, and the fast one).
        resolution = resolve_on(None, UNKNOWN)
    plans = []
    # Every kind of container that runs (regular, sidecar, init while it runs, ephemeral)
    # has its own cgroup and gets the pod's limits in it.
    for container in pod.containers:
        ref = pod.container_ref(container)
        if ref is None or not container.running:
            continue
        excluded = exclusion.container_exclusion(pod, container)
        enforcement = enforcement_for(excluded)
        container_resolution = _for_container(resolution, excluded)
        per_device: tuple[tuple[Device, Resolution], ...] = ()
        if on_devices:
            each = [(d, _for_container(r, excluded)) for d, r in on_devices]
            desired = DesiredLimits(tuple((d, _device_limits(r)) for d, r in each))
            # Shown per disk only where the disks' limits differ (else `resolution` says it).
            if len({limits for _, limits in desired.devices}) > 1:
                per_device = tuple((d, r) for d, r in each if r is not None)
        else:
            desired = DesiredLimits.same(devices, _device_limits(container_resolution))
        plans.append(
            ContainerPlan(
                ref,
                container_resolution,
                enforcement,
                excluded,
                container.kind,
                desired,
                per_device,
            )
        )
    return PodPlan(pod, parsed, resolution, tuple(plans))


def _for_container(resolution: Resolution, excluded: Exclusion | None) -> Resolution | None:
    """The pod's `resolution` as one container gets it (None: exempt, no limit at all)."""
    enforcement = enforcement_for(excluded)
    if enforcement is Enforcement.POD_LIMITS:
        return resolution
    if enforcement is Enforcement.CEILINGS:
        assert excluded is not None
        why = Source(SourceKind.EXCLUDED, f"excluded by {excluded.rule.value}")
        return held_to_ceilings(resolution, why)
    return None


def _device_limits(resolution: Resolution | None) -> DeviceLimits:
    return DeviceLimits() if resolution is None else device_limits(resolution)


def _involves_shares(
    keys: KeySet,
    namespace: NamespacePolicy | None,
    defaults: LimitSettings | IOLimits,
    guardrails: Guardrails,
) -> bool:
    """Whether any value that may decide a limit is a percentage (then the limits differ
    from disk to disk)."""
    sets = [keys] if namespace is None else [keys, namespace.defaults, namespace.maxima]
    keyed = (c.value for ks in sets for chain in ks.candidates.values() for c in chain)
    return involves_shares(keyed) or involves_shares(
        v for settings in (defaults, guardrails.ceilings) for v in map(settings.get, LimitField)
    )
