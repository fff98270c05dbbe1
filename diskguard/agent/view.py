"""The agent's side of `web.view.AgentView`: reads the running agent's parts and builds the
frozen snapshots the HTTP side renders (the reconciler through its one `snapshot()`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diskguard.kube.watch import ListWatcher
from diskguard.model import Rates
from diskguard.web.view import (
    DiskCapacityState,
    EventsState,
    Health,
    LimitRecordState,
    NodeState,
    ReconcileSnapshot,
    SamplerState,
    SamplingState,
    Setup,
    SmartState,
    WatchState,
)

if TYPE_CHECKING:
    from diskguard.agent.run import Agent  # run.py builds the readout: a type, not an import


def _watch(watcher: ListWatcher) -> WatchState:
    health = watcher.health
    return WatchState(
        name=watcher.name,
        relists=health.relists,
        failures=health.restarts,
        failing=health.failing_since is not None,
        last_error=health.last_error,
        backoff=health.backoff,
        connected=health.connected_since is not None,
    )


class AgentReadout:
    """`AgentView` over one running `Agent` (read-only; every call is a fresh snapshot)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def health_snapshot(self) -> Health:
        return Health(self._agent.liveness_problem(), self._agent.readiness_problem())

    def setup_snapshot(self) -> Setup:
        agent = self._agent
        return Setup(
            node_name=agent.config.node_name,
            annotation_prefix=agent.config.annotation_prefix,
            status_localhost_only=agent.config.status_localhost_only,
            cgroup_version=agent.node.hierarchy.version,
            cgroup_hierarchy=agent.node.hierarchy.path,
            warnings=tuple(agent.config_warnings),
            latency_metrics=agent.config.latency_metrics,
        )

    def node_snapshot(self) -> NodeState:
        agent = self._agent
        record = agent.applier.record
        devices = tuple(agent.applier.devices)
        measured = agent.capacity.per_device(devices)
        observed = agent.sampling.disk_peaks.peaks() if agent.sampling is not None else {}
        capacity = {
            d: DiskCapacityState(
                measured=measured[d].as_limits() if d in measured else None,
                measured_at=measured[d].measured_at if d in measured else "",
                observed=observed.get(d, Rates()) if agent.sampling is not None else None,
            )
            for d in devices
        }
        return NodeState(
            devices=devices,
            capacity=capacity,
            data_disks=agent.data_disks.as_json(),
            limit_record=None
            if record is None
            else LimitRecordState(
                record.state.limit_record, len(record.rules), record.saves, record.problem
            ),
        )

    def reconcile_snapshot(self) -> ReconcileSnapshot:
        return self._agent.reconciler.snapshot()

    def watch_snapshots(self) -> tuple[WatchState, ...]:
        return (_watch(self._agent.pod_watcher), _watch(self._agent.namespace_watcher))

    def events_snapshot(self) -> EventsState:
        events = self._agent.events
        return EventsState(events.stats.copy(), len(events.queue))

    def sampling_snapshot(self) -> SamplingState:
        agent = self._agent
        task = agent.sampling
        if task is None:
            return SamplingState(None, agent.sampler_problem)
        latency, window = task.latency, task.latency_window
        return SamplingState(
            SamplerState(
                kind=task.sampler.kind,
                degraded=task.sampler.degraded,
                latency_problem=task.sampler.latency_problem,
                interval=task.interval,
                passes=task.passes,
                last_pass_seconds=task.last_pass_seconds,
                pass_durations=task.pass_durations,
                errors=task.errors,
                # The task replaces these each pass rather than changing them: shallow
                # copies are enough.
                counters=dict(task.counters),
                rates=dict(task.rates),
                latency=None if latency is None else dict(latency),
                latency_window=None if window is None else dict(window),
                saturation={} if task.saturation is None else dict(task.saturation.state),
                pressure=dict(task.pressure),
            ),
            agent.sampler_problem,
        )

    def smart_snapshot(self) -> SmartState:
        agent = self._agent
        smart = agent.config.smart
        return SmartState(
            enabled=smart.enabled,
            running=agent.smart is not None,
            dry_run=smart.dry_run,
            window_seconds=max(t.window for t in smart.tiers),
            tiers=tuple((t.name, t.window) for t in smart.tiers),
            remove_delay_seconds=smart.remove_delay,
            declared_capacity=(smart.settings.device_iops, smart.settings.device_bps),
            measured_capacity=None if agent.smart is None else agent.smart.capacity.measured,
            monitor_interval_seconds=smart.monitor_interval,
            patches=dict(agent.smart.patches) if agent.smart is not None else {},
            access=agent.smart_access.as_json() if agent.smart_access is not None else None,
        )
