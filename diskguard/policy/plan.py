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
    NamespacePolicy,
    Resolution,
    device_limits,
    held_to_ceilings,
    key_set,
    raise_to_kernel_minimum,
    resolve_limits,
)
from diskguard.policy.source import Source, SourceKind

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
    # What the cgroup should hold on each data device (the same on every one today).
    desired: DesiredLimits = attrs.field(factory=DesiredLimits)

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
    defaults: IOLimits,
    exclusion: ExclusionFilter,
    previous: KeyMemory | None,
    namespace: NamespacePolicy | None = None,
    guardrails: Guardrails = Guardrails(),
    cgroup_version: CgroupVersion = CgroupVersion.V1,
    devices: Sequence[Device] = (),
) -> PodPlan:
    """Plan one pod's containers; `devices` are the data devices their limits go to."""
    keys = key_set(pod.annotations, prefix, previous)
    parsed = keys.parsed
    smart = parse_smart_annotations(pod.annotations, prefix)
    auto = IOLimits.per_unit(smart.auto_iops, smart.auto_bps)
    resolution = resolve_limits(
        keys,
        defaults,
        namespace=namespace,
        guardrails=guardrails,
        pod_namespace=pod.namespace,
        auto=auto,
        auto_source=Source(
            SourceKind.SMART,
            f"smart limit {prefix}/{AUTO_IOPS} / {prefix}/{AUTO_BPS}",
            f"{prefix}/{AUTO_IOPS}",
        ),
    )
    resolution = raise_to_kernel_minimum(resolution, KERNEL_MIN_LIMIT[cgroup_version])
    plans = []
    # Every kind of container that runs (regular, sidecar, init while it runs, ephemeral)
    # has its own cgroup and gets the pod's limits in it.
    for container in pod.containers:
        ref = pod.container_ref(container)
        if ref is None or not container.running:
            continue
        excluded = exclusion.container_exclusion(pod, container)
        enforcement = enforcement_for(excluded)
        container_resolution: Resolution | None
        if enforcement is Enforcement.POD_LIMITS:
            container_resolution = resolution
        elif enforcement is Enforcement.CEILINGS:
            assert excluded is not None
            container_resolution = held_to_ceilings(
                resolution, Source(SourceKind.EXCLUDED, f"excluded by {excluded.rule.value}")
            )
        else:
            container_resolution = None
        on_each = (
            DeviceLimits() if container_resolution is None else device_limits(container_resolution)
        )
        plans.append(
            ContainerPlan(
                ref,
                container_resolution,
                enforcement,
                excluded,
                container.kind,
                DesiredLimits.same(devices, on_each),
            )
        )
    return PodPlan(pod, parsed, resolution, tuple(plans))
