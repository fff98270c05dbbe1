"""The smart-limit task: judge each container's recent IO, and write or remove diskguard's
own smart-limit annotations on its pod.

The API server stays the single source of truth: this task only patches annotations; the
pod watch sees them and the apply task enforces them, so a restart loses nothing. History
lives in memory, so after a restart detection and lifting resume after a fresh window.

Patches carry a resourceVersion precondition. With the kubelet as the pod source the pod's
resourceVersion is useless for that (the kubelet's `/pods` keeps the first one it saw, so
the precondition would fail with 409 forever): the pod is read from the API server first,
and the patch is sent with that resourceVersion only if the API server's copy is the pod the
decision was made on (same UID, not being deleted, the same diskguard annotations).
"""

from __future__ import annotations

import collections
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import trio
from kubernetes.client.exceptions import ApiException

from diskguard.agent.reconciler import Reconciler
from diskguard.config import SmartConfig
from diskguard.kube.api import CoreApi
from diskguard.kube.events import pod_event
from diskguard.logs import get_logger
from diskguard.model import ContainerKey, IOLimits, PodInfo
from diskguard.policy.annotations import (
    AUTO_BPS,
    AUTO_IOPS,
    LIMIT_REASON,
    OWN_KEYS,
    SMART_LIMIT,
    SMART_LIMIT_TIER,
    parse_smart_annotations,
)
from diskguard.policy.plan import Enforcement, PodPlan
from diskguard.policy.smart import AutoLimit, Bucket, Decision, Sample, SmartAction
from diskguard.policy.tiers import (
    DEFAULT_TIER,
    Capacity,
    Removal,
    TierVerdict,
    judge,
    strictest,
    tighter,
)

log = get_logger(__name__)


def _reason(container: str, verdict: TierVerdict) -> str:
    """Why, for the annotation and the Event: each tier that triggered, with the lowest rate
    of its window against its threshold."""
    return "; ".join(
        f"{container}: {t.metric.words} stayed at or above "
        + (
            f"{t.fraction:g} x {t.reference} = {t.threshold:g}"
            if t.fraction is not None
            else f"{t.threshold:g}"
        )
        + f" for {t.window:g}s (tier {t.tier}; lowest {t.observed:.0f})"
        for t in verdict.triggers
    )


def _tier_of(limit: AutoLimit, current: AutoLimit, fired: Iterable[TierVerdict]) -> str:
    """The tier that set what changes: the IOPS limit's if it changes, else the bytes/s's."""
    verdicts = list(fired)
    if limit.iops and limit.iops != current.iops:
        for v in verdicts:
            if v.limit.iops == limit.iops and v.iops_tier:
                return v.iops_tier
    if limit.bps and limit.bps != current.bps:
        for v in verdicts:
            if v.limit.bps == limit.bps and v.bps_tier:
                return v.bps_tier
    return ""


