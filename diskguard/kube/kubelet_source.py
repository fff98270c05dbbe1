"""Pods from the kubelet's `/pods`, polled, as the same `Relisted` events the API watch sends.

The kubelet knows its own pods without an API-server round trip (and keeps answering while
the API server is away), but it offers no watch: every poll is a full list, so a poll is
turned into a `Relisted` snapshot, and only when its content changed. Content, not
resourceVersions: for static pods the kubelet overlays its own status without a new
resourceVersion, and a container ID appearing in that status is exactly what the
reconciler waits for.

`run_pod_source` chooses between the kubelet and the API watch with `SourceSelector`
(pure, clock injected): after `failures_to_fall_back` failed polls in a row it runs the API
watch instead, probes the kubelet every `retry_interval`, and switches back on the first
good answer. Exactly one source feeds the channel at a time, and each switch starts with a
full snapshot (the watch lists first; the kubelet's first answer is always emitted), so the
reconciler's view is rebuilt whole and nothing falls between the two.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from diskguard.kube.kubelet import KubeletError
from diskguard.kube.watch import Relisted, WatchEvent
from diskguard.logs import get_logger

log = get_logger(__name__)

Clock = Callable[[], float]

FALLBACK_AFTER_FAILURES = 3
KUBELET_RETRY_INTERVAL = 60.0


class PodLister(Protocol):
    async def pods(self) -> list[dict[str, Any]]: ...


class Source(enum.Enum):
    KUBELET = "kubelet"
    API = "api"


@attrs.define
class KubeletSourceHealth:
    """What the kubelet side of the pod source did; readiness reads `problem()` while the
    kubelet is the active source (Agent.readiness_problem, so /readyz and diskguard_ready)."""

    polls: int = 0
    relists: int = 0  # snapshots sent to the reconciler
    failures: int = 0
    failing_since: float | None = None
    last_error: str = ""
    last_success: float | None = None
    last_answer: float | None = None  # the end of the last poll, good or failed

    def succeeded(self, now: float) -> None:
        if self.failing_since is not None:
            log.info("kubelet pod source recovered")
        self.polls += 1
        self.failing_since = None
        self.last_error = ""
        self.last_success = self.last_answer = now

    def problem(self, now: float, grace: float, interval: float) -> str:
        """Why the kubelet pod source is not healthy for readiness, or "": failing for
        longer than `grace`, or no poll ended (well or not) for longer than `grace` plus one
        poll interval (a poll that hangs). A kubelet answering errors is failing, not silent."""
        if self.failing_since is not None and now - self.failing_since > grace:
            return (
                f"kubelet pod source failing for {now - self.failing_since:.0f}s "
                f"({self.last_error})"
            )
        if self.last_answer is not None and now - self.last_answer > grace + interval:
            return f"no answer from the kubelet pod source for {now - self.last_answer:.0f}s"
        return ""

    def failed(self, now: float, error: KubeletError) -> None:
        if str(error) != self.last_error:
            log.warning("kubelet pod source failed", error=str(error))
        self.polls += 1
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = str(error)
        self.last_answer = now


class SourceSelector:
    """Which source feeds the reconciler, from the kubelet's successes and failures.

    KUBELET: `failures_to_fall_back` failures in a row switch to API. API: the kubelet is
    probed once `probe_at` has passed; a good probe switches back, a failed one waits
    another `retry_interval`. Methods return True when they switched.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        failures_to_fall_back: int = FALLBACK_AFTER_FAILURES,
        retry_interval: float = KUBELET_RETRY_INTERVAL,
    ) -> None:
        if failures_to_fall_back < 1:
            raise ValueError(f"failures_to_fall_back must be >= 1, got {failures_to_fall_back}")
        if not retry_interval > 0:
            raise ValueError(f"retry_interval must be > 0, got {retry_interval}")
        self._clock = clock
        self.failures_to_fall_back = failures_to_fall_back
        self.retry_interval = retry_interval
        self.active = Source.KUBELET
        self.consecutive_failures = 0
        self.probe_at: float | None = None  # only while on API
        self.switches = 0

    def kubelet_succeeded(self) -> bool:
        self.consecutive_failures = 0
        if self.active is Source.API:
            self.active, self.probe_at = Source.KUBELET, None
            self.switches += 1
            return True
        return False

    def kubelet_failed(self) -> bool:
        self.consecutive_failures += 1
        if self.active is Source.API:
            self.probe_at = self._clock() + self.retry_interval
            return False
        if self.consecutive_failures >= self.failures_to_fall_back:
            self.active = Source.API
            self.probe_at = self._clock() + self.retry_interval
            self.switches += 1
            return True
        return False

    def probe_due(self) -> bool:
        return (
            self.active is Source.API
            and self.probe_at is not None
            and self._clock() >= self.probe_at
        )


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


