"""The agent's state as plain data, for `/status` (pure: reads, never changes, anything)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diskguard.agent.reconciler import ErrorStage, Reconciler
from diskguard.model import ContainerKey, Device, IOLimits, LimitField, Rates
from diskguard.node.applier import ApplyResult
from diskguard.policy.annotations import LIMIT_REASON, parse_smart_annotations
from diskguard.policy.plan import ContainerPlan, PodPlan
from diskguard.policy.source import Source, SourceLabel
from diskguard.policy.values import limit_json
from diskguard.sampler.latency import DeviceLatency, percentiles


def limits_json(limits: IOLimits) -> dict[str, int | None]:
    """0 (unlimited) becomes null, so a reader never mistakes it for "zero IO allowed"."""
    return {k: limit_json(v) for k, v in limits.as_dict().items()}


def source_kind(source: Source | None) -> SourceLabel:
    """A short label for where a value came from (also a metrics label)."""
    return SourceLabel.DEFAULT if source is None else source.label


def rates_json(per_device: Mapping[Device, Rates] | None) -> dict[str, dict[str, float]] | None:
    if per_device is None:
        return None
    return {str(dev): {k: round(r.get(k), 1) for k in LimitField} for dev, r in per_device.items()}


def latency_json(
    per_device: Mapping[Device, DeviceLatency] | None,
) -> dict[str, dict[str, float | None]] | None:
    """p50/p99 device service time per direction over the last sampling interval (seconds;
    null for a direction that completed no request). None when latency is unavailable."""
    if per_device is None:
        return None
    return {
        str(dev): {k: (None if v is None else round(v, 6)) for k, v in percentiles(lat).items()}
        for dev, lat in per_device.items()
    }


def smart_json(plan: PodPlan, prefix: str) -> dict[str, Any]:
    smart = parse_smart_annotations(plan.pod.annotations, prefix)
    return {
        "active": smart.active,
        "opted_out": smart.opted_out,
        "auto": {"iops": limit_json(smart.auto_iops), "bps": limit_json(smart.auto_bps)},
        "reason": _bounded(plan.pod.annotations.get(f"{prefix}/{LIMIT_REASON}"))
        if smart.active
        else None,
    }


def _bounded(text: str | None, limit: int = 1024) -> str | None:
    """A tenant-writable string, cut short: /status must stay small whatever pods carry."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def container_json(
    plan: PodPlan,
    cplan: ContainerPlan,
    result: ApplyResult | None,
    rates: Mapping[Device, Rates] | None = None,
    prefix: str = "iops-limit",
    cgroup_wait: str | None = None,
    latency: Mapping[Device, DeviceLatency] | None = None,
) -> dict[str, Any]:
    ref = cplan.ref
    res = cplan.resolution
    kernel = {str(dev): limits_json(lim) for dev, lim in (result.kernel if result else ())}
    if res is None:
        desired: dict[str, Any] | None = None
        in_sync = all(v == limits_json(IOLimits()) for v in kernel.values())
    else:
        desired = {
            "limits": limits_json(res.limits),
            "sources": dict(res.sources),
            "source_kinds": {f: source_kind(s) for f, s in res.origins.items()},
            "kept_from_kernel": sorted(res.keep),
            "ceilings": limits_json(res.ceilings),
            "static": limits_json(res.static),
        }
        in_sync = bool(result and result.cgroup and not result.error)
    return {
        "namespace": ref.namespace,
        "pod": ref.pod,
        "pod_uid": ref.pod_uid,
        "container": ref.container,
        "container_id": ref.container_id,
        "runtime": ref.runtime.value,
        "qos": ref.qos.value,
        "kind": cplan.kind.value,
        "excluded": cplan.excluded_because or None,
        "enforcement": cplan.enforcement.value,
        "cgroup": str(result.cgroup) if result and result.cgroup else None,
        "desired": desired,
        "kernel": kernel,
        "in_sync": in_sync,
        "error": (result.error or None) if result else None,
        # While the container's cgroup is not there: "retrying", or "given up" until the
        # pod's next event or the resync.
        "cgroup_wait": cgroup_wait if (result is None or result.cgroup is None) else None,
        "rates": rates_json(rates),
        "latency": latency_json(latency),
        "smart_limit": smart_json(plan, prefix),
    }


def containers_json(
    reconciler: Reconciler,
    rates: Mapping[ContainerKey, Mapping[Device, Rates]],
    prefix: str,
    namespace: str | None = None,
    pod: str | None = None,
    *,
    latency: Mapping[ContainerKey, Mapping[Device, DeviceLatency]] | None = None,
) -> list[dict[str, Any]]:
    out = []
    for plan in sorted(reconciler.plans.values(), key=lambda p: (p.pod.namespace, p.pod.name)):
        if namespace is not None and plan.pod.namespace != namespace:
            continue
        if pod is not None and plan.pod.name != pod:
            continue
        given_up = reconciler.cgroup_given_up.get(plan.pod.uid, ())
        for cplan in plan.containers:
            key = cplan.ref.key
            result = reconciler.results.get(key)
            wait = None
            if result is not None and result.cgroup is None and not result.error:
                wait = "given up" if cplan.ref.container in given_up else "retrying"
            out.append(
                container_json(
                    plan,
                    cplan,
                    result,
                    rates.get(key),
                    prefix,
                    wait,
                    None if latency is None else latency.get(key, {}),
                )
            )
    return out


def pod_errors_json(reconciler: Reconciler) -> dict[str, Any]:
    """Unexpected errors contained to one pod or container: counts, and the latest ones."""
    return {
        "counts": {stage.value: reconciler.error_counts.get(stage, 0) for stage in ErrorStage},
        "latest": [
            {
                "stage": e.stage.value,
                "pod": e.pod,
                "container": e.container or None,
                "error": e.error,
            }
            for e in reconciler.pod_errors.values()
        ],
    }
