"""The agent's state as plain data, for `/status` (pure: reads, never changes, anything)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from diskguard.model import (
    ContainerKey,
    Device,
    Direction,
    ErrorStage,
    IOLimits,
    LimitField,
    Rates,
)
from diskguard.node.applier import ApplyResult
from diskguard.policy.annotations import LIMIT_REASON, parse_smart_annotations
from diskguard.policy.plan import ContainerPlan, PodPlan
from diskguard.policy.resolve import Resolution
from diskguard.policy.saturation import DirectionSaturation, Saturation
from diskguard.policy.source import Source, SourceLabel
from diskguard.policy.values import limit_json
from diskguard.sampler.latency import DeviceLatency, percentiles
from diskguard.sampler.pressure import Pressure
from diskguard.web.view import (
    AgentView,
    ReconcileSnapshot,
    ReconcileSource,
    SamplerState,
    SmartState,
)


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


def resolution_json(res: Resolution) -> dict[str, Any]:
    """What a container should hold (on one device, or on each), and why."""
    return {
        "limits": limits_json(res.limits),
        "sources": dict(res.sources),
        "source_kinds": {f: source_kind(s) for f, s in res.origins.items()},
        "kept_from_kernel": sorted(res.keep),
        "ceilings": limits_json(res.ceilings),
        "static": limits_json(res.static),
    }


def container_json(
    plan: PodPlan,
    cplan: ContainerPlan,
    result: ApplyResult | None,
    rates: Mapping[Device, Rates] | None = None,
    prefix: str = "iops-limit",
    cgroup_wait: str | None = None,
    latency: Mapping[Device, DeviceLatency] | None = None,
    saturation: Mapping[Device, Mapping[Direction, DirectionSaturation]] | None = None,
    pressure: Pressure | None = None,
) -> dict[str, Any]:
    ref = cplan.ref
    res = cplan.resolution
    kernel = {str(dev): limits_json(lim) for dev, lim in (result.kernel if result else ())}
    if res is None:
        desired: dict[str, Any] | None = None
        in_sync = all(v == limits_json(IOLimits()) for v in kernel.values())
    else:
        desired = {
            **resolution_json(res),
            # Per data device when percentages of disks' capacities make them differ (the
            # fields above are then the first device's); null when the same on every one.
            "per_device": {str(dev): resolution_json(r) for dev, r in cplan.per_device}
            if cplan.per_device
            else None,
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
        # Per device and limited direction: observed / limit (the higher of IOPS and
        # bytes/s), counted at bio level as blk-throttle counts.
        "saturation": {
            str(dev): {str(d): round(s.ratio, 3) for d, s in per_dir.items()}
            for dev, per_dir in (saturation or {}).items()
        },
        # Cumulative seconds some / all of its tasks waited for IO (PSI, cgroup v2; null:
        # unavailable or no IO lately).
        "io_pressure": None
        if pressure is None
        else {
            "some_seconds": round(pressure.some_seconds, 6),
            "full_seconds": round(pressure.full_seconds, 6),
        },
        "smart_limit": smart_json(plan, prefix),
    }


def _snapshot(reconciler: ReconcileSnapshot | ReconcileSource) -> ReconcileSnapshot:
    """A snapshot already taken (one /status answer reads one), or a fresh one from a source
    (the reconciler itself, as tests hold it)."""
    return reconciler if isinstance(reconciler, ReconcileSnapshot) else reconciler.snapshot()


def containers_json(
    reconciler: ReconcileSnapshot | ReconcileSource,
    rates: Mapping[ContainerKey, Mapping[Device, Rates]],
    prefix: str,
    namespace: str | None = None,
    pod: str | None = None,
    *,
    latency: Mapping[ContainerKey, Mapping[Device, DeviceLatency]] | None = None,
    saturation: Saturation | None = None,
    pressure: Mapping[ContainerKey, Pressure] | None = None,
) -> list[dict[str, Any]]:
    out = []
    pods = _snapshot(reconciler).pods
    for state in sorted(pods, key=lambda p: (p.plan.pod.namespace, p.plan.pod.name)):
        plan = state.plan
        if namespace is not None and plan.pod.namespace != namespace:
            continue
        if pod is not None and plan.pod.name != pod:
            continue
        for container in state.containers:
            cplan, result = container.plan, container.result
            key = cplan.ref.key
            wait = None
            if result is not None and result.cgroup is None and not result.error:
                wait = "given up" if container.cgroup_given_up else "retrying"
            out.append(
                container_json(
                    plan,
                    cplan,
                    result,
                    rates.get(key),
                    prefix,
                    wait,
                    None if latency is None else latency.get(key, {}),
                    None if saturation is None else saturation.get(key),
                    None if pressure is None else pressure.get(key),
                )
            )
    return out


def pod_errors_json(reconciler: ReconcileSnapshot | ReconcileSource) -> dict[str, Any]:
    """Unexpected errors contained to one pod or container: counts, and the latest ones."""
    state = _snapshot(reconciler)
    return {
        "counts": {stage.value: state.error_counts.get(stage, 0) for stage in ErrorStage},
        "latest": [
            {
                "stage": e.stage.value,
                "pod": e.pod,
                "container": e.container or None,
                "error": e.error,
            }
            for e in state.pod_errors
        ],
    }


def status_json(
    view: AgentView, version: str, namespace: str | None = None, pod: str | None = None
) -> dict[str, Any]:
    """The whole /status document; `namespace` and `pod` narrow the containers listed."""
    setup = view.setup_snapshot()
    health = view.health_snapshot()
    node = view.node_snapshot()
    reconcile = view.reconcile_snapshot()
    sampling = view.sampling_snapshot()
    sampler = sampling.sampler
    events = view.events_snapshot()
    return {
        "version": version,
        "node": setup.node_name,
        "ready": health.ready,
        "readiness_problem": health.readiness_problem or None,
        "warnings": list(setup.warnings),
        "cgroup": {
            "version": setup.cgroup_version.value,
            "hierarchy": str(setup.cgroup_hierarchy),
        },
        "devices": [{"device": str(d), "name": d.name} for d in node.devices],
        "data_disks": dict(node.data_disks),
        # Per data disk: measured by `diskguard profile` (null: not yet) and the highest
        # rates sustained over CAPACITY_OBSERVED_WINDOW (null: no sampler).
        "disk_capacity": [
            {
                "device": str(d),
                "name": d.name,
                "measured": None
                if c.measured is None
                else {str(f): v for f, v in c.measured.as_dict().items()},
                "measured_at": c.measured_at or None,
                "observed": None
                if c.observed is None
                else {str(f): round(c.observed.get(f), 1) for f in LimitField},
            }
            for d, c in node.capacity.items()
        ],
        "limit_record": None
        if node.limit_record is None
        else {
            "path": str(node.limit_record.path),
            "rules": node.limit_record.rules,
            "saves": node.limit_record.saves,
            "problem": node.limit_record.problem or None,
        },
        "watches": {
            w.name: {
                "relists": w.relists,
                "failures": w.failures,
                "failing": w.failing,
                "last_error": w.last_error or None,
                "backoff_seconds": round(w.backoff, 2),
                "connected": w.connected,
            }
            for w in view.watch_snapshots()
        },
        "events": attrs.asdict(events.stats) | {"queued": events.queued},
        "sampler": sampler_json(sampling.sampler, sampling.problem),
        "smart_limit": smart_json_status(view.smart_snapshot()),
        "pod_errors": pod_errors_json(reconcile),
        "containers": containers_json(
            reconcile,
            sampler.rates if sampler else {},
            setup.annotation_prefix,
            namespace,
            pod,
            latency=sampler.latency_window if sampler else None,
            saturation=sampler.saturation if sampler else None,
            pressure=sampler.pressure if sampler else None,
        ),
    }


def sampler_json(sampler: SamplerState | None, problem: str) -> dict[str, object]:
    if sampler is None:
        return {"kind": None, "problem": problem or "not started"}
    return {
        "kind": sampler.kind,
        "degraded": sampler.degraded,
        "interval_seconds": sampler.interval,
        "passes": sampler.passes,
        "last_pass_ms": round(sampler.last_pass_seconds * 1000, 2),
        "errors": sampler.errors,
        # Why there is no per-container latency (null: there is).
        "latency_unavailable": sampler.latency_problem,
    }


def smart_json_status(smart: SmartState) -> dict[str, object]:
    return {
        "enabled": smart.enabled and smart.running,
        "dry_run": smart.dry_run,
        "window_seconds": smart.window_seconds,  # the longest tier's
        "tiers": [{"name": n, "window_seconds": w} for n, w in smart.tiers],
        "remove_delay_seconds": smart.remove_delay_seconds,
        # What "%cap" and "%" of an unlimited direction are of: `measured` wins.
        "capacity": {
            "declared": {
                "iops": smart.declared_capacity[0] or None,
                "bps": smart.declared_capacity[1] or None,
            },
            "measured": None
            if smart.measured_capacity is None
            else smart.measured_capacity.as_dict(),
        },
        "monitor_interval_seconds": smart.monitor_interval_seconds,
        "patches": dict(smart.patches),
        "access": None if smart.access is None else dict(smart.access),
    }
