"""What the HTTP side reads: the `AgentView` Protocol and the frozen snapshots it returns.

web/ never imports agent/: the agent implements `AgentView` (diskguard/agent/view.py reads
its parts and builds these snapshots), and /healthz, /readyz, /metrics and /status render
only what they are handed here. A snapshot is taken on the trio loop and read in the same
loop step (no await in between), so one answer never mixes two moments; the mappings in a
snapshot are copies the agent no longer changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import attrs

from diskguard.kube.events import EventStats
from diskguard.model import (
    CgroupVersion,
    ContainerKey,
    Counters,
    Device,
    DurationHistogram,
    ErrorStage,
    IOLimits,
    LatencyMetrics,
    PodError,
    Rates,
)
from diskguard.node.applier import ApplyResult
from diskguard.policy.plan import ContainerPlan, PodPlan
from diskguard.policy.saturation import Saturation
from diskguard.sampler.latency import DeviceLatency
from diskguard.sampler.pressure import Pressure

# -- the reconciler ------------------------------------------------------------------------


@attrs.frozen
class ContainerSnapshot:
    """One planned container and what its last apply found."""

    plan: ContainerPlan
    result: ApplyResult | None  # None: not applied yet
    # Its cgroup did not appear after the reconciler's retries: it waits for the pod's next
    # event or the resync (shown as "given up" rather than "retrying").
    cgroup_given_up: bool = False


@attrs.frozen
class PodSnapshot:
    """One pod as last planned, with its containers in the plan's order."""

    plan: PodPlan
    containers: tuple[ContainerSnapshot, ...]


@attrs.frozen
class ReconcileSnapshot:
    """Everything the HTTP side reads from the reconciler (its `snapshot()`)."""

    pods: tuple[PodSnapshot, ...] = ()  # every planned pod, in the order they were first seen
    # Container applies by outcome: changed, unchanged, cgroup_missing, error.
    outcomes: Mapping[str, int] = attrs.field(factory=dict)
    error_counts: Mapping[ErrorStage, int] = attrs.field(factory=dict)
    pod_errors: tuple[PodError, ...] = ()  # the latest per pod, oldest first
    reconciles: int = 0  # apply batches run
    # Pod change taken in -> the kernel holds its limits (containers with a cgroup already).
    apply_latency: DurationHistogram = attrs.field(factory=DurationHistogram)


class ReconcileSource(Protocol):
    """What has a `ReconcileSnapshot` to give (the agent's Reconciler)."""

    def snapshot(self) -> ReconcileSnapshot: ...


# -- the rest of the agent -----------------------------------------------------------------


@attrs.frozen
class Health:
    liveness_problem: str  # why the agent should be restarted; "" when it should not
    readiness_problem: str  # why it should get no traffic; "" when ready

    @property
    def ready(self) -> bool:
        return not self.readiness_problem


@attrs.frozen
class Setup:
    """What does not change while the agent runs."""

    node_name: str
    annotation_prefix: str
    status_localhost_only: bool
    cgroup_version: CgroupVersion
    cgroup_hierarchy: Path
    warnings: tuple[str, ...] = ()  # about the configuration, said at start-up
    latency_metrics: LatencyMetrics = LatencyMetrics.CONTAINER


@attrs.frozen
class LimitRecordState:
    path: Path
    rules: int
    saves: int
    problem: str  # why the last save failed; "" when the record is current


@attrs.frozen
class DiskCapacityState:
    """What one data disk can do: as `diskguard profile` measured it (IOPS at 4k random,
    bytes/s at 1M sequential; None: not measured) and the highest rates it sustained over
    CAPACITY_OBSERVED_WINDOW while the agent watched (None: no sampler)."""

    measured: IOLimits | None = None
    measured_at: str = ""
    observed: Rates | None = None


@attrs.frozen
class NodeState:
    devices: tuple[Device, ...]  # the data devices limits go to now
    # The data disks as DataDisks.as_json() renders them (paths, devices, problem...).
    data_disks: Mapping[str, object]
    limit_record: LimitRecordState | None  # None: no node-state directory
    capacity: Mapping[Device, DiskCapacityState] = attrs.field(factory=dict)


@attrs.frozen
class WatchState:
    """One API list/watch (pods or namespaces)."""

    name: str
    relists: int
    failures: int  # failed list/watch attempts
    failing: bool
    last_error: str
    backoff: float  # seconds before the next attempt
    connected: bool


@attrs.frozen
class EventsState:
    stats: EventStats  # a copy
    queued: int


@attrs.frozen
class SamplerState:
    """The running IO sampler and what its last pass measured."""

    kind: str  # bpf or cgroup
    degraded: str | None
    latency_problem: str | None  # why there is no per-container latency; None: there is
    interval: float
    passes: int
    last_pass_seconds: float
    errors: int
    pass_durations: DurationHistogram = attrs.field(factory=DurationHistogram)
    counters: Mapping[ContainerKey, Mapping[Device, Counters]] = attrs.field(factory=dict)
    rates: Mapping[ContainerKey, Mapping[Device, Rates]] = attrs.field(factory=dict)
    # Cumulative (metrics) and over the last interval (/status); None: no latency measured.
    latency: Mapping[ContainerKey, Mapping[Device, DeviceLatency]] | None = None
    latency_window: Mapping[ContainerKey, Mapping[Device, DeviceLatency]] | None = None
    # Fraction of the limit in use per container, device and direction (bio-level counts).
    saturation: Saturation = attrs.field(factory=dict)
    # IO pressure (PSI, cgroup v2) of the containers that did IO lately.
    pressure: Mapping[ContainerKey, Pressure] = attrs.field(factory=dict)


@attrs.frozen
class SamplingState:
    sampler: SamplerState | None  # None: no sampler runs (yet)
    problem: str = ""  # why no sampler could start; "" while it is still starting


@attrs.frozen
class SmartState:
    enabled: bool  # SMART_LIMIT_ENABLED
    running: bool  # the smart-limit task runs (it waits for its RBAC grant)
    dry_run: bool
    window_seconds: float
    monitor_interval_seconds: float
    # Annotation writes by outcome (apply, lift, dry_run, rate_limited, http_<code>, error).
    patches: Mapping[str, int] = attrs.field(factory=dict)
    access: Mapping[str, object] | None = None  # the RBAC gate as AccessGate.as_json() says
    tiers: tuple[tuple[str, float], ...] = ()  # (name, window seconds), shortest first
    remove_delay_seconds: float = 0.0
    # The capacity capacity-relative amounts are judged against: declared (SMART_LIMIT_
    # DEVICE_*, both directions) and measured (`diskguard profile`, the slowest data disk's
    # per field; None until every data disk is measured), as of the last evaluation.
    declared_capacity: tuple[int, int] = (0, 0)
    measured_capacity: IOLimits | None = None


class AgentView(Protocol):
    """The running agent, read-only, as the HTTP side sees it."""

    def health_snapshot(self) -> Health: ...

    def setup_snapshot(self) -> Setup: ...

    def node_snapshot(self) -> NodeState: ...

    def reconcile_snapshot(self) -> ReconcileSnapshot: ...

    def watch_snapshots(self) -> tuple[WatchState, ...]: ...

    def events_snapshot(self) -> EventsState: ...

    def sampling_snapshot(self) -> SamplingState: ...

    def smart_snapshot(self) -> SmartState: ...
