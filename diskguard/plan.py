"""Pure planning: from the pods on this node to what each container's cgroup should hold.

No I/O here. The reconciler feeds it pods, remembered key values and the exclusion filter;
the applier takes the resulting ContainerPlans to the kernel.
"""

from __future__ import annotations

import attrs

from diskguard.annotations import AUTO_BPS, AUTO_IOPS, AnnotationLimits, parse_smart_annotations
from diskguard.filters import ExclusionFilter
from diskguard.model import V2_MIN_LIMIT, CgroupVersion, ContainerRef, IOLimits, PodInfo, Runtime
from diskguard.policy import (
    Guardrails,
    KeyMemory,
    NamespacePolicy,
    Resolution,
    key_set,
    raise_to_kernel_minimum,
    resolve_limits,
)

# The smallest limit each cgroup version's kernel interface accepts.
KERNEL_MIN_LIMIT = {CgroupVersion.V1: 1, CgroupVersion.V2: V2_MIN_LIMIT}


@attrs.frozen
class ContainerPlan:
    ref: ContainerRef
    # None: the container is excluded, so any limit on the data devices is cleared.
    resolution: Resolution | None
    excluded_because: str = ""


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
) -> PodPlan:
    keys = key_set(pod.annotations, prefix, previous)
    parsed = keys.parsed
    smart = parse_smart_annotations(pod.annotations, prefix)
    auto = IOLimits(smart.auto_iops, smart.auto_iops, smart.auto_bps, smart.auto_bps)
    resolution = resolve_limits(
        keys,
        defaults,
        namespace=namespace,
        guardrails=guardrails,
        pod_namespace=pod.namespace,
        auto=auto,
        auto_source=f"smart limit {prefix}/{AUTO_IOPS} / {prefix}/{AUTO_BPS}",
    )
    resolution = raise_to_kernel_minimum(resolution, KERNEL_MIN_LIMIT[cgroup_version])
    plans = []
    for container in pod.containers:
        ref = pod.container_ref(container)
        if ref is None or not container.running:
            continue
        reason = exclusion.container_exclusion(pod, container)
        plans.append(
            ContainerPlan(ref, None if reason else resolution, excluded_because=reason or "")
        )
    return PodPlan(pod, parsed, resolution, tuple(plans))


def runtime_override(name: str) -> Runtime | None:
    """CONTAINER_RUNTIME: `auto` trusts the containerID scheme; a runtime name forces it."""
    return None if name == "auto" else Runtime(name)