class SmartLimiter:
    def __init__(
        self,
        smart: SmartConfig,
        reconciler: Reconciler,
        api: CoreApi,
        emit: Any,
        prefix: str,
        *,
        fresh_resource_version: bool = False,
        measured: Callable[[], IOLimits | None] = lambda: None,
    ) -> None:
        settings = smart.settings
        self.settings = settings
        self.tiers = smart.tiers
        self.monitor_interval = monitor_interval = smart.monitor_interval
        self._remove_delay = smart.remove_delay
        self._remove_check_interval = smart.remove_check_interval
        # Thresholds and limits relative to capacity use the measured one (`diskguard
        # profile`, read at each evaluation: `measured` reads the node-state file), else the
        # declared one (SMART_LIMIT_DEVICE_*).
        self._declared = self._capacity = Capacity(settings.device_iops, settings.device_bps)
        self._measured = measured
        self._minimum = AutoLimit(settings.min_iops, settings.min_bps)
        self._reconciler = reconciler
        self._api = api
        self._emit = emit
        self._prefix = prefix
        self.dry_run = smart.dry_run
        patches_per_minute = smart.patches_per_minute
        # The pods come from the kubelet: read the current resourceVersion before patching.
        self._fresh_resource_version = fresh_resource_version
        self._buckets: dict[ContainerKey, Bucket] = {}
        # Sticky removal per pod uid: since when every tier has been calm, and when it was
        # last checked (every SMART_LIMIT_REMOVE_CHECK_INTERVAL; every pass without a delay).
        self._removals: dict[str, tuple[Removal, float]] = {}
        longest = max(t.window for t in self.tiers)
        depth = math.ceil(longest / monitor_interval) + 2
        self._history: dict[ContainerKey, collections.deque[Sample]] = {}
        self._depth = depth
        self._max_interval = 1.0
        # Patch budget: a node full of busy containers must not storm the API server.
        self._tokens = float(patches_per_minute)
        self._rate = patches_per_minute / 60.0
        self._burst = float(patches_per_minute)
        self._last_refill = 0.0
        self.decisions: dict[str, Decision] = {}  # per pod uid, last non-trivial decision
        self.patches = collections.Counter[str]()
        # Samples count from the moment the task runs: the rate source is wired to it from
        # the start, but the task may wait long for its RBAC grant.
        self._running = False

    # -- input from the sampler ----------------------------------------------------------

    def on_samples(self, samples: dict[ContainerKey, Sample]) -> None:
        if not self._running:
            return
        for key, sample in samples.items():
            self._max_interval = max(self._max_interval, sample.interval)
            self._buckets.setdefault(key, Bucket()).add(sample.at, sample.interval, sample.low)

    def _close_buckets(self) -> None:
        live = set(self._buckets)
        for key, bucket in self._buckets.items():
            closed = bucket.close(self._max_interval)
            history = self._history.setdefault(key, collections.deque(maxlen=self._depth))
            if closed is None:
                history.clear()  # a gap: the window must fill again
            else:
                history.append(closed)
        self._buckets = {}
        for gone in set(self._history) - live:
            del self._history[gone]

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        self._last_refill = trio.current_time()
        while True:
            await trio.sleep(self.monitor_interval)
            self._close_buckets()
            await self.evaluate()

    @property
    def capacity(self) -> Capacity:
        """The capacity the last evaluation judged against (for /status)."""
        return self._capacity

    async def evaluate(self) -> None:
        now = trio.current_time()
        try:
            measured = await trio.to_thread.run_sync(self._measured)
            self._capacity = attrs.evolve(self._declared, measured=measured)
        except Exception as exc:  # keep judging against the last capacity known
            log.warning("reading the measured disk capacity failed", error=str(exc))
        for gone in set(self.decisions) - set(self._reconciler.plans):
            del self.decisions[gone]  # bounded by the pods on the node, not by churn
        for gone in set(self._removals) - set(self._reconciler.plans):
            del self._removals[gone]
        for uid, plan in list(self._reconciler.plans.items()):
            try:
                await self._evaluate_pod(uid, plan, now)
            except Exception:
                # One pod's bug must not end smart limiting (or the agent) for every pod.
                log.exception(
                    "smart-limit evaluation failed",
                    namespace=plan.pod.namespace,
                    pod=plan.pod.name,
                )

    async def _evaluate_pod(self, uid: str, plan: PodPlan, now: float) -> None:
        pod = plan.pod
        smart = parse_smart_annotations(pod.annotations, self._prefix)
        current = AutoLimit(smart.auto_iops, smart.auto_bps) if smart.active else AutoLimit()
        if smart.opted_out:
            if smart.active:
                await self._lift(pod, "the pod opted out of smart limits")
            return
        # A pod limited before tiers existed carries no tier key: the single window's.
        in_force = (smart.tier or DEFAULT_TIER) if smart.active else ""
        verdicts: dict[str, TierVerdict] = {}
        for cplan in plan.containers:
            if cplan.enforcement is not Enforcement.POD_LIMITS or cplan.resolution is None:
                continue  # excluded containers are not judged
            history = self._history.get(cplan.ref.key)
            if not history:
                continue
            verdicts[cplan.ref.container] = judge(
                list(history),
                now,
                cplan.resolution.static,
                self._capacity,
                current,
                self.tiers,
                remove_threshold=self.settings.remove_threshold,
                minimum=self._minimum,
                in_force=in_force,
            )
        decision = self._pod_decision(uid, verdicts, current, now, in_force)
        if decision.action is SmartAction.APPLY:
            self.decisions[uid] = decision
            await self._apply(pod, decision)
        elif decision.action is SmartAction.LIFT:
            self.decisions[uid] = decision
            await self._lift(pod, decision.reason)

    def _pod_decision(
        self,
        uid: str,
        verdicts: Mapping[str, TierVerdict],
        current: AutoLimit,
        now: float,
        in_force: str = "",
    ) -> Decision:
        """Any container's triggered tier applies its limit (the strictest, per unit), or
        tightens the one in force (another tier's: `judge` leaves the tier in force out).
        The limit goes once every judged container has been calm in every tier for the
        removal delay."""
        fired = {name: v for name, v in verdicts.items() if v.triggers}
        if fired:
            self._removals.pop(uid, None)
            new = strictest([v.limit for v in fired.values()])
            if current.active and not tighter(new, current):
                return Decision(SmartAction.NONE)
            limit = strictest([new, current]) if current.active else new
            reason = "; ".join(_reason(name, v) for name, v in fired.items())
            tier = _tier_of(limit, current, fired.values()) or in_force
            return Decision(SmartAction.APPLY, limit, reason=reason, tier=tier)
        if not current.active:
            self._removals.pop(uid, None)
            return Decision(SmartAction.NONE)
        calm = bool(verdicts) and all(v.calm for v in verdicts.values())
        removal, checked = self._removals.get(uid, (Removal(), -math.inf))
        if self._remove_delay and now - checked < self._remove_check_interval:
            return Decision(SmartAction.NONE)  # decided on checks only: none is due now
        removal = removal.update(calm, now)
        # Kept until the pod shows the limit gone: a lift the patch budget deferred or a
        # 409 refused is retried at the next check, not after another full delay.
        self._removals[uid] = (removal, now)
        if not removal.due(now, self._remove_delay):
            return Decision(SmartAction.NONE)
        return Decision(
            SmartAction.LIFT,
            reason=(
                f"every container's IO stayed below {self.settings.remove_threshold:g} x the "
                f"automatic limit in every tier's window"
                + (f" for {self._remove_delay:g}s" if self._remove_delay else "")
            ),
        )

    def _take_token(self) -> bool:
        now = trio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._last_refill) * self._rate)
        self._last_refill = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _apply(self, pod: PodInfo, decision: Decision) -> None:
        p = self._prefix
        annotations: dict[str, str | None] = {
            f"{p}/{SMART_LIMIT}": "true",
            f"{p}/{AUTO_IOPS}": str(decision.auto.iops) if decision.auto.iops else None,
            f"{p}/{AUTO_BPS}": str(decision.auto.bps) if decision.auto.bps else None,
            f"{p}/{LIMIT_REASON}": decision.reason[:1000],
            f"{p}/{SMART_LIMIT_TIER}": decision.tier or None,
        }
        parts = []
        if decision.auto.iops:
            parts.append(f"{decision.auto.iops} IOPS")
        if decision.auto.bps:
            parts.append(f"{decision.auto.bps} B/s")
        tier = f" (tier {decision.tier})" if decision.tier else ""
        message = f"automatic limit {' and '.join(parts)}{tier}: {decision.reason}"
        if await self._patch(pod, annotations, SmartAction.APPLY, message):
            self._emit(pod_event(pod, "SmartLimitApplied", message))

    async def _lift(self, pod: PodInfo, reason: str) -> None:
        annotations: dict[str, str | None] = {f"{self._prefix}/{k}": None for k in OWN_KEYS}
        message = f"automatic limit removed: {reason}"
        if await self._patch(pod, annotations, SmartAction.LIFT, message):
            self._emit(pod_event(pod, "SmartLimitRemoved", message))

    async def _patch(
        self, pod: PodInfo, annotations: dict[str, str | None], action: SmartAction, message: str
    ) -> bool:
        if self.dry_run:
            log.info(
                "smart limit (dry run): not patching",
                action=action,
                namespace=pod.namespace,
                pod=pod.name,
                reason=message,
            )
            self.patches["dry_run"] += 1
            return False
        if not self._take_token():
            self.patches["rate_limited"] += 1
            log.warning(
                "smart limit: patch budget exhausted, deferred",
                action=action,
                namespace=pod.namespace,
                pod=pod.name,
            )
            return False
        # Only diskguard's own keys, guarded by the resourceVersion the decision was made on:
        # a concurrent edit (opt-out, deletion) makes it fail with 409 and the next pass
        # decides again on the new state.
        try:
            resource_version: str | None = pod.resource_version
            if self._fresh_resource_version:
                resource_version = await self._current_resource_version(pod)
                if resource_version is None:
                    self.patches["stale"] += 1
                    return False
            body = {"metadata": {"resourceVersion": resource_version, "annotations": annotations}}
            # Abandoned on cancel: shutdown must not wait on a hung API server; the patch is
            # guarded by resourceVersion, so a late one cannot do harm.
            await trio.to_thread.run_sync(
                lambda: self._api.patch_namespaced_pod(
                    pod.name, pod.namespace, body, _request_timeout=(5, 10)
                ),
                abandon_on_cancel=True,
            )
        except ApiException as exc:
            self.patches[f"http_{exc.status}"] += 1
            level = logging.INFO if exc.status in (404, 409) else logging.WARNING
            log.log(
                level,
                "smart limit not written; will re-evaluate",
                action=action,
                namespace=pod.namespace,
                pod=pod.name,
                status=exc.status,
            )
            return False
        except Exception as exc:  # connection errors: retried on the next pass
            self.patches["error"] += 1
            log.warning(
                "smart limit patch failed; will retry",
                action=action,
                namespace=pod.namespace,
                pod=pod.name,
                error=type(exc).__name__,
            )
            return False
        self.patches[action] += 1
        log.info(
            "smart limit patched",
            action=action,
            namespace=pod.namespace,
            pod=pod.name,
            reason=message,
        )
        return True

    async def _current_resource_version(self, pod: PodInfo) -> str | None:
        """The API server's resourceVersion of `pod`, or None when its copy is not the pod
        the decision was made on (another pod of that name, being deleted, or diskguard's
        annotations changed since: the kubelet will show the change and the next pass
        decides again). Raises ApiException (404: gone) and connection errors."""
        # The raw response (not a V1Pod): annotations compared exactly as the API holds them.
        response: Any = await trio.to_thread.run_sync(
            lambda: self._api.read_namespaced_pod(
                pod.name, pod.namespace, _preload_content=False, _request_timeout=(5, 10)
            ),
            abandon_on_cancel=True,
        )
        current = json.loads(response.data)
        meta = current.get("metadata") if isinstance(current, Mapping) else None
        if not isinstance(meta, Mapping):
            return None
        why = ""
        if meta.get("uid") != pod.uid:
            why = "it is another pod of that name now"
        elif meta.get("deletionTimestamp"):
            why = "it is being deleted"
        elif self._own(meta.get("annotations")) != self._own(pod.annotations):
            why = "its diskguard annotations changed since the decision"
        if why or not meta.get("resourceVersion"):
            log.info(
                "smart limit: not patching",
                namespace=pod.namespace,
                pod=pod.name,
                reason=why or "no resourceVersion",
            )
            return None
        return str(meta["resourceVersion"])

    def _own(self, annotations: object) -> dict[str, str]:
        """diskguard's annotations (the decision's inputs under our prefix)."""
        if not isinstance(annotations, Mapping):
            return {}
        mark = f"{self._prefix}/"
        return {str(k): str(v) for k, v in annotations.items() if str(k).startswith(mark)}
