"""The cgroup-apply task: level-triggered reconcile of pods on this node against the kernel.

Every pod event marks its pod dirty; a batch of dirty pods is planned (pure) and applied
(kernel I/O in a thread). Containers whose cgroup does not exist yet are retried with a
short backoff, up to RETRY_ATTEMPTS times, then again at the pod's next event or resync;
a periodic resync re-reads every container so drift is repaired.

Everything a pod carries is written by a possibly hostile tenant: an unexpected exception
while taking in one event, planning one pod or applying one container is logged with the
pod, counted (`pod_errors`), kept for /status, and never ends the task.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import attrs
import trio

from diskguard.agent.namespace_policies import NamespacePolicies
from diskguard.kube.events import EventRequest, pod_event
from diskguard.kube.namespaces import NamespaceEvent
from diskguard.kube.pods import PodEvent, PodParseFailure, PodUpdate, state_key
from diskguard.kube.watch import Changed, ChangeKind, Relisted
from diskguard.logs import get_logger
from diskguard.model import (
    CgroupVersion,
    ContainerKey,
    Device,
    DurationHistogram,
    ErrorStage,
    IOLimits,
    PodError,
    PodInfo,
    Runtime,
)
from diskguard.node.applier import Applier, ApplyResult
from diskguard.policy.annotations import LIMIT_KEYS
from diskguard.policy.exclusion import ExclusionFilter
from diskguard.policy.plan import KERNEL_MIN_LIMIT, PodPlan, plan_pod
from diskguard.policy.resolve import Clamp, Guardrails, KeyMemory
from diskguard.policy.shares import NO_DISKS, Capacities
from diskguard.policy.values import LimitSettings, render_limit, shown
from diskguard.web.view import ContainerSnapshot, PodSnapshot, ReconcileSnapshot

log = get_logger(__name__)

RETRY_INITIAL = 0.05
RETRY_MAX = 1.0
# A cgroup that has not appeared after this many tries (about 16 s) will not appear soon
# (a kata/gVisor RuntimeClass, kubelet without per-QoS cgroups): the pod waits for its
# next event or the resync instead of being looked for every second forever.
RETRY_ATTEMPTS = 20
# Unexpected errors that belong to no pod (a whole batch, an event with no pod) kept for
# /status; those of a pod go with the pod.
LOOSE_ERRORS = 100
# How often the data disks' capacity (what percentages are of) is read again: a stat of the
# capacity record, which `diskguard profile` may rewrite at any time.
CAPACITY_CHECK_INTERVAL = 5.0


@attrs.frozen
class ReconcileSettings:
    node_name: str
    prefix: str
    defaults: LimitSettings | IOLimits
    exclusion: ExclusionFilter
    resync_interval: float
    forced_runtime: Runtime | None = None
    guardrails: Guardrails = Guardrails()
    # Seconds to wait for the first namespace list before applying without namespace
    # policy (so a node does not flap from env defaults to namespace defaults at start);
    # None when namespaces are not watched.
    namespace_wait: float | None = None
    # Decides the smallest limit the kernel accepts (io.max refuses 1).
    cgroup_version: CgroupVersion = CgroupVersion.V1
    capacity_check_interval: float = CAPACITY_CHECK_INTERVAL
    # SMART_LIMIT_DEVICE_*: what a data disk can do until its capacity is read (a failed
    # read included), so that an env percentage, which requires it, always resolves.
    declared_capacity: IOLimits = IOLimits()


@attrs.frozen
class _Retry:
    due: float
    delay: float
    attempts: int = 1


@attrs.define
class PodState:
    """Everything the reconciler keeps about one pod, so forgetting a pod is one `del`.

    The record is the agent's own and changes as the pod does; what it holds are frozen
    values, replaced (never mutated) on each change.
    """

    # The last version that parsed; None while the pod has never parsed (the state then
    # only remembers the parse failure, to log it once).
    pod: PodInfo | None = None
    parse_failure: str = ""  # the last parse failure said in the log, "" once it parses
    plan: PodPlan | None = None
    planned_seq: int = 0  # when the pod was first planned (the order snapshot() keeps)
    memory: KeyMemory | None = None  # last good value of each annotation key
    # The latest apply of each container (by name), and the error last logged for it.
    results: Mapping[str, ApplyResult] = attrs.field(factory=dict)
    # The cgroup found for each container instance (by container ID; a restarted container
    # has a new ID), so it is not looked up again at every apply.
    cgroups: Mapping[str, Path] = attrs.field(factory=dict)
    errors_logged: Mapping[str, str] = attrs.field(factory=dict)
    # What the last IOLimitApplied Event said (limits, keep) and whether it was annotation
    # driven; the Warning Events already sent (so each is sent once per distinct content).
    announced: tuple[object, bool] | None = None
    warned: frozenset[tuple[str, str]] = frozenset()
    clamps_warned: frozenset[object] = frozenset()
    raised_warned: frozenset[object] = frozenset()
    retry: _Retry | None = None  # waiting for a container's cgroup to appear
    # Containers whose cgroups did not appear after RETRY_ATTEMPTS.
    given_up: tuple[str, ...] | None = None
    # The latest unexpected error (for /status), and when it was first recorded (its place
    # in the list).
    error: PodError | None = None
    error_seq: int = 0
    # When the reconciler took in the first change of the pod not applied yet (trio clock;
    # None: none pending, or taken in without a clock), for the apply-latency histogram.
    changed_at: float | None = None


V = TypeVar("V")


class _PodView(Mapping[str, V], Generic[V]):
    """A read-only table by pod uid over the pod states (one field of each)."""

    def __init__(self, states: Mapping[str, PodState], pick: Callable[[PodState], V | None]):
        self._states = states
        self._pick = pick

    def __getitem__(self, uid: str) -> V:
        state = self._states.get(uid)
        value = None if state is None else self._pick(state)
        if value is None:
            raise KeyError(uid)
        return value

    def __iter__(self) -> Iterator[str]:
        return (uid for uid, s in self._states.items() if self._pick(s) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ResultView(Mapping[ContainerKey, ApplyResult]):
    """The latest apply result of every container, by container key."""

    def __init__(self, states: Mapping[str, PodState]):
        self._states = states

    def __getitem__(self, key: ContainerKey) -> ApplyResult:
        state = self._states.get(key.pod_uid)
        if state is None:
            raise KeyError(key)
        return state.results[key.container]

    def __iter__(self) -> Iterator[ContainerKey]:
        return (ContainerKey(uid, name) for uid, s in self._states.items() for name in s.results)

    def __len__(self) -> int:
        return sum(len(s.results) for s in self._states.values())


class _ErrorView(Mapping[str, PodError]):
    """The latest unexpected error per pod, oldest first; plus those of no pod."""

    def __init__(self, states: Mapping[str, PodState], loose: Mapping[str, tuple[int, PodError]]):
        self._states = states
        self._loose = loose

    def _ordered(self) -> list[tuple[int, str, PodError]]:
        found = [(s.error_seq, k, s.error) for k, s in self._states.items() if s.error]
        found.extend((seq, k, e) for k, (seq, e) in self._loose.items())
        return sorted(found, key=lambda item: item[0])

    def __getitem__(self, key: str) -> PodError:
        state = self._states.get(key)
        if state is not None and state.error is not None:
            return state.error
        return self._loose[key][1]

    def __iter__(self) -> Iterator[str]:
        return (k for _, k, _ in self._ordered())

    def __len__(self) -> int:
        return sum(1 for s in self._states.values() if s.error) + len(self._loose)


class Reconciler:
    def __init__(
        self,
        settings: ReconcileSettings,
        applier: Applier,
        emit: Callable[[EventRequest], None],
        *,
        kernel_lock: trio.Lock | None = None,
        capacity: Callable[[Sequence[Device]], Capacities] | None = None,
    ) -> None:
        """`capacity` reads what each of the data disks given can do (blocking: it runs in a
        worker thread), which percentages of capacity are resolved against."""
        self.settings = settings
        self._applier = applier
        self._emit = emit
        self._read_capacity = capacity
        # The capacity the plans are made against, and the data disks it was read for
        # (None: not read yet).
        self.capacity: Capacities = NO_DISKS
        self._capacity_devices: tuple[Device, ...] | None = None
        # One record per pod, by uid; a pod that fails to parse with no usable uid is kept
        # by its namespace/name (it never has a PodInfo). Bounded by the pods on the node.
        self._states: dict[str, PodState] = {}
        # Read-only tables over the states, for the HTTP side and the other tasks.
        self.pods: Mapping[str, PodInfo] = _PodView(self._states, lambda s: s.pod)
        self.plans: Mapping[str, PodPlan] = _PodView(self._states, lambda s: s.plan)
        self.results: Mapping[ContainerKey, ApplyResult] = _ResultView(self._states)
        self.cgroup_given_up: Mapping[str, tuple[str, ...]] = _PodView(
            self._states, lambda s: s.given_up
        )
        # Pods to plan and apply at the next batch (a uid forgotten meanwhile is skipped).
        self._dirty: set[str] = set()
        # Held around every batch of kernel writes; shared with whatever else writes cgroup
        # files (the cgroup sampler arming v1 counters, see sampler/cgroupfs.py; the move of
        # limits to new data disks), which the agent's wiring hands the same lock.
        self._kernel_lock = kernel_lock if kernel_lock is not None else trio.Lock()
        self.synced = trio.Event()  # set after the first full reconcile
        self.reconciles = 0
        # Outcome counters for /metrics: per container-apply, how it ended.
        self.outcomes: collections.Counter[str] = collections.Counter()
        # Seconds from taking in a pod change to the kernel holding what it asks for, on
        # containers that already had their cgroup (a new container's first limit waits
        # for the runtime, not for us).
        self.apply_latency = DurationHistogram()
        self.applying_since: float | None = None  # set while a batch is in the kernel
        self._relisted = False
        self.namespaces = NamespacePolicies(settings.prefix, emit)
        # Unexpected errors: counted by stage for /metrics, the latest per pod (in its state)
        # and the latest of no pod (a batch, an event without a pod) for /status.
        self.error_counts: collections.Counter[ErrorStage] = collections.Counter()
        self._loose_errors: dict[str, tuple[int, PodError]] = {}
        self._error_seq = itertools.count(1)
        self._plan_seq = itertools.count(1)
        self.pod_errors: Mapping[str, PodError] = _ErrorView(self._states, self._loose_errors)
        self._wait_scope: trio.CancelScope | None = None  # the loop's wait for input

    def _live(self) -> set[str]:
        """The uids of the pods acted on (those that parsed at least once)."""
        return {uid for uid, s in self._states.items() if s.pod is not None}

    def resync_now(self) -> None:
        """Re-apply every pod now (the data disks changed), not at the next resync."""
        self._dirty |= self._live()
        self._wake()

    async def refresh_capacity(self, devices: Sequence[Device]) -> bool:
        """Read the data disks' capacity again; when it changed, every pod (and namespace
        policy) is planned again, as after a change of the data disks. True if it changed."""
        self._capacity_devices = tuple(devices)
        if self._read_capacity is None:
            return False
        read = self._read_capacity
        try:
            found = dict(await trio.to_thread.run_sync(read, tuple(devices)))
        except Exception as exc:
            # Keep planning against the last capacity known; a disk never read gets the
            # declared one, so no env ceiling lapses for want of a capacity.
            log.warning("reading the data disks' capacity failed", error=_error_text(exc))
            declared = self.settings.declared_capacity
            found = {d: self.capacity.get(d, declared) for d in devices}
        if found == self.capacity:
            return False
        self.capacity = found
        log.info(
            "data disk capacity changed; planning every pod again",
            capacity="; ".join(f"{d}: {c}" for d, c in found.items()),
        )
        try:
            self.namespaces.set_capacity(found)
        except Exception:  # the pods are planned again whatever happened to one namespace
            log.exception("judging namespace policies against the new capacity failed")
        self._dirty |= self._live()
        return True

    def _capacities(self, devices: Sequence[Device]) -> Capacities:
        """Per data disk, what plans resolve percentages against: the capacity read, else
        the declared one (a disk added since the last read)."""
        declared = self.settings.declared_capacity
        return {d: self.capacity.get(d, declared) for d in devices}

    # -- output --------------------------------------------------------------------------

    def snapshot(self) -> ReconcileSnapshot:
        """Everything the HTTP side (web.view) reads from the reconciler, as one frozen value.

        The contract, whatever the tables behind it: `pods` holds every pod that has a plan
        (in the order the pods were first planned), each with its latest `PodPlan` and, per
        container of that plan and in its order, the latest `ApplyResult` for the
        container's key (None before the first apply) and whether its cgroup wait was given
        up (RETRY_ATTEMPTS tries without a cgroup; cleared by an apply that finds every
        cgroup). `outcomes`, `error_counts` and `reconciles` are the counters since start;
        `pod_errors` the latest unexpected error per pod (plus keyless ones), oldest first.
        Read-only: it copies, never changes anything, and costs O(pods + containers).
        """
        pods = []
        planned = sorted(
            ((s.planned_seq, uid, s.plan) for uid, s in self._states.items() if s.plan),
            key=lambda item: item[0],
        )
        for _, uid, plan in planned:
            given_up = self.cgroup_given_up.get(uid, ())
            pods.append(
                PodSnapshot(
                    plan,
                    tuple(
                        ContainerSnapshot(
                            c,
                            self.results.get(c.ref.key),
                            c.ref.container in given_up,
                        )
                        for c in plan.containers
                    ),
                )
            )
        return ReconcileSnapshot(
            pods=tuple(pods),
            outcomes=dict(self.outcomes),
            error_counts=dict(self.error_counts),
            pod_errors=tuple(self.pod_errors.values()),
            reconciles=self.reconciles,
            apply_latency=self.apply_latency,
        )

    # -- input ---------------------------------------------------------------------------

    def on_pod_event(self, event: PodEvent, at: float | None = None) -> None:
        """Take in one watch event; `at` (trio clock) starts the apply-latency clock of the
        pods it changes."""
        try:
            self._on_pod_event(event, at)
        except Exception as exc:
            # A bug reachable from tenant input must cost that event, not the task.
            log.exception("taking in a watch event failed", watch=event.resource)
            self._record(ErrorStage.EVENT, "", f"{event.resource} event", _error_text(exc))

    def on_namespace_event(self, event: NamespaceEvent) -> None:
        try:
            changed = self.namespaces.on_event(event)
        except Exception as exc:
            log.exception("taking in a watch event failed", watch=event.resource)
            self._record(ErrorStage.EVENT, "", f"{event.resource} event", _error_text(exc))
            return
        if changed:
            self._dirty |= {
                uid
                for uid, s in self._states.items()
                if s.pod is not None and s.pod.namespace in changed
            }

    def _on_pod_event(self, event: PodEvent, at: float | None) -> None:
        if isinstance(event, Relisted):
            seen = set()
            for update in event.objects:
                seen.add(self._upsert(update, event.resource))
            for key in set(self._states) - seen:
                self._forget(key)
            live = self._live()
            self._dirty |= live
            self._relisted = True
            for key in live:
                self._changed(self._states[key], at)
        elif isinstance(event, Changed):
            if event.kind is ChangeKind.DELETED:
                self._forget(state_key(event.object))
            else:
                key = self._upsert(event.object, event.resource)
                state = self._states.get(key)
                if state is not None and state.pod is not None:
                    self._dirty.add(key)
                    self._changed(state, at)

    @staticmethod
    def _changed(state: PodState, at: float | None) -> None:
        if at is not None and state.changed_at is None:
            state.changed_at = at

    def _upsert(self, update: PodUpdate, resource: str) -> str:
        """Take in one version of a pod; return the key of its state."""
        key = state_key(update)
        if isinstance(update, PodParseFailure):
            if update.unexpected:
                # Counted and shown as before parsing moved to the API edge.
                self._record(ErrorStage.EVENT, "", f"{resource} event", update.error)
                return key
            # Keep acting on the last good version of the pod, if any; say it once.
            state = self._states.setdefault(key, PodState())
            if state.parse_failure != update.error:
                state.parse_failure = update.error
                # The key is the uid, or namespace/name when the pod has no usable uid.
                log.warning("ignoring pod update", pod_key=update.key, reason=update.error)
            return key
        pod = update
        if pod.node_name != self.settings.node_name:
            self._forget(pod.uid)
            return pod.uid
        state = self._states.setdefault(pod.uid, PodState())
        state.parse_failure = ""
        if state.pod is not None:
            gone = {c.container_id for c in state.pod.containers} - {
                c.container_id for c in pod.containers
            }
            if gone & set(state.cgroups):
                self._applier.forget([p for cid, p in state.cgroups.items() if cid in gone])
                state.cgroups = {c: p for c, p in state.cgroups.items() if c not in gone}
        state.pod = pod
        return pod.uid

    def _forget(self, key: str) -> None:
        state = self._states.pop(key, None)
        if state is not None:
            self._applier.forget(list(state.cgroups.values()))

    # -- the task ------------------------------------------------------------------------

    async def run(
        self,
        pods: trio.MemoryReceiveChannel[PodEvent],
        namespaces: trio.MemoryReceiveChannel[NamespaceEvent],
    ) -> None:
        """Take pod events (batched) and namespace events (each on its own channel) and
        reconcile, until cancelled."""
        # Before any namespace policy or pod is judged: a percentage is checked against it.
        await self.refresh_capacity(self._applier.devices)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._take_namespaces, namespaces)
            await self._loop(pods)

    async def _take_namespaces(self, namespaces: trio.MemoryReceiveChannel[NamespaceEvent]) -> None:
        async for event in namespaces:
            self.on_namespace_event(event)
            self._wake()  # the namespace list may ungate the pods, or change their policy

    def _wake(self) -> None:
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _loop(self, receive: trio.MemoryReceiveChannel[PodEvent]) -> None:
        next_resync = math.inf
        wait = self.settings.namespace_wait
        namespaces_due = math.inf if wait is None else trio.current_time() + wait
        capacity_due = (
            math.inf
            if self._read_capacity is None
            else trio.current_time() + self.settings.capacity_check_interval
        )
        while True:
            gated = not self.namespaces.listed and trio.current_time() < namespaces_due
            deadline = min([next_resync, capacity_due, *(r.due for r in self._retries())])
            if gated:
                deadline = min(deadline, namespaces_due)
            elif self._dirty:
                deadline = -math.inf  # resync_now() during the last batch: go at once
            with trio.move_on_at(deadline) as self._wait_scope:
                event = await receive.receive()
                self.on_pod_event(event, _stamp(event))
            self._wait_scope = None
            while True:  # take everything already queued as one batch
                try:
                    event = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                self.on_pod_event(event, _stamp(event))
            now = trio.current_time()
            if now >= capacity_due:
                await self.refresh_capacity(self._applier.devices)
                capacity_due = trio.current_time() + self.settings.capacity_check_interval
            if not self.namespaces.listed and now < namespaces_due:
                continue  # pods wait for their namespaces' policy (bounded by namespace_wait)
            if namespaces_due <= now and not self.namespaces.listed and wait is not None:
                log.warning(
                    "no namespace list yet: applying without namespace policy until it arrives",
                    waited_s=round(wait),
                )
                namespaces_due = math.inf
                self._dirty |= self._live()
            if now >= next_resync:
                self._dirty |= self._live()
            relisted, self._relisted = self._relisted, False
            if relisted or now >= next_resync:
                next_resync = now + self.settings.resync_interval
            for uid, state in self._states.items():
                if state.retry is not None and state.retry.due <= now:
                    self._dirty.add(uid)
            if self._dirty or relisted:
                await self.reconcile(self._take_dirty())
                if not self.synced.is_set():
                    self.synced.set()
                    log.info("initial reconcile done", pods=len(self.pods))

    def _retries(self) -> Iterator[_Retry]:
        return (s.retry for s in self._states.values() if s.retry is not None)

    def _take_dirty(self) -> list[str]:
        dirty, self._dirty = sorted(self._dirty), set()
        return dirty

    async def reconcile(self, uids: Iterable[str]) -> None:
        uids = list(uids)
        devices = tuple(self._applier.devices)
        # New data disks (or the first batch): their capacity before any plan for them.
        if devices != self._capacity_devices and await self.refresh_capacity(devices):
            self._dirty -= set(uids)  # planned here, with it
        pod_plans = []
        # Each pod's pending change is this batch's, applied or not (a pod whose planning
        # failed twice starts afresh at its next change).
        changed: dict[str, float] = {}
        for uid in uids:
            state = self._states.get(uid)
            if state is None or state.pod is None:
                continue
            if state.changed_at is not None:
                changed[uid], state.changed_at = state.changed_at, None
            plan = self._plan(state, state.pod, devices)
            if plan is not None:
                pod_plans.append(plan)
        container_plans = [c for p in pod_plans for c in p.containers]
        known = {
            cid: path
            for p in pod_plans
            if (state := self._states.get(p.pod.uid)) is not None
            for cid, path in state.cgroups.items()
        }
        self.applying_since = trio.current_time()
        try:
            async with self._kernel_lock:
                results = await trio.to_thread.run_sync(self._applier.apply, container_plans, known)
        except Exception as exc:
            # Applier.apply contains each container; this is the last line of defence.
            log.exception("applying a batch failed", containers=len(container_plans))
            self._record(ErrorStage.APPLY, "", f"batch of {len(container_plans)}", _error_text(exc))
            results = []
        finally:
            self.applying_since = None
        self.reconciles += 1
        by_pod: dict[str, list[ApplyResult]] = {}
        for result in results:
            by_pod.setdefault(result.ref.pod_uid, []).append(result)
        now = trio.current_time()
        for plan in pod_plans:
            state = self._states.get(plan.pod.uid)
            if state is None:
                continue
            mine = by_pod.get(plan.pod.uid, [])
            state.results = {**state.results, **{r.ref.container: r for r in mine}}
            cgroups = dict(state.cgroups)
            for r in mine:
                if r.cgroup is None or r.lookup_again:
                    cgroups.pop(r.ref.container_id, None)
                else:
                    cgroups[r.ref.container_id] = r.cgroup
            state.cgroups = cgroups
            changed_at = changed.get(plan.pod.uid)
            if changed_at is not None and any(
                r.wrote and r.ref.container_id in known for r in mine
            ):
                self.apply_latency = self.apply_latency.observe(now - changed_at)
            try:
                self._after_apply(state, plan, mine, now)
            except Exception as exc:
                log.exception(
                    "reporting the apply failed",
                    namespace=plan.pod.namespace,
                    pod=plan.pod.name,
                )
                self._record(ErrorStage.APPLY, plan.pod.uid, plan.pod.key, _error_text(exc))

    def _plan(self, state: PodState, pod: PodInfo, devices: Sequence[Device]) -> PodPlan | None:
        """Plan one pod; if planning raises, fall back to the node's policy (env defaults
        and ceilings, none of the pod's or its namespace's annotations) so the pod's
        containers are still held to what the administrator set."""
        s = self.settings
        uid = pod.uid
        try:
            plan = plan_pod(
                pod,
                prefix=s.prefix,
                defaults=s.defaults,
                exclusion=s.exclusion,
                previous=state.memory,
                namespace=self.namespaces.get(pod.namespace),
                guardrails=s.guardrails,
                cgroup_version=s.cgroup_version,
                devices=devices,
                capacity=self._capacities(devices),
            )
            state.memory = plan.resolution.memory
            if state.plan is None:
                state.planned_seq = next(self._plan_seq)
            state.plan = plan
            self._warn_invalid(state, plan)
            self._warn_clamped(state, plan)
            self._warn_raised(state, plan)
        except Exception as exc:
            log.exception(
                "planning failed; applying the node's policy",
                namespace=pod.namespace,
                pod=pod.name,
            )
            self._record(ErrorStage.PLAN, uid, pod.key, _error_text(exc))
            try:
                plan = plan_pod(
                    attrs.evolve(pod, annotations={}),
                    prefix=s.prefix,
                    defaults=s.defaults,
                    exclusion=s.exclusion,
                    previous=None,
                    guardrails=s.guardrails,
                    cgroup_version=s.cgroup_version,
                    devices=devices,
                    capacity=self._capacities(devices),
                )
            except Exception:
                log.exception(
                    "planning with the node's policy failed too",
                    namespace=pod.namespace,
                    pod=pod.name,
                )
                return None
            if state.plan is None:
                state.planned_seq = next(self._plan_seq)
            state.plan = plan
            return plan
        if state.error is not None and state.error.stage is ErrorStage.PLAN:
            state.error = None
        return plan

    def _record(self, stage: ErrorStage, uid: str, where: str, error: str) -> None:
        self.error_counts[stage] += 1
        self._set_error(uid, PodError(stage, where, error), where)

    def _set_error(self, uid: str, error: PodError, where: str = "") -> None:
        """Keep `error` as the latest of its pod (in the pod's state), or of no pod."""
        state = self._states.get(uid) if uid else None
        if state is not None:
            if state.error is None:
                state.error_seq = next(self._error_seq)
            state.error = error
            return
        key = uid or where
        old = self._loose_errors.get(key)
        self._loose_errors[key] = (old[0] if old else next(self._error_seq), error)
        # Bounded: these belong to no pod, so nothing else would ever drop them.
        while len(self._loose_errors) > LOOSE_ERRORS:
            del self._loose_errors[next(iter(self._loose_errors))]

    def _after_apply(
        self, state: PodState, plan: PodPlan, results: list[ApplyResult], now: float
    ) -> None:
        waiting = [r for r in results if r.cgroup is None and not r.error]
        if waiting:
            self._wait_for_cgroups(state, plan, [r.ref.container for r in waiting], now)
        else:
            state.retry = None
            state.given_up = None
        aborted = [r for r in results if r.aborted]
        self.error_counts[ErrorStage.APPLY] += len(aborted)
        if aborted:
            first = aborted[0]
            self._set_error(
                plan.pod.uid,
                PodError(ErrorStage.APPLY, plan.pod.key, first.error, first.ref.container),
            )
        elif state.error is not None and state.error.stage is ErrorStage.APPLY:
            state.error = None
        logged = dict(state.errors_logged)
        for r in results:
            self.outcomes[_outcome(r)] += 1
            if r.error and logged.get(r.ref.container) != r.error:
                logged[r.ref.container] = r.error
                log.error(
                    "applying limits failed",
                    namespace=r.ref.namespace,
                    pod=r.ref.pod,
                    container=r.ref.container,
                    error=r.error,
                )
            elif not r.error:
                logged.pop(r.ref.container, None)
            if r.wrote:
                log.info(
                    "limits set",
                    namespace=r.ref.namespace,
                    pod=r.ref.pod,
                    container=r.ref.container,
                    cgroup=str(r.cgroup),
                    changes="; ".join(r.changes),
                )
        state.errors_logged = logged
        if any(r.wrote for r in results):
            self._announce(state, plan)

    def _wait_for_cgroups(
        self, state: PodState, plan: PodPlan, names: list[str], now: float
    ) -> None:
        """Retry with backoff, RETRY_ATTEMPTS times; then until the pod's next event or the
        resync (which start a new round), reported in /status and the waiting gauge."""
        old = state.retry
        if old is None:
            state.retry = _Retry(now + RETRY_INITIAL, RETRY_INITIAL)
            if state.given_up is None:
                log.info(
                    "cgroup not there yet, retrying",
                    namespace=plan.pod.namespace,
                    pod=plan.pod.name,
                    containers=", ".join(names),
                )
        elif old.attempts >= RETRY_ATTEMPTS:
            state.retry = None
            if state.given_up is None:
                log.warning(
                    "no cgroup after retries; trying again at the pod's next event or the resync",
                    namespace=plan.pod.namespace,
                    pod=plan.pod.name,
                    containers=", ".join(names),
                    tries=old.attempts + 1,
                )
            state.given_up = tuple(names)
        else:
            delay = min(RETRY_MAX, old.delay * 2)
            state.retry = _Retry(now + delay, delay, old.attempts + 1)

    def _announce(self, state: PodState, plan: PodPlan) -> None:
        """One IOLimitApplied Event per change of a pod's annotation-driven limits."""
        res = plan.resolution
        signature = (res.limits, res.keep)
        previous = state.announced
        state.announced = (signature, res.annotation_driven)
        if previous is not None and previous[0] == signature:
            return  # e.g. a container restart: same limits on a new cgroup
        if not res.annotation_driven and not (previous and previous[1]):
            return  # env defaults on a new pod: no Event per pod on the node
        self._emit(pod_event(plan.pod, "IOLimitApplied", f"IO limits in force: {res.describe()}"))

    def _warn_invalid(self, state: PodState, plan: PodPlan) -> None:
        """One Warning Event per distinct bad value, saying what stays in force instead."""
        res = plan.resolution
        bad = frozenset((b.key, b.value) for b in plan.parsed.invalid.values())
        already = state.warned
        for suffix, b in plan.parsed.invalid.items():
            if (b.key, b.value) in already:
                continue
            in_force = ", ".join(
                f"{field} stays "
                + (
                    "as the kernel holds it"
                    if field in res.keep
                    else render_limit(res.limits.get(field))
                )
                + f" ({res.sources[field]})"
                for field in LIMIT_KEYS[suffix][1]
            )
            self._emit(
                pod_event(
                    plan.pod,
                    "InvalidIOLimit",
                    f"annotation {b.key}={shown(b.value)} ignored: {b.reason}; {in_force}",
                    warning=True,
                )
            )
        state.warned = bad

    def _warn_raised(self, state: PodState, plan: PodPlan) -> None:
        """One Warning Event per distinct set of limits raised to the kernel's minimum."""
        res = plan.resolution
        signature = frozenset((f, res.limits.get(f)) for f in res.raised)
        if state.raised_warned == signature:
            return  # nothing raised (never warned), or this set was said already
        state.raised_warned = signature
        if not signature:
            return
        if not any(res.origins[f].requested_by_pod for f in res.raised):
            return  # not the pod's own request: the administrator's values, said in /status
        fields = ", ".join(f"{f}={res.limits.get(f)}" for f in sorted(res.raised))
        self._emit(
            pod_event(
                plan.pod,
                "IOLimitRaised",
                f"{fields} enforced: the kernel (cgroup v2 io.max) takes no limit below "
                f"{KERNEL_MIN_LIMIT[self.settings.cgroup_version]}, so a requested 1 is "
                "raised to it",
                warning=True,
            )
        )

    def _warn_clamped(self, state: PodState, plan: PodPlan) -> None:
        """One Warning Event per distinct set of clamped requests of a pod."""
        clamps = plan.resolution.clamps
        signature: frozenset[object] = frozenset(clamps)
        if state.clamps_warned == signature:
            return  # nothing clamped (never warned), or this set was said already
        state.clamps_warned = signature
        if not clamps:
            return
        asked = "; ".join(
            f"{c.key}={_asked(c)} asked, "
            f"{c.field}={render_limit(c.enforced)} enforced"
            f"{f' on {c.device}' if c.device is not None else ''} "
            f"({c.why or plan.resolution.sources[c.field]})"
            for c in clamps
        )
        self._emit(pod_event(plan.pod, "IOLimitClamped", asked, warning=True))


def _stamp(event: PodEvent) -> float:
    """When the apply latency of what `event` changes starts: at the API edge, else now."""
    return event.at if event.at is not None else trio.current_time()


def _asked(clamp: Clamp) -> str:
    """What a clamped pod asked: `25% (500)` for a percentage, else the number."""
    number = render_limit(clamp.asked)
    return number if clamp.share is None else f"{clamp.share} ({number})"


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 200:
        text = f"{text[:200]}... ({len(text)} characters)"
    return f"{type(exc).__name__}: {text}"


def _outcome(result: ApplyResult) -> str:
    if result.error:
        return "error"
    if result.cgroup is None:
        return "cgroup_missing"
    return "changed" if result.wrote else "unchanged"
