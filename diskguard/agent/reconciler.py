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
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import trio

from diskguard.agent.namespaces import NamespacePolicies
from diskguard.kube.events import EventRequest, pod_event
from diskguard.kube.pods import PodParseError, parse_pod
from diskguard.kube.watch import Changed, ChangeKind, Relisted, WatchEvent
from diskguard.model import (
    CgroupVersion,
    ContainerKey,
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
from diskguard.policy.resolve import Guardrails, KeyMemory
from diskguard.policy.values import render_limit, shown
from diskguard.web.view import ContainerSnapshot, PodSnapshot, ReconcileSnapshot

log = logging.getLogger(__name__)

RETRY_INITIAL = 0.05
RETRY_MAX = 1.0
# A cgroup that has not appeared after this many tries (about 16 s) will not appear soon
# (a kata/gVisor RuntimeClass, kubelet without per-QoS cgroups): the pod waits for its
# next event or the resync instead of being looked for every second forever.
RETRY_ATTEMPTS = 20


@attrs.frozen
class ReconcileSettings:
    node_name: str
    prefix: str
    defaults: IOLimits
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


@attrs.define
class _Retry:
    due: float
    delay: float
    attempts: int = 1


class Reconciler:
    def __init__(
        self,
        settings: ReconcileSettings,
        applier: Applier,
        emit: Callable[[EventRequest], None],
        *,
        kernel_lock: trio.Lock | None = None,
    ) -> None:
        self.settings = settings
        self._applier = applier
        self._emit = emit
        self.pods: dict[str, PodInfo] = {}
        self.plans: dict[str, PodPlan] = {}
        self.results: dict[ContainerKey, ApplyResult] = {}
        self._memory: dict[str, KeyMemory] = {}
        self._announced: dict[str, tuple[object, bool]] = {}
        self._warned: dict[str, frozenset[tuple[str, str]]] = {}
        self._errors_logged: dict[ContainerKey, str] = {}
        self._parse_failures: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._retry: dict[str, _Retry] = {}
        # Held around every batch of kernel writes; shared with whatever else writes cgroup
        # files (the cgroup sampler arming v1 counters, see sampler/cgroupfs.py; the move of
        # limits to new data disks), which the agent's wiring hands the same lock.
        self._kernel_lock = kernel_lock if kernel_lock is not None else trio.Lock()
        self.synced = trio.Event()  # set after the first full reconcile
        self.reconciles = 0
        # Outcome counters for /metrics: per container-apply, how it ended.
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.applying_since: float | None = None  # set while a batch is in the kernel
        self._relisted = False
        self.namespaces = NamespacePolicies(settings.prefix, emit)
        self._clamps_warned: dict[str, frozenset[object]] = {}
        self._raised_warned: dict[str, frozenset[object]] = {}
        # Unexpected errors: counted by stage for /metrics, the latest per pod (uid, or the
        # namespace/name key when the pod has no usable uid) for /status.
        self.error_counts: collections.Counter[ErrorStage] = collections.Counter()
        self.pod_errors: dict[str, PodError] = {}
        # Pods whose containers' cgroups did not appear after RETRY_ATTEMPTS: uid -> names.
        self.cgroup_given_up: dict[str, tuple[str, ...]] = {}
        self._wait_scope: trio.CancelScope | None = None  # the loop's wait for input

    def resync_now(self) -> None:
        """Re-apply every pod now (the data disks changed), not at the next resync."""
        self._dirty |= set(self.pods)
        if self._wait_scope is not None:
            self._wait_scope.cancel()

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
        for uid, plan in self.plans.items():
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
        )

    # -- input ---------------------------------------------------------------------------

    def on_watch_event(self, event: WatchEvent) -> None:
        try:
            self._on_watch_event(event)
        except Exception as exc:
            # A bug reachable from tenant input must cost that event, not the task.
            log.exception("taking in a %s watch event failed", event.resource)
            self._record(ErrorStage.EVENT, "", f"{event.resource} event", exc)

    def _on_watch_event(self, event: WatchEvent) -> None:
        if event.resource == "namespaces":
            changed = self.namespaces.on_watch_event(event)
            if changed:
                self._dirty |= {uid for uid, p in self.pods.items() if p.namespace in changed}
            return
        if isinstance(event, Relisted):
            seen = set()
            keys = set()
            for obj in event.objects:
                keys.add(_pod_key(obj))
                uid = self._upsert(obj)
                if uid:
                    seen.add(uid)
            for uid in set(self.pods) - seen:
                self._forget(uid)
            for key in set(self._parse_failures) - keys:
                del self._parse_failures[key]
            self._dirty |= set(self.pods)
            self._relisted = True
        elif isinstance(event, Changed):
            if event.kind is ChangeKind.DELETED:
                meta = event.object.get("metadata") if isinstance(event.object, Mapping) else None
                self._parse_failures.pop(_pod_key(event.object), None)
                self._forget(str(meta.get("uid", "")) if isinstance(meta, Mapping) else "")
            else:
                uid = self._upsert(event.object)
                if uid:
                    self._dirty.add(uid)

    def _upsert(self, obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        if not isinstance(meta, Mapping):
            meta = {}
        key = _pod_key(obj)
        try:
            pod = parse_pod(obj, self.settings.forced_runtime)
        except PodParseError as exc:
            # Keep acting on the last good version of the pod, if any; say it once.
            if self._parse_failures.get(key) != str(exc):
                self._parse_failures[key] = str(exc)
                log.warning("ignoring pod update: %s", exc)
            uid = str(meta.get("uid", ""))
            return uid if uid in self.pods else None
        self._parse_failures.pop(key, None)
        if pod.node_name != self.settings.node_name:
            self._forget(pod.uid)
            return None
        old = self.pods.get(pod.uid)
        if old is not None:
            gone = {c.container_id for c in old.containers} - {
                c.container_id for c in pod.containers
            }
            self._applier.forget([cid for cid in gone if cid])
        self.pods[pod.uid] = pod
        return pod.uid

    def _forget(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is not None:
            self._applier.forget([c.container_id for c in pod.containers if c.container_id])
        tables = (
            self.plans,
            self._memory,
            self._announced,
            self._warned,
            self._retry,
            self._clamps_warned,
            self._raised_warned,
            self.pod_errors,
            self.cgroup_given_up,
        )
        for table in tables:
            table.pop(uid, None)
        self._dirty.discard(uid)
        for key in [k for k in self.results if k.pod_uid == uid]:
            del self.results[key]
            self._errors_logged.pop(key, None)

    # -- the task ------------------------------------------------------------------------

    async def run(self, receive: trio.MemoryReceiveChannel[WatchEvent]) -> None:
        next_resync = math.inf
        wait = self.settings.namespace_wait
        namespaces_due = math.inf if wait is None else trio.current_time() + wait
        while True:
            gated = not self.namespaces.listed and trio.current_time() < namespaces_due
            deadline = min([next_resync, *(r.due for r in self._retry.values())])
            if gated:
                deadline = min(deadline, namespaces_due)
            elif self._dirty:
                deadline = -math.inf  # resync_now() during the last batch: go at once
            with trio.move_on_at(deadline) as self._wait_scope:
                self.on_watch_event(await receive.receive())
            self._wait_scope = None
            while True:  # take everything already queued as one batch
                try:
                    self.on_watch_event(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            now = trio.current_time()
            if not self.namespaces.listed and now < namespaces_due:
                continue  # pods wait for their namespaces' policy (bounded by namespace_wait)
            if namespaces_due <= now and not self.namespaces.listed and wait is not None:
                log.warning(
                    "no namespace list after %.0fs: applying without namespace policy "
                    "until it arrives",
                    wait,
                )
                namespaces_due = math.inf
                self._dirty |= set(self.pods)
            if now >= next_resync:
                self._dirty |= set(self.pods)
            relisted, self._relisted = self._relisted, False
            if relisted or now >= next_resync:
                next_resync = now + self.settings.resync_interval
            for uid, retry in list(self._retry.items()):
                if retry.due <= now:
                    self._dirty.add(uid)
            if self._dirty or relisted:
                await self.reconcile(self._take_dirty())
                if not self.synced.is_set():
                    self.synced.set()
                    log.info("initial reconcile done: %d pods", len(self.pods))

    def _take_dirty(self) -> list[str]:
        dirty, self._dirty = sorted(self._dirty), set()
        return dirty

    async def reconcile(self, uids: Iterable[str]) -> None:
        pod_plans = []
        for uid in uids:
            pod = self.pods.get(uid)
            if pod is None:
                continue
            plan = self._plan(pod)
            if plan is not None:
                pod_plans.append(plan)
        container_plans = [c for p in pod_plans for c in p.containers]
        self.applying_since = trio.current_time()
        try:
            async with self._kernel_lock:
                results = await trio.to_thread.run_sync(self._applier.apply, container_plans)
        except Exception as exc:
            # Applier.apply contains each container; this is the last line of defence.
            log.exception("applying a batch of %d containers failed", len(container_plans))
            self._record(ErrorStage.APPLY, "", f"batch of {len(container_plans)}", exc)
            results = []
        finally:
            self.applying_since = None
        self.reconciles += 1
        by_pod: dict[str, list[ApplyResult]] = {}
        for result in results:
            self.results[result.ref.key] = result
            by_pod.setdefault(result.ref.pod_uid, []).append(result)
        now = trio.current_time()
        for plan in pod_plans:
            try:
                self._after_apply(plan, by_pod.get(plan.pod.uid, []), now)
            except Exception as exc:
                log.exception("%s: reporting the apply failed", plan.pod.key)
                self._record(ErrorStage.APPLY, plan.pod.uid, plan.pod.key, exc)

    def _plan(self, pod: PodInfo) -> PodPlan | None:
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
                previous=self._memory.get(uid),
                namespace=self.namespaces.get(pod.namespace),
                guardrails=s.guardrails,
                cgroup_version=s.cgroup_version,
            )
            self._memory[uid] = plan.resolution.memory
            self.plans[uid] = plan
            self._warn_invalid(plan)
            self._warn_clamped(plan)
            self._warn_raised(plan)
        except Exception as exc:
            log.exception("%s: planning failed; applying the node's policy", pod.key)
            self._record(ErrorStage.PLAN, uid, pod.key, exc)
            try:
                plan = plan_pod(
                    attrs.evolve(pod, annotations={}),
                    prefix=s.prefix,
                    defaults=s.defaults,
                    exclusion=s.exclusion,
                    previous=None,
                    guardrails=s.guardrails,
                    cgroup_version=s.cgroup_version,
                )
            except Exception:
                log.exception("%s: planning with the node's policy failed too", pod.key)
                return None
            self.plans[uid] = plan
            return plan
        if (err := self.pod_errors.get(uid)) is not None and err.stage is ErrorStage.PLAN:
            del self.pod_errors[uid]
        return plan

    def _record(self, stage: ErrorStage, uid: str, where: str, exc: BaseException) -> None:
        self.error_counts[stage] += 1
        text = str(exc)
        if len(text) > 200:
            text = f"{text[:200]}... ({len(text)} characters)"
        self.pod_errors[uid or where] = PodError(stage, where, f"{type(exc).__name__}: {text}")
        # Bounded: entries of pods that are gone are pruned by _forget; keyless ones here.
        while len(self.pod_errors) > max(100, 2 * len(self.pods)):
            del self.pod_errors[next(iter(self.pod_errors))]

    def _after_apply(self, plan: PodPlan, results: list[ApplyResult], now: float) -> None:
        uid = plan.pod.uid
        waiting = [r for r in results if r.cgroup is None and not r.error]
        if waiting:
            self._wait_for_cgroups(plan, [r.ref.container for r in waiting], now)
        else:
            self._retry.pop(uid, None)
            self.cgroup_given_up.pop(uid, None)
        aborted = [r for r in results if r.aborted]
        self.error_counts[ErrorStage.APPLY] += len(aborted)
        if aborted:
            first = aborted[0]
            self.pod_errors[uid] = PodError(
                ErrorStage.APPLY, plan.pod.key, first.error, first.ref.container
            )
        elif (err := self.pod_errors.get(uid)) is not None and err.stage is ErrorStage.APPLY:
            del self.pod_errors[uid]
        for r in results:
            self.outcomes[_outcome(r)] += 1
            if r.error and self._errors_logged.get(r.ref.key) != r.error:
                self._errors_logged[r.ref.key] = r.error
                log.error("%s: applying limits failed: %s", r.ref.display, r.error)
            elif not r.error:
                self._errors_logged.pop(r.ref.key, None)
            if r.wrote:
                log.info("%s: limits set (%s): %s", r.ref.display, r.cgroup, "; ".join(r.changes))
        if any(r.wrote for r in results):
            self._announce(plan)

    def _wait_for_cgroups(self, plan: PodPlan, names: list[str], now: float) -> None:
        """Retry with backoff, RETRY_ATTEMPTS times; then until the pod's next event or the
        resync (which start a new round), reported in /status and the waiting gauge."""
        uid = plan.pod.uid
        old = self._retry.get(uid)
        if old is None:
            self._retry[uid] = _Retry(now + RETRY_INITIAL, RETRY_INITIAL)
            if uid not in self.cgroup_given_up:
                log.info("%s: cgroup of %s not there yet, retrying", plan.pod.key, ", ".join(names))
        elif old.attempts >= RETRY_ATTEMPTS:
            del self._retry[uid]
            if uid not in self.cgroup_given_up:
                log.warning(
                    "%s: no cgroup for %s after %d tries; trying again at the pod's next "
                    "event or the resync",
                    plan.pod.key,
                    ", ".join(names),
                    old.attempts + 1,
                )
            self.cgroup_given_up[uid] = tuple(names)
        else:
            delay = min(RETRY_MAX, old.delay * 2)
            self._retry[uid] = _Retry(now + delay, delay, old.attempts + 1)

    def _announce(self, plan: PodPlan) -> None:
        """One IOLimitApplied Event per change of a pod's annotation-driven limits."""
        uid, res = plan.pod.uid, plan.resolution
        signature = (res.limits, res.keep)
        previous = self._announced.get(uid)
        self._announced[uid] = (signature, res.annotation_driven)
        if previous is not None and previous[0] == signature:
            return  # e.g. a container restart: same limits on a new cgroup
        if not res.annotation_driven and not (previous and previous[1]):
            return  # env defaults on a new pod: no Event per pod on the node
        self._emit(pod_event(plan.pod, "IOLimitApplied", f"IO limits in force: {res.describe()}"))

    def _warn_invalid(self, plan: PodPlan) -> None:
        """One Warning Event per distinct bad value, saying what stays in force instead."""
        uid, res = plan.pod.uid, plan.resolution
        bad = frozenset((b.key, b.value) for b in plan.parsed.invalid.values())
        already = self._warned.get(uid, frozenset())
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
        self._warned[uid] = bad

    def _warn_raised(self, plan: PodPlan) -> None:
        """One Warning Event per distinct set of limits raised to the kernel's minimum."""
        res = plan.resolution
        signature = frozenset((f, res.limits.get(f)) for f in res.raised)
        if not signature or self._raised_warned.get(plan.pod.uid) == signature:
            if not signature:
                self._raised_warned.pop(plan.pod.uid, None)
            return
        self._raised_warned[plan.pod.uid] = signature
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

    def _warn_clamped(self, plan: PodPlan) -> None:
        """One Warning Event per distinct set of clamped requests of a pod."""
        clamps = plan.resolution.clamps
        signature = frozenset(clamps)
        if not clamps or self._clamps_warned.get(plan.pod.uid) == signature:
            if not clamps:
                self._clamps_warned.pop(plan.pod.uid, None)
            return
        self._clamps_warned[plan.pod.uid] = signature
        asked = "; ".join(
            f"{c.key}={render_limit(c.asked)} asked, "
            f"{c.field}={render_limit(c.enforced)} enforced "
            f"({plan.resolution.sources[c.field]})"
            for c in clamps
        )
        self._emit(pod_event(plan.pod, "IOLimitClamped", asked, warning=True))


def _pod_key(obj: object) -> str:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return "None/None"
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _outcome(result: ApplyResult) -> str:
    if result.error:
        return "error"
    if result.cgroup is None:
        return "cgroup_missing"
    return "changed" if result.wrote else "unchanged"