class PodListChanges:
    """Tells whether a full pod list differs from the last one it was shown (order aside)."""

    def __init__(self) -> None:
        self._last: dict[str, Mapping[str, Any]] | None = None

    def changed(self, pods: Sequence[Mapping[str, Any]]) -> bool:
        current = {_pod_key(p): p for p in pods}
        if current == self._last:
            return False
        self._last = current
        return True

    def reset(self) -> None:
        """Forget: the next list counts as changed (after another source fed the channel)."""
        self._last = None


def on_node(pods: Sequence[Mapping[str, Any]], node_name: str) -> tuple[Mapping[str, Any], ...]:
    """The kubelet only lists its own pods; a pod naming another node is dropped anyway."""

    def node_of(pod: object) -> object:
        spec = pod.get("spec") if isinstance(pod, Mapping) else None
        return spec.get("nodeName") if isinstance(spec, Mapping) else None

    # Malformed entries pass through to the reconciler, whose parser rejects them one by one.
    return tuple(p for p in pods if node_of(p) in (None, node_name))


async def _poll_once(
    client: PodLister, node_name: str, health: KubeletSourceHealth
) -> tuple[Mapping[str, Any], ...] | KubeletError:
    try:
        pods = await client.pods()
    except KubeletError as exc:
        health.failed(trio.current_time(), exc)
        return exc
    health.succeeded(trio.current_time())
    return on_node(pods, node_name)


async def _emit(
    send: trio.MemorySendChannel[WatchEvent],
    pods: tuple[Mapping[str, Any], ...],
    health: KubeletSourceHealth,
) -> None:
    await send.send(Relisted(pods, "", "pods"))
    health.relists += 1


async def _poll_loop(
    client: PodLister,
    node_name: str,
    send: trio.MemorySendChannel[WatchEvent],
    interval: float,
    health: KubeletSourceHealth,
    changes: PodListChanges,
    selector: SourceSelector | None,
) -> None:
    """Poll until the selector falls back to the API (forever without a selector)."""
    while True:
        started = trio.current_time()
        result = await _poll_once(client, node_name, health)
        if isinstance(result, KubeletError):
            if selector is not None and selector.kubelet_failed():
                return
        else:
            if selector is not None:
                selector.kubelet_succeeded()
            if changes.changed(result):
                await _emit(send, result, health)
        await trio.sleep_until(started + interval)


async def run_kubelet_pod_source(
    client: PodLister,
    node_name: str,
    send: trio.MemorySendChannel[WatchEvent],
    interval: float,
    health: KubeletSourceHealth,
) -> None:
    """Poll the kubelet's `/pods` every `interval` s forever, sending a `Relisted` whenever
    the list changed. A failed poll keeps the last snapshot (nothing is sent)."""
    await _poll_loop(client, node_name, send, interval, health, PodListChanges(), None)


async def run_pod_source(
    client: PodLister,
    node_name: str,
    send: trio.MemorySendChannel[WatchEvent],
    *,
    interval: float,
    health: KubeletSourceHealth,
    selector: SourceSelector,
    api_watch: Callable[[], Awaitable[None]],
    on_switch: Callable[[Source], None] | None = None,
) -> None:
    """The kubelet as the pod source, with the API watch (`api_watch`, e.g. a pod
    ListWatcher's `run`) as the fallback that `selector` turns on and off.

    `on_switch(source)` is called on every switch (for metrics or Events), before the new
    source's first snapshot is sent.
    """
    changes = PodListChanges()
    while True:
        if selector.active is Source.KUBELET:
            await _poll_loop(client, node_name, send, interval, health, changes, selector)
            if on_switch is not None:
                on_switch(Source.API)
            log.warning(
                "kubelet failing: pods now come from the API server watch",
                failures=selector.consecutive_failures,
                error=health.last_error,
                retry_every_s=round(selector.retry_interval),
            )
            continue
        pods: tuple[Mapping[str, Any], ...] = ()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(api_watch, name="pod-watch-fallback")
            while True:
                await trio.sleep_until(selector.probe_at or trio.current_time())
                result = await _poll_once(client, node_name, health)
                if isinstance(result, KubeletError):
                    selector.kubelet_failed()
                    continue
                selector.kubelet_succeeded()
                pods = result
                break
            # The watch is cancelled and gone before the kubelet's snapshot is sent: all it
            # sent is queued ahead, and the snapshot replaces it whole.
            nursery.cancel_scope.cancel()
        log.info("kubelet answers again: pods come from the kubelet")
        if on_switch is not None:
            on_switch(Source.KUBELET)
        changes.reset()
        changes.changed(pods)
        await _emit(send, pods, health)
        await trio.sleep(interval)
