"""Kubernetes Events about pods: queued without blocking, posted concurrently with retry.

The apply path must never wait on the API server, so Events go through a bounded queue; a
full queue drops its *oldest* Event (counted) rather than stalling enforcement or refusing
the newest. A few posts run at once (bounded concurrency) under an overall rate limit with a
burst, so under normal conditions an Event reaches the API server within milliseconds of the
decision, and one slow or failing Event - retried on its own with backoff - never holds up
the others.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import secrets
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from kubernetes.client.exceptions import ApiException

from diskguard.kube.api import CoreApi
from diskguard.logs import get_logger
from diskguard.model import PodInfo

log = get_logger(__name__)

QUEUE_SIZE = 1000
# Posts in flight at once: one slow or failing Event holds one slot, the others go on.
CONCURRENCY = 4
# Overall rate after a burst: the kubelet's defaults for its own Events (--event-qps 50,
# --event-burst 100), so a whole node's worth of decisions at once (a ceiling change that
# clamps 100 pods) still arrives within about a second.
RATE = 50.0
BURST = 100


class InvolvedKind(enum.StrEnum):
    """The kind of object an Event is about (the API's spelling)."""

    POD = "Pod"
    NAMESPACE = "Namespace"


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@attrs.frozen
class EventRequest:
    kind: InvolvedKind = attrs.field(converter=InvolvedKind)
    namespace: str  # "" for cluster-scoped objects
    name: str
    uid: str
    reason: str
    message: str
    type: EventType = attrs.field(default=EventType.NORMAL, converter=EventType)


def pod_event(pod: PodInfo, reason: str, message: str, *, warning: bool = False) -> EventRequest:
    return EventRequest(
        kind=InvolvedKind.POD,
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        reason=reason,
        message=message,
        type=EventType.WARNING if warning else EventType.NORMAL,
    )


def event_body(req: EventRequest, node_name: str, now: dt.datetime) -> dict[str, Any]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    namespace = req.namespace or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{req.name}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": req.kind.value,
            "namespace": req.namespace or None,
            "name": req.name,
            "uid": req.uid,
        },
        "reason": req.reason,
        "message": req.message[:1024],
        "type": req.type.value,
        "source": {"component": "diskguard", "host": node_name},
        "reportingComponent": "diskguard",
        "reportingInstance": node_name,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


@attrs.frozen
class Queued:
    """An Event decided at `at` (wall clock, for its timestamps) and `since` (trio clock)."""

    request: EventRequest
    at: dt.datetime
    since: float


@attrs.define
class EventStats:
    """What happened to the Events; read by metrics and /status."""

    posted: int = 0  # accepted by the API server (a 409 for a retried original counts)
    failed: int = 0  # given up after the retries, or refused with a client error
    dropped: int = 0  # the oldest waiting Event, dropped because the queue was full
    retries: int = 0
    last_latency: float | None = None  # seconds from the decision to the accepted post
    max_latency: float = 0.0
    # Events decided, by reason (IOLimitApplied, SmartLimitApplied, ...): what the agent
    # said, whatever became of the post.
    emitted: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def copy(self) -> EventStats:
        """A copy that does not follow later counts (for snapshots)."""
        return attrs.evolve(self, emitted=collections.Counter(self.emitted))


class EventQueue:
    """A bounded FIFO of Events waiting to be posted: full, it drops the oldest.

    `put` never blocks (it runs on the apply path); `get` waits for the next Event and
    raises trio.EndOfChannel once the queue is closed and empty."""

    def __init__(self, size: int, stats: EventStats) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self._size = size
        self._items: collections.deque[Queued] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._stats = stats

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Queued) -> None:
        if self._closed:
            log.warning(
                "event not posted: shutdown began",
                reason=item.request.reason,
                **_about(item.request),
            )
            return
        if len(self._items) >= self._size:
            oldest = self._items.popleft()
            self._stats.dropped += 1
            log.warning(
                "event queue full; dropped the oldest",
                size=self._size,
                reason=oldest.request.reason,
                **_about(oldest.request),
            )
        self._items.append(item)
        self._lot.unpark()

    async def get(self) -> Queued:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._lot.park()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()


