"""The agent: one trio nursery running the pod watch, the cgroup apply and Event posting.

Shutdown (SIGTERM/SIGINT or cancellation) stops every task and leaves the kernel limits in
place: an agent upgrade must not unthrottle the node.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import trio
from kubernetes.client.api_client import ApiClient

from diskguard.agent.kubelet_rates import KubeletRateTask
from diskguard.agent.measuring import SamplingTask
from diskguard.agent.reconciler import Reconciler, ReconcileSettings
from diskguard.agent.saturation import SaturationMonitor
from diskguard.agent.smart import SmartLimiter
from diskguard.agent.view import AgentReadout
from diskguard.config import Config, startup_warnings
from diskguard.kube.access import SMART_LIMIT_ACCESS, AccessGate, denied_access
from diskguard.kube.api import CoreApi
from diskguard.kube.client import make_api_client
from diskguard.kube.events import EventSink, Posting, post_events
from diskguard.kube.kubelet import KubeletClient
from diskguard.kube.kubelet_source import (
    KubeletSourceHealth,
    Source,
    SourceSelector,
    run_pod_source,
)
from diskguard.kube.namespaces import NamespaceEvent, parse_namespace_events
from diskguard.kube.pods import PodEvent, parse_pod_events
from diskguard.kube.watch import ListWatcher, WatchEvent
from diskguard.logs import get_logger
from diskguard.model import CgroupVersion, Device, IOLimits, SamplerKind
from diskguard.node.applier import Applier
from diskguard.node.capacity import CapacityReader
from diskguard.node.datadisks import DataDisks, DiskResolution
from diskguard.node.limits import backend_for
from diskguard.node.setup import NodeSetup, inspect_node
from diskguard.node.state import LimitRecord, StateDir
from diskguard.policy.saturation import SaturationEvents
from diskguard.policy.shares import disk_capacities
from diskguard.sampler import Sampler, SamplerUnavailable, open_sampler
from diskguard.sampler.cgroupfs import CgroupSampler
from diskguard.web import server as web
from diskguard.web.view import (
    EventsState,
    Health,
    NodeState,
    ReconcileSnapshot,
    SamplingState,
    Setup,
    SmartState,
    WatchState,
)

log = get_logger(__name__)

# How long pods wait for the first namespace list (namespace policy) before limits are
# applied without it; bounded so a missing RBAC rule cannot stall enforcement.
NAMESPACE_WAIT = 10.0
# A kernel apply batch that takes this long means sysfs writes hang: liveness fails so the
# kubelet restarts the agent (the limits already written stay in place).
APPLY_STUCK_AFTER = 120.0
# On shutdown, queued Kubernetes Events get this long to be posted.
EVENT_FLUSH_SECONDS = 3.0
# With smart limit on and its RBAC grant missing, ask again this often (a SelfSubjectAccess-
# Review per permission): installing deploy/components/smart-limit then needs no restart.
SMART_ACCESS_RECHECK = 60.0


class Agent:
    """The running agent's parts, reachable for tests; the HTTP side reads it only as a
    `web.view.AgentView` (answered by `agent.view.AgentReadout`)."""

    def __init__(self, config: Config, node: NodeSetup, api_client: ApiClient) -> None:
        self.config = config
        self.node = node
        self.api = CoreApi(api_client)
        self.applier = Applier(
            node.hierarchy,
            backend_for(node.hierarchy.version),
            node.devices,
            config.cgroup_driver,
            config.kubelet_cgroup_root,
            node.record or LimitRecord(StateDir(Path(config.state_dir))),
        )
        # What `diskguard profile` measured, for capacity-relative smart limits and limits.
        self.capacity = CapacityReader(StateDir(Path(config.state_dir)))
        self.events = EventSink()
        self._events_unfinished: list[Posting] = []
        # Every batch of cgroup writes holds it: the reconciler's applies, the cgroup
        # sampler's v1 counter arming, the move of limits to new data disks.
        self._kernel_lock = trio.Lock()
        self.reconciler = Reconciler(
            ReconcileSettings(
                node_name=config.node_name,
                prefix=config.annotation_prefix,
                defaults=config.defaults,
                exclusion=config.exclusion,
                resync_interval=config.resync_interval,
                forced_runtime=config.container_runtime,
                guardrails=config.guardrails,
                namespace_wait=NAMESPACE_WAIT,
                cgroup_version=node.hierarchy.version,
                declared_capacity=IOLimits.per_unit(
                    config.smart.settings.device_iops, config.smart.settings.device_bps
                ),
            ),
            self.applier,
            self.events.emit,
            kernel_lock=self._kernel_lock,
            capacity=self.disk_capacity,
        )
        self.data_disks = DataDisks(
            config.data_mounts,
            allow_unmounted=config.data_mount_allow_unmounted,
            resync_interval=config.resync_interval,
            initial=DiskResolution(node.devices, node.disk_problem),
            on_change=self._move_limits,
        )
        # Raw events from the pod source and the namespace watch; parsed at the API edge
        # (kube/pods.py, kube/namespaces.py) into their own typed channels.
        self._watch_send, self._watch_receive = trio.open_memory_channel[WatchEvent](100)
        self._pods_send, self._pods_receive = trio.open_memory_channel[PodEvent](100)
        self._ns_watch_send, self._ns_watch_receive = trio.open_memory_channel[WatchEvent](100)
        self._ns_send, self._ns_receive = trio.open_memory_channel[NamespaceEvent](100)
        self.http_binds: list[str] = []
        # Published by _start_measuring once the sampler opened (a BPF compile takes
        # seconds), and smart limit once it runs (after its RBAC grant); None until then.
        self.sampling: SamplingTask | None = None
        self.smart: SmartLimiter | None = None
        self.sampler_problem = ""
        self._sampler: Sampler | None = None
        self._bio_reader: CgroupSampler | None = None  # bio-level counts for saturation
        self.measuring = trio.Event()  # set once the sampler (if any) is running
        # The kubelet: optional pod source (with the API watch as fallback) and optional
        # IO-rate source for smart limit. KubeletClient() refuses unusable TLS files.
        needs_kubelet = config.kubelet.pod_source or config.smart.use_kubelet_api
        self.kubelet = KubeletClient(config.kubelet) if needs_kubelet else None
        self.kubelet_health = KubeletSourceHealth()
        self.pod_source = SourceSelector(trio.current_time)
        self.pod_watcher = ListWatcher(
            "pods",
            functools.partial(
                self.api.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={config.node_name}",
            ),
            self._watch_send,
        )
        self.namespace_watcher = ListWatcher(
            "namespaces", self.api.list_namespace, self._ns_watch_send
        )
        # Smart limit patches pods only where RBAC grants it (deploy/components/smart-limit).
        self.smart_access: AccessGate | None = None
        if config.smart.enabled and not config.smart.dry_run:
            self.smart_access = AccessGate(
                "smart limit",
                SMART_LIMIT_ACCESS,
                functools.partial(denied_access, api_client),
                interval=SMART_ACCESS_RECHECK,
            )
        self.config_warnings = startup_warnings(config)
        self._readout = AgentReadout(self)

    # -- health ----------------------------------------------------------------------------

    def liveness_problem(self) -> str:
        """Why the agent should be restarted, or "" (the loop answering is itself a sign)."""
        since = self.reconciler.applying_since
        if since is not None and trio.current_time() - since > APPLY_STUCK_AFTER:
            return f"a kernel apply batch has been running for over {APPLY_STUCK_AFTER:.0f}s"
        return ""

    def disk_capacity(self, devices: Sequence[Device]) -> dict[Device, IOLimits]:
        """What percentages of capacity are of, per data disk and field: the measured
        capacity, else the declared one (blocking: reads the node-state directory)."""
        settings = self.config.smart.settings
        measured = {d: c.as_limits() for d, c in self.capacity.per_device(devices).items()}
        declared = IOLimits.per_unit(settings.device_iops, settings.device_bps)
        return disk_capacities(devices, measured, declared)

    async def _move_limits(self, devices: tuple[Device, ...]) -> None:
        """The data disks changed: limits go to the new ones, diskguard's come off the old."""
        async with self._kernel_lock:  # between two apply batches
            self.applier.set_devices(devices)
            if self._sampler is not None and devices:  # the BPF device filter map, too
                try:
                    await trio.to_thread.run_sync(self._sampler.set_devices, devices)
                except Exception as exc:  # measuring must not stop enforcement
                    log.warning("sampler cannot follow the new data disks", error=str(exc))
            if self._bio_reader is not None and devices:
                self._bio_reader.set_devices(devices)
        self.reconciler.resync_now()

    def readiness_problem(self) -> str:
        if self.data_disks.problem:
            return self.data_disks.problem
        record = self.applier.record
        if record is not None and record.problem:
            return f"limit record: {record.problem}"
        if not self.reconciler.synced.is_set():
            return "initial reconcile not done yet"
        problem = self._pod_source_problem()
        if problem:
            return problem
        if self.smart_access is not None and self.smart_access.problem():
            return self.smart_access.problem()
        return ""

    def _pod_source_problem(self) -> str:
        """The pod source (kubelet, or the API watch) making no progress for the grace."""
        now, grace = trio.current_time(), self.config.readiness_watch_grace
        kubelet_mode = self.kubelet is not None and self.config.kubelet.pod_source
        if kubelet_mode and self.pod_source.active is Source.KUBELET:
            return self.kubelet_health.problem(now, grace, self.config.kubelet.poll_interval)
        return self.pod_watcher.problem(now, grace)

    def ready(self) -> bool:
        return not self.readiness_problem()

    # -- web.view.AgentView, answered by the readout (so the Agent itself can be served) ----

    def health_snapshot(self) -> Health:
        return self._readout.health_snapshot()

    def setup_snapshot(self) -> Setup:
        return self._readout.setup_snapshot()

    def node_snapshot(self) -> NodeState:
        return self._readout.node_snapshot()

    def reconcile_snapshot(self) -> ReconcileSnapshot:
        return self._readout.reconcile_snapshot()

    def watch_snapshots(self) -> tuple[WatchState, ...]:
        return self._readout.watch_snapshots()

    def events_snapshot(self) -> EventsState:
        return self._readout.events_snapshot()

    def sampling_snapshot(self) -> SamplingState:
        return self._readout.sampling_snapshot()

    def smart_snapshot(self) -> SmartState:
        return self._readout.smart_snapshot()

    async def _open_sampler(self) -> Sampler | None:
        """BPF when it can run (compiling takes seconds: in a thread), else the cgroup
        counters; a node where neither works still gets its limits enforced."""
        try:
            return await trio.to_thread.run_sync(
                lambda: open_sampler(
                    self.config.sampler,
                    self.node.devices,
                    self.node.hierarchy.path,
                    self.node.hierarchy.version,
                    get_logger("diskguard.sampler"),
                )
            )
        except SamplerUnavailable as exc:
            if self.config.sampler is SamplerKind.BPF:
                raise  # asked for BPF explicitly: say so at start-up rather than degrade
            log.error(
                "no IO sampler (limits are still enforced; smart limit is off)", reason=str(exc)
            )
            self.sampler_problem = str(exc)
            return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.info(
            "diskguard starting",
            node=self.config.node_name,
            cgroup_version=self.node.hierarchy.version.value,
            cgroup_root=str(self.node.hierarchy.path),
            devices=", ".join(f"{d.name or '?'}={d}" for d in self.node.devices),
            defaults=str(self.config.defaults),
        )
        for warning in self.config_warnings:
            log.warning("configuration warning", reason=warning)
        try:
            async with trio.open_nursery() as nursery:
                self._start_enforcement(nursery)
                if self.smart_access is not None:
                    nursery.start_soon(self.smart_access.run, name="smart-limit-access")
                self.http_binds = await nursery.start(
                    functools.partial(web.serve, self._readout, self.config.http_addr),
                    name="http",
                )
                log.info(
                    "serving /healthz /readyz /metrics /status",
                    addresses=", ".join(self.http_binds),
                )
                # Measuring starts alongside: a BPF compile must not delay enforcement.
                nursery.start_soon(self._start_measuring, nursery, name="measurement")
                task_status.started()
        finally:
            if self._sampler is not None:
                self._sampler.close()  # detach the BPF program; kernel limits stay
            # Events already decided (a limit was applied) are still worth telling: give
            # them a bounded moment on the way out.
            with trio.CancelScope(shield=True), trio.move_on_after(EVENT_FLUSH_SECONDS):
                self.events.close()
                await post_events(
                    self.events,
                    self.api,
                    self.config.node_name,
                    rate=50.0,
                    attempts=1,
                    first=self._events_unfinished,  # the one cut off mid-post, if any
                )

    def _start_enforcement(self, nursery: trio.Nursery) -> None:
        if self.kubelet is not None and self.config.kubelet.pod_source:
            nursery.start_soon(
                functools.partial(
                    run_pod_source,
                    self.kubelet,
                    self.config.node_name,
                    self._watch_send.clone(),
                    interval=self.config.kubelet.poll_interval,
                    health=self.kubelet_health,
                    selector=self.pod_source,
                    api_watch=self.pod_watcher.run,
                ),
                name="pod-source",
            )
        else:
            nursery.start_soon(self.pod_watcher.run, name="pod-watch")
        nursery.start_soon(self.namespace_watcher.run, name="namespace-watch")
        if self.node.follow_data_mounts:
            nursery.start_soon(self.data_disks.run, name="data-disks")
        nursery.start_soon(
            parse_pod_events,
            self._watch_receive,
            self._pods_send,
            self.reconciler.settings.forced_runtime,
            name="pod-parse",
        )
        nursery.start_soon(
            parse_namespace_events, self._ns_watch_receive, self._ns_send, name="namespace-parse"
        )
        nursery.start_soon(
            self.reconciler.run, self._pods_receive, self._ns_receive, name="cgroup-apply"
        )
        nursery.start_soon(
            functools.partial(
                post_events,
                self.events,
                self.api,
                self.config.node_name,
                unfinished=self._events_unfinished,
            ),
            name="events",
        )

    async def _run_smart(self, smart: SmartLimiter) -> None:
        """Smart limit, once RBAC lets it patch pods (at once in dry run)."""
        if self.smart_access is not None:
            await self.smart_access.granted.wait()
        self.smart = smart
        await smart.run()

    async def _start_measuring(self, nursery: trio.Nursery) -> None:
        """Open the sampler (BPF compiles in a thread), then wire and start the tasks that
        use it: the smart limiter first, so each rate source is built with its listener."""
        self._sampler = sampler = await self._open_sampler()
        config = self.config
        use_kubelet_rates = self.kubelet is not None and config.smart.use_kubelet_api
        smart: SmartLimiter | None = None
        if config.smart.enabled and (use_kubelet_rates or sampler is not None):
            smart = SmartLimiter(
                config.smart,
                self.reconciler,
                self.api,
                self.events.emit,
                config.annotation_prefix,
                fresh_resource_version=config.kubelet.pod_source,
                measured=lambda: self.capacity.measured(self.applier.devices),
            )
        # Smart limit listens to one rate source: the kubelet's when asked for, else ours.
        listeners = () if smart is None else (smart.on_samples,)
        rates: KubeletRateTask | None = None
        if self.kubelet is not None and use_kubelet_rates:
            rates = KubeletRateTask(
                self.kubelet,
                self.reconciler,
                max(config.sample_interval, config.kubelet.poll_interval),
                self.node.devices,
                listeners=listeners,
            )
        if sampler is not None:
            # Beside the eBPF sampler (requests), bio-level counts for saturation come from
            # the cgroups' own counters; the cgroup sampler's are those already.
            self._bio_reader = bio = (
                None
                if sampler.kind == "cgroup"
                else CgroupSampler(
                    self.applier.devices,
                    self.node.hierarchy.path,
                    self.node.hierarchy.version,
                    get_logger("diskguard.saturation"),
                    arm=False,  # it reads limited cgroups only: their rules arm counting
                )
            )
            saturation = SaturationMonitor(
                bio,
                SaturationEvents(
                    config.saturation_event_intervals, config.saturation_event_cooldown
                ),
                self.events.emit,
                self.reconciler.pods,
            )
            self.sampling = SamplingTask(
                sampler,
                self.reconciler,
                config.sample_interval,
                kernel_lock=self._kernel_lock,
                listeners=() if use_kubelet_rates else listeners,
                disks=lambda: self.applier.devices,
                observed_window=config.capacity_observed_window,
                saturation=saturation,
                pressure=self.node.hierarchy.version is CgroupVersion.V2,
            )
            log.info("IO sampler started", kind=sampler.kind, degraded=sampler.degraded or "")
        if smart is not None:
            nursery.start_soon(self._run_smart, smart, name="smart-limit")
        if self.sampling is not None:
            nursery.start_soon(self.sampling.run, name="sampler")
        if rates is not None:
            nursery.start_soon(rates.run, name="kubelet-rates")
        self.measuring.set()


async def run_until_signalled(config: Config, env: Mapping[str, str]) -> None:
    node = await trio.to_thread.run_sync(inspect_node, config)
    record = await trio.to_thread.run_sync(LimitRecord, StateDir(Path(config.state_dir)))
    node = attrs.evolve(node, record=record)
    api_client = make_api_client(env)
    agent = Agent(config, node, api_client)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info(
                        "stopping on a signal; kernel limits stay in place",
                        signal=signal.Signals(signum).name,
                    )
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
    if agent.kubelet is not None:
        await agent.kubelet.aclose()
    api_client.close()
