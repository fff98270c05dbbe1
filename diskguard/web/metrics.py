"""Prometheus exposition of the agent's state, computed at scrape time.

A custom collector reads the agent's state when scraped, so the hot paths keep no metric
objects up to date and there is no global registry: each agent owns its own.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from diskguard.model import (
    ContainerKey,
    Device,
    Direction,
    DurationHistogram,
    ErrorStage,
    LatencyMetrics,
    LimitField,
    LimitUnit,
)
from diskguard.policy.annotations import parse_smart_annotations
from diskguard.sampler.latency import LatencyHistogram
from diskguard.web.status import source_kind
from diskguard.web.view import (
    AgentView,
    DiskCapacityState,
    ReconcileSnapshot,
    SamplingState,
    SmartState,
)

Labels = tuple[str, str, str]  # namespace, pod, container


def version() -> str:
    try:
        return metadata.version("diskguard")
    except metadata.PackageNotFoundError:
        return "unknown"


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# A data disk as node_exporter and cAdvisor label it (`device` = its kernel name, e.g.
# nvme0n1) plus its numbers, so queries can join on either.
DEVICE_LABELS = ["device", "major", "minor"]


def _device_labels(device: Device) -> list[str]:
    return [device.name or str(device), str(device.major), str(device.minor)]


def _add_durations(
    family: HistogramMetricFamily, labels: list[str], hist: DurationHistogram
) -> None:
    family.add_metric(
        labels,
        buckets=[(_le(le), n) for le, n in hist.cumulative()],
        sum_value=hist.sum_seconds,
    )


class AgentCollector(Collector):
    def __init__(self, view: AgentView) -> None:
        self._view = view
        # Kernel files name devices by number only: their names come from the data disks.
        self._named: dict[Device, Device] = {}

    def _device(self, device: Device) -> list[str]:
        return _device_labels(self._named.get(device, device))

    def collect(self) -> Iterator[Metric]:
        view = self._view
        setup = view.setup_snapshot()
        rec = view.reconcile_snapshot()
        node = view.node_snapshot()
        self._named = {d: d for d in node.devices}

        info = GaugeMetricFamily(
            "diskguard_build_info",
            "diskguard version and runtime",
            labels=["version", "python", "cgroup_version"],
        )
        info.add_metric([version(), platform.python_version(), setup.cgroup_version.value], 1)
        yield info

        ready = GaugeMetricFamily("diskguard_ready", "1 when /readyz answers ready")
        ready.add_metric([], 1 if view.health_snapshot().ready else 0)
        yield ready

        limit_labels = ["namespace", "pod", "container", *DEVICE_LABELS, "direction", "source"]
        limits = {
            LimitUnit.IOPS: GaugeMetricFamily(
                "diskguard_container_limit_iops",
                "IO operations/s limit the kernel holds for a container on a data device, and "
                "where the value came from (an unlimited direction has no series)",
                labels=limit_labels,
            ),
            LimitUnit.BPS: GaugeMetricFamily(
                "diskguard_container_limit_bytes_per_second",
                "Bytes/s limit the kernel holds for a container on a data device, and where "
                "the value came from (an unlimited direction has no series)",
                labels=limit_labels,
            ),
        }
        states = {"limited": 0, "excluded": 0, "waiting_for_cgroup": 0, "error": 0}
        for pod in rec.pods:
            for container in pod.containers:
                cplan, result = container.plan, container.result
                ref, res = cplan.ref, (None if cplan.left_alone else cplan.resolution)
                if res is None:
                    states["excluded"] += 1
                elif result is not None and result.error:
                    states["error"] += 1
                elif result is None or result.cgroup is None:
                    states["waiting_for_cgroup"] += 1
                else:
                    states["limited"] += 1
                if result is None or res is None:
                    continue
                for device, held in result.kernel:
                    on = cplan.resolution_on(device) or res
                    for field in LimitField:
                        value = held.get(field)
                        if not value:
                            continue  # unlimited: absent, not 0
                        limits[field.unit].add_metric(
                            [
                                ref.namespace,
                                ref.pod,
                                ref.container,
                                *self._device(device),
                                str(field.direction),
                                str(source_kind(on.origins.get(field))),
                            ],
                            value,
                        )
        yield from limits.values()
        yield from self._capacity(node.capacity)

        containers = GaugeMetricFamily(
            "diskguard_containers", "Containers on this node by state", labels=["state"]
        )
        for state, count in states.items():
            containers.add_metric([state], count)
        yield containers

        outcomes = CounterMetricFamily(
            "diskguard_reconcile_containers",
            "Container reconciles by outcome (changed, unchanged, cgroup_missing, error)",
            labels=["outcome"],
        )
        for outcome in ("changed", "unchanged", "cgroup_missing", "error"):
            outcomes.add_metric([outcome], rec.outcomes.get(outcome, 0))
        yield outcomes

        pod_errors = CounterMetricFamily(
            "diskguard_pod_errors",
            "Unexpected errors contained to one pod or container, by stage (event: taking "
            "in a watch event; plan: planning a pod, which then gets the node's policy; "
            "apply: one container's apply stopped at an error)",
            labels=["stage"],
        )
        for stage in ErrorStage:
            pod_errors.add_metric([stage.value], rec.error_counts.get(stage, 0))
        yield pod_errors

        passes = CounterMetricFamily("diskguard_reconcile_passes", "Reconcile batches run")
        passes.add_metric([], rec.reconciles)
        yield passes
        apply_latency = HistogramMetricFamily(
            "diskguard_apply_latency_seconds",
            "Seconds from taking in a pod change (watch event) to the kernel holding the "
            "limits it asks for, per pod change that wrote to a running container's cgroup",
        )
        _add_durations(apply_latency, [], rec.apply_latency)
        yield apply_latency

        relists = CounterMetricFamily(
            "diskguard_watch_relists", "Full relists", labels=["resource"]
        )
        restarts = CounterMetricFamily(
            "diskguard_watch_failures",
            "Failed list/watch attempts (retried with backoff)",
            labels=["resource"],
        )
        failing = GaugeMetricFamily(
            "diskguard_watch_failing", "1 while the list/watch is failing", labels=["resource"]
        )
        for watch in view.watch_snapshots():
            relists.add_metric([watch.name], watch.relists)
            restarts.add_metric([watch.name], watch.failures)
            failing.add_metric([watch.name], 1 if watch.failing else 0)
        yield relists
        yield restarts
        yield failing

        sampling = view.sampling_snapshot()
        # A sampled container's labels: only containers the reconciler has applied.
        names = {
            c.plan.ref.key: (c.plan.ref.namespace, c.plan.ref.pod, c.plan.ref.container)
            for pod in rec.pods
            for c in pod.containers
            if c.result is not None
        }
        yield from self._sampling(sampling, names)
        yield from self._latency(sampling, names, setup.latency_metrics)
        yield from self._smart(view.smart_snapshot(), rec, setup.annotation_prefix)

        events = view.events_snapshot()
        stats = events.stats
        dropped = CounterMetricFamily(
            "diskguard_events_dropped",
            "Kubernetes Events dropped because the queue was full (the oldest goes first)",
        )
        dropped.add_metric([], stats.dropped)
        yield dropped
        posted = CounterMetricFamily(
            "diskguard_events_posted", "Kubernetes Events accepted by the API server"
        )
        posted.add_metric([], stats.posted)
        yield posted
        failed = CounterMetricFamily(
            "diskguard_events_failed",
            "Kubernetes Events given up after their retries or refused by the API server",
        )
        failed.add_metric([], stats.failed)
        yield failed
        emitted = CounterMetricFamily(
            "diskguard_events_emitted",
            "Kubernetes Events decided, by reason (whatever became of the post)",
            labels=["reason"],
        )
        for reason, count in sorted(stats.emitted.items()):
            emitted.add_metric([reason], count)
        yield emitted
        queued = GaugeMetricFamily(
            "diskguard_events_queued", "Kubernetes Events waiting to be posted"
        )
        queued.add_metric([], events.queued)
        yield queued

    def _capacity(self, capacity: Mapping[Device, DiskCapacityState]) -> Iterator[Metric]:
        """What each data disk can do: measured by `diskguard profile`, and observed (the
        highest rate sustained over CAPACITY_OBSERVED_WINDOW). Unknown: no series."""
        labels = [*DEVICE_LABELS, "direction", "source"]
        families = {
            LimitUnit.IOPS: GaugeMetricFamily(
                "diskguard_disk_capacity_iops",
                "IO operations/s a data disk can do (source measured: diskguard profile, 4k "
                "random; observed: the highest rate it sustained while the agent watched)",
                labels=labels,
            ),
            LimitUnit.BPS: GaugeMetricFamily(
                "diskguard_disk_capacity_bytes_per_second",
                "Bytes/s a data disk can do (source measured: diskguard profile, 1M "
                "sequential; observed: the highest rate it sustained while the agent watched)",
                labels=labels,
            ),
        }
        for device, state in capacity.items():
            dev = self._device(device)
            for field in LimitField:
                family = families[field.unit]
                direction = str(field.direction)
                if state.measured is not None and (value := state.measured.get(field)):
                    family.add_metric([*dev, direction, "measured"], value)
                # 0: no whole window seen yet (or an idle disk): unknown, no series.
                if state.observed is not None and (seen := state.observed.get(field)):
                    family.add_metric([*dev, direction, "observed"], seen)
        yield from families.values()

    def _sampling(
        self, sampling: SamplingState, names: Mapping[ContainerKey, Labels]
    ) -> Iterator[Metric]:
        sampler = GaugeMetricFamily(
            "diskguard_sampler_info",
            "The IO sampler in use (bpf or cgroup; none when no sampler could start) and "
            "whether it is degraded (why: /status, diskguard doctor)",
            labels=["kind", "degraded"],
        )
        state = sampling.sampler
        if state is None:
            sampler.add_metric(["none", "false"], 1)
            yield sampler
            return
        sampler.add_metric([state.kind, "true" if state.degraded else "false"], 1)
        yield sampler
        passes = HistogramMetricFamily(
            "diskguard_sampler_pass_duration_seconds",
            "Duration of the sampling passes (reading every container's counters)",
        )
        _add_durations(passes, [], state.pass_durations)
        yield passes

        # Rates: rate() over these counters (the agent keeps no rate gauges).
        labels = ["namespace", "pod", "container", *DEVICE_LABELS, "direction"]
        ops = CounterMetricFamily(
            "diskguard_container_io_ops", "IO requests on a data device", labels=labels
        )
        nbytes = CounterMetricFamily(
            "diskguard_container_io_bytes", "Bytes of IO on a data device", labels=labels
        )
        for key, per_device in state.counters.items():
            if key not in names:
                continue
            for device, c in per_device.items():
                dev = self._device(device)
                ops.add_metric([*names[key], *dev, "read"], c.rios)
                ops.add_metric([*names[key], *dev, "write"], c.wios)
                nbytes.add_metric([*names[key], *dev, "read"], c.rbytes)
                nbytes.add_metric([*names[key], *dev, "write"], c.wbytes)
        yield ops
        yield nbytes

        saturation = GaugeMetricFamily(
            "diskguard_container_io_saturation",
            "Fraction of its limit a container uses on a data device: observed rate / the "
            "limit the kernel holds, the higher of IOPS and bytes/s, counted at bio level as "
            "blk-throttle counts (no series: no limit, or no IO measured yet)",
            labels=labels,
        )
        saturated = CounterMetricFamily(
            "diskguard_container_io_saturated_seconds",
            "Seconds a container spent at >= 95 % of a limit on a data device",
            labels=labels,
        )
        for key, per_device_sat in state.saturation.items():
            if key not in names:
                continue
            for device, per_direction in per_device_sat.items():
                dev = self._device(device)
                for direction, sat in per_direction.items():
                    at = [*names[key], *dev, str(direction)]
                    saturation.add_metric(at, sat.ratio)
                    saturated.add_metric(at, sat.saturated_seconds)
        yield saturation
        yield saturated

        # PSI, named as cAdvisor names the container's own: waiting = some, stalled = full.
        owner = ["namespace", "pod", "container"]
        waiting = CounterMetricFamily(
            "diskguard_container_io_pressure_waiting_seconds",
            "Seconds at least one of the container's tasks waited for IO (io.pressure some; "
            "cgroup v2; containers with IO lately)",
            labels=owner,
        )
        stalled = CounterMetricFamily(
            "diskguard_container_io_pressure_stalled_seconds",
            "Seconds all of the container's runnable tasks waited for IO (io.pressure full)",
            labels=owner,
        )
        for key, pressure in state.pressure.items():
            if key in names:
                waiting.add_metric(list(names[key]), pressure.some_seconds)
                stalled.add_metric(list(names[key]), pressure.full_seconds)
        yield waiting
        yield stalled

    def _latency(
        self, sampling: SamplingState, names: Mapping[ContainerKey, Labels], per: LatencyMetrics
    ) -> Iterator[Metric]:
        """Device service-time histograms, straight from the kernel's cumulative log2
        buckets, per container or summed per pod (LATENCY_METRICS). Absent (not zero) when
        the sampler measures no latency; a direction with no completed request yet has no
        series."""
        state = sampling.sampler
        if state is None or state.latency is None or per is LatencyMetrics.OFF:
            return
        by_pod = per is LatencyMetrics.POD
        owner = ["namespace", "pod"] if by_pod else ["namespace", "pod", "container"]
        family = HistogramMetricFamily(
            "diskguard_pod_io_latency_seconds"
            if by_pod
            else "diskguard_container_io_latency_seconds",
            "Device service time of IO requests (block layer issue to completion; excludes "
            "time a blk-throttle limit holds the IO back), log2 buckets",
            labels=[*owner, *DEVICE_LABELS, "direction"],
        )
        series: dict[tuple[str, ...], LatencyHistogram] = {}
        for key, per_device in state.latency.items():
            labels = names.get(key)
            if labels is None:
                continue
            who = labels[:2] if by_pod else labels
            for device, lat in per_device.items():
                for direction in Direction:
                    hist = lat.get(direction)
                    if hist.count == 0:
                        continue
                    at = (*who, *self._device(device), direction.value)
                    before = series.get(at)
                    series[at] = hist if before is None else before.plus(hist)
        for at, hist in series.items():
            family.add_metric(
                list(at),
                buckets=[(_le(le), n) for le, n in hist.cumulative()],
                sum_value=hist.sum_ns / 1e9,
            )
        yield family

    def _smart(self, smart: SmartState, rec: ReconcileSnapshot, prefix: str) -> Iterator[Metric]:
        labels = ["namespace", "pod"]
        active = GaugeMetricFamily(
            "diskguard_smart_limit_active",
            "1 for each pod that carries an automatic (smart) limit, with the tier in force "
            "(SMART_LIMIT_TIERS; default: the single window)",
            labels=[*labels, "tier"],
        )
        auto_iops = GaugeMetricFamily(
            "diskguard_smart_limit_iops",
            "The automatic IO operations/s limit a pod carries (no series: none)",
            labels=labels,
        )
        auto_bps = GaugeMetricFamily(
            "diskguard_smart_limit_bytes_per_second",
            "The automatic bytes/s limit a pod carries (no series: none)",
            labels=labels,
        )
        for pod in rec.pods:
            info = pod.plan.pod
            found = parse_smart_annotations(info.annotations, prefix)
            if not found.active:
                continue
            active.add_metric([info.namespace, info.name, found.tier or "default"], 1)
            if found.auto_iops:
                auto_iops.add_metric([info.namespace, info.name], found.auto_iops)
            if found.auto_bps:
                auto_bps.add_metric([info.namespace, info.name], found.auto_bps)
        yield active
        yield auto_iops
        yield auto_bps
        patches = CounterMetricFamily(
            "diskguard_smart_limit_patches",
            "Smart-limit annotation writes by outcome (apply, lift, dry_run, rate_limited, "
            "http_<code>, error)",
            labels=["outcome"],
        )
        for outcome, count in smart.patches.items():
            patches.add_metric([outcome], count)
        yield patches


def exposition(view: AgentView) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(view))
    # The standard process_*, python_info and python_gc_* series: prometheus_client's own
    # collectors (they register themselves), reading /proc/self and the interpreter.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)