class EventSink:
    """Producer side: `emit` never blocks. Owns the queue and the statistics."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.stats = EventStats()
        self.queue = EventQueue(size, self.stats)

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    def emit(self, req: EventRequest) -> None:
        log_fn = log.warning if req.type is EventType.WARNING else log.info
        log_fn("event %s %s/%s: %s", req.reason, req.namespace, req.name, req.message)
        self.stats.emitted[req.reason] += 1
        self.queue.put(Queued(req, dt.datetime.now(dt.UTC), trio.current_time()))

    def close(self) -> None:
        """No more Events: `post_events` returns once the queue is empty (the flush)."""
        self.queue.close()


# A request, its body (name fixed: a repost makes no duplicate) and when it was decided.
Posting = tuple[EventRequest, dict[str, Any], float]


class _TokenBucket:
    """At most `rate` posts per second on average, `burst` at once (trio clock)."""

    def __init__(self, rate: float, burst: int) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = trio.current_time()

    async def take(self) -> None:
        while True:
            now = trio.current_time()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await trio.sleep((1 - self._tokens) / self._rate)


async def post_events(
    sink: EventSink,
    api: CoreApi,
    node_name: str,
    *,
    rate: float = RATE,
    burst: int = BURST,
    concurrency: int = CONCURRENCY,
    attempts: int = 5,
    unfinished: list[Posting] | None = None,
    first: Sequence[Posting] = (),
) -> None:
    """Post the sink's Events, `concurrency` at a time and at most `rate` per second after
    a burst of `burst`; each retries transient failures on its own (`attempts`, backoff).

    Returns once the sink is closed and every Event is posted (or given up). Cancelled
    (shutdown), every Event taken but not finished - mid-post, between retries or waiting
    for a slot - goes to `unfinished`, so that the shutdown flush can post it again (pass it
    as `first`): its body keeps its name, so an original that did reach the API server makes
    no duplicate."""
    limiter = _TokenBucket(rate, burst)
    slots = trio.Semaphore(concurrency)
    stats = sink.stats
    cut: list[Posting] = []  # cancelled mid-post or between retries

    async def post_one(posting: Posting) -> None:
        try:
            await _post(api, posting, attempts, stats)
        except trio.Cancelled:
            cut.append(posting)
            raise
        finally:
            slots.release()

    async def next_posting() -> Posting:
        queued = await sink.queue.get()
        return (queued.request, event_body(queued.request, node_name, queued.at), queued.since)

    pending = list(first)
    held: Posting | None = None
    try:
        async with trio.open_nursery() as nursery:
            while True:
                if pending:
                    held = pending.pop(0)
                else:
                    try:
                        held = await next_posting()
                    except trio.EndOfChannel:
                        break
                await slots.acquire()
                await limiter.take()
                nursery.start_soon(post_one, held)
                held = None
    finally:
        # Cancelled (shutdown): hand back what was taken and not finished.
        if unfinished is not None:
            unfinished.extend(cut)
            if held is not None:
                unfinished.append(held)
            unfinished.extend(pending)


async def _post(api: CoreApi, posting: Posting, attempts: int, stats: EventStats) -> None:
    req, body, since = posting
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            # Abandoned on cancel (shutdown must not wait on a hung API server); a retried
            # Event keeps its name, so a late original makes no duplicate.
            await trio.to_thread.run_sync(
                lambda: api.create_namespaced_event(
                    body["metadata"]["namespace"],
                    body,
                    _request_timeout=(5, 10),
                ),
                abandon_on_cancel=True,
            )
            _posted(stats, since)
            return
        except ApiException as exc:
            # 4xx other than throttling will not get better by retrying.
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                if exc.status == 409:  # a retried Event whose original arrived
                    _posted(stats, since)
                else:
                    stats.failed += 1
                    log.warning(
                        "event rejected", reason=req.reason, status=exc.status, **_about(req)
                    )
                return
            err: str = f"HTTP {exc.status}"
        except Exception as exc:  # connection errors of many types
            err = type(exc).__name__
        if attempt == attempts:
            stats.failed += 1
            log.warning(
                "event not posted",
                reason=req.reason,
                attempts=attempts,
                error=err,
                **_about(req),
            )
        else:
            stats.retries += 1
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _posted(stats: EventStats, since: float) -> None:
    latency = trio.current_time() - since
    stats.posted += 1
    stats.last_latency = latency
    stats.max_latency = max(stats.max_latency, latency)


def _about(req: EventRequest) -> dict[str, str]:
    """The log fields naming what an Event is about: a pod, or a namespace."""
    if req.kind is InvolvedKind.POD:
        return {"namespace": req.namespace, "pod": req.name}
    return {"namespace": req.name}
