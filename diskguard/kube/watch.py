"""List+watch of one resource, in a worker thread, bridged into a trio channel.

The kubernetes client is synchronous, so the blocking HTTP reads run in a thread; each
event is handed to trio with `trio.from_thread.run`. Semantics follow client-go's
reflector: list, then watch from the list's resourceVersion with bookmarks; a 410 (Gone /
Expired, as the watch request's HTTP status or as an in-stream ERROR) means our
resourceVersion is compacted away, and "too large resource version" (a 500/504, e.g. after
an etcd restore moved the server back in time) means it is ahead of the server: both relist.
A dropped connection resumes the watch from the last resourceVersion seen, with jittered
exponential backoff.

Health means progress, not a 200: the backoff and the failure clock reset only once a
stream delivered an event (BOOKMARKs count) or ended cleanly at the server's timeout. A watch
that connects and then fails at once (an in-stream error, an empty stream) keeps backing off
and shows in readiness after the grace period.

Cancellation shuts the socket down so the thread ends promptly: no thread is left behind.
"""

from __future__ import annotations

import contextlib
import enum
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import trio
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from diskguard.logs import get_logger

log = get_logger(__name__)

# Client-go picks the server-side watch timeout at random in [5, 10) min so that a fleet of
# agents does not reconnect in lockstep; the read timeout must outlast the gap between
# bookmarks (about a minute on a real API server).
WATCH_TIMEOUT_RANGE = (300, 600)
READ_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
PAGE_SIZE = 500
# A stream that ends with no event counts as the server's clean timeout only if it lasted
# about as long as the timeout we asked for; sooner, it made no progress (client-go calls it
# a "very short watch").
CLEAN_END_FRACTION = 0.9
# A real API server sends a bookmark about once a minute: a freshly connected watch that has
# not delivered anything yet is given this long before readiness counts it as not
# progressing (a dropped connection that reconnects at once must not flap readiness).
FIRST_PROGRESS_WAIT = 75.0
# An error Status body read from a failed watch request is bounded before it is parsed.
MAX_STATUS_BODY = 65536


T = TypeVar("T")


@attrs.frozen
class Relisted(Generic[T]):
    """A full, consistent snapshot: everything not in it is gone."""

    objects: tuple[T, ...]
    resource_version: str
    resource: str = "pods"  # for logs only: each resource has its own channel
    # When the agent took it in at its API edge (trio clock; None: not stamped): the start
    # of the apply latency, queueing before the reconciler included.
    at: float | None = attrs.field(default=None, eq=False)


class ChangeKind(enum.StrEnum):
    """The watch event types that change an object (the API server's spelling)."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@attrs.frozen
class Changed(Generic[T]):
    kind: ChangeKind = attrs.field(converter=ChangeKind)
    object: T
    resource: str = "pods"
    at: float | None = attrs.field(default=None, eq=False)  # as Relisted.at


# As the API server (or the kubelet) sends them: raw JSON objects. kube/pods.py and
# kube/namespaces.py parse them into typed values before any task acts on them.
WatchEvent = Relisted[Mapping[str, Any]] | Changed[Mapping[str, Any]]
_CHANGE_KINDS = frozenset(ChangeKind)


@attrs.frozen
class WatchHealth:
    """Counters the operations side reports (relists, restarts, last error).

    `failing_since` is the trio time of the first attempt that ended without progress since
    the watch last made progress; `connected_since` the time the current stream connected
    (None between streams); `last_progress` the time of the last event or clean end.
    """

    relists: int = 0
    restarts: int = 0
    failing_since: float | None = None
    last_error: str = ""
    connected_since: float | None = None
    last_progress: float | None = None
    backoff: float = 0.0  # the delay before the next attempt, 0 after progress
    failed_attempts: int = 0  # attempts in a row without progress

    def problem(self, name: str, now: float, grace: float) -> str:
        """Why this watch is not healthy for readiness, or "".

        Failing for longer than `grace` without progress is a problem. One exception: after
        a single failure (a dropped connection, a 410), a stream connected for less than
        FIRST_PROGRESS_WAIT may simply be waiting for its first bookmark. A watch that failed
        again and again gets no such benefit, so readiness does not flicker while it cycles.
        """
        if self.failing_since is None or now - self.failing_since <= grace:
            return ""
        waiting_for_first_bookmark = (
            self.failed_attempts <= 1
            and self.connected_since is not None
            and now - self.connected_since <= max(grace, FIRST_PROGRESS_WAIT)
        )
        if waiting_for_first_bookmark:
            return ""
        return (
            f"{name} watch has made no progress for {now - self.failing_since:.0f}s "
            f"({self.last_error or 'no event yet'})"
        )


class _Relist(Exception):
    """The resourceVersion we hold is unusable (too old: 410; ahead of the server: too
    large): list again."""


class _NoProgress(Exception):
    """A stream that ended cleanly but early, without delivering anything."""


TOO_LARGE_CAUSE = "ResourceVersionTooLarge"
# What the watch cache says (apiserver storage.NewTooLargeResourceVersionError), and what
# etcd says when a watch is served from storage directly.
_TOO_LARGE_MESSAGES = ("too large resource version", "required revision is a future revision")


def relist_reason(status: object) -> str:
    """Why an error `Status` (HTTP body or in-stream ERROR object) means "relist", or "".

    410 Gone/Expired: our resourceVersion was compacted away. A 5xx saying "too large
    resource version" (cause ResourceVersionTooLarge, as client-go's reflector checks it, or
    the message of older servers and of etcd): our resourceVersion is ahead of the server's,
    and resuming from it would fail forever.
    """
    if not isinstance(status, Mapping):
        return ""
    code = status.get("code")
    message = str(status.get("message") or "")[:1024]
    if code == 410:
        return f"HTTP 410 {status.get('reason') or 'Gone'}: {message}".strip()
    if not isinstance(code, int) or not 500 <= code <= 599:
        return ""
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    too_large = isinstance(causes, list) and any(
        isinstance(c, Mapping) and c.get("reason") == TOO_LARGE_CAUSE for c in causes
    )
    lowered = message.lower()
    if too_large or any(m in lowered for m in _TOO_LARGE_MESSAGES):
        return f"HTTP {code} too large resource version: {message}"
    return ""


def _api_exception_status(exc: ApiException) -> dict[str, Any]:
    """The Status object of a failed request, as far as its (bounded) body tells."""
    status: dict[str, Any] = {"code": exc.status, "reason": exc.reason}
    body = exc.body
    if isinstance(body, bytes):
        body = body[:MAX_STATUS_BODY].decode("utf-8", errors="replace")
    if isinstance(body, str) and len(body) <= MAX_STATUS_BODY:
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                status.update(parsed)
                status["code"] = exc.status  # the HTTP status is what the client saw
    return status


# A list call takes (resource_version, continue token, limit, timeouts) and returns the
# raw urllib3 response; a watch call the same with watch parameters. Built by the caller
# from a CoreV1Api method so this module serves pods and namespaces alike.
ListFn = Callable[..., Any]


@attrs.define
class Backoff:
    initial: float = 0.2
    maximum: float = 30.0
    current: float = 0.0

    def next(self) -> float:
        self.current = self.initial if self.current == 0 else min(self.maximum, self.current * 2)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


class ListWatcher:
    """Runs list+watch for one resource forever, sending WatchEvents to `send`."""

    def __init__(
        self,
        name: str,
        list_fn: ListFn,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        timeout_range: tuple[int, int] = WATCH_TIMEOUT_RANGE,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._send = send
        self._timeout_range = timeout_range
        self._response_lock = threading.Lock()
        self._response: Any = None
        self._cancelled = threading.Event()
        self._backoff = Backoff()
        self.health = WatchHealth()

    def problem(self, now: float, grace: float) -> str:
        return self.health.problem(self.name, now, grace)

    async def run(self) -> None:
        backoff = self._backoff
        backoff.reset()
        # A fresh start (also a restarted fallback watch): old failures are not ours.
        self.health = attrs.evolve(
            self.health, failing_since=None, connected_since=None, backoff=0.0, failed_attempts=0
        )
        resource_version = ""
        while True:
            try:
                if not resource_version:
                    resource_version = await self._in_thread(self._list)
                resource_version = await self._in_thread(self._watch, resource_version)
                continue  # progressed (an event or the server's clean timeout): go on at once
            except _Relist as exc:
                log.info(
                    "resourceVersion unusable, relisting",
                    watch=self.name,
                    resource_version=resource_version,
                    reason=str(exc),
                )
                resource_version = ""
                error: BaseException = exc
            except trio.Cancelled:
                raise
            except Exception as exc:  # network errors come in many types; all mean "retry"
                error = exc
            finally:
                self.health = attrs.evolve(self.health, connected_since=None)
            # No progress this attempt (the stream may still have connected and answered 200).
            delay = backoff.next()
            self._failing(error, delay)
            log.warning(
                "watch made no progress; retrying",
                watch=self.name,
                error=_brief(error),
                retry_in_s=round(delay, 1),
            )
            await trio.sleep(delay)

    def _progressed(self) -> None:
        """The stream delivered an event or ended at the server's timeout."""
        self._backoff.reset()
        if self.health.failing_since is not None:
            log.info("watch recovered", watch=self.name)
        self.health = attrs.evolve(
            self.health,
            failing_since=None,
            last_error="",
            last_progress=trio.current_time(),
            backoff=0.0,
            failed_attempts=0,
        )

    def _connected(self) -> None:
        self.health = attrs.evolve(self.health, connected_since=trio.current_time())

    def _failing(self, exc: BaseException, delay: float) -> None:
        since = self.health.failing_since or trio.current_time()
        self.health = attrs.evolve(
            self.health,
            restarts=self.health.restarts + 1,
            failing_since=since,
            last_error=_brief(exc),
            backoff=delay,
            failed_attempts=self.health.failed_attempts + 1,
        )

    async def _in_thread(self, fn: Callable[..., str], *args: Any) -> str:
        """Run a blocking call in a thread; cancellation closes its socket to end it."""
        self._cancelled.clear()
        finished = threading.Event()

        def target() -> str:
            try:
                return fn(*args)
            finally:
                finished.set()

        try:
            return await trio.to_thread.run_sync(target, abandon_on_cancel=True)
        except trio.Cancelled:
            # Shut the socket so the blocked read returns, then wait (bounded) for the
            # thread: no thread outlives the task.
            self._cancelled.set()
            self._close_response()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(finished.wait, CONNECT_TIMEOUT)
            raise

    def _set_response(self, response: Any) -> None:
        with self._response_lock:
            self._response = response
        if self._cancelled.is_set():
            self._close_response()

    def _close_response(self) -> None:
        with self._response_lock:
            response = self._response
        if response is not None:
            # Unblocks the worker's read; the worker's `finally` then closes the connection.
            with contextlib.suppress(Exception):  # already closed
                response.shutdown()

    def _list(self) -> str:
        objects: list[Mapping[str, Any]] = []
        token = ""
        while True:
            try:
                response = self._list_fn(
                    _continue=token or None,
                    limit=PAGE_SIZE,
                    _preload_content=False,
                    _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                )
            except ApiException as exc:
                if exc.status == 410:  # continue token expired mid-pagination
                    objects, token = [], ""
                    continue
                raise
            body = json.loads(response.data)
            objects.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                resource_version = str(meta.get("resourceVersion", ""))
                break
        self._emit(Relisted(tuple(objects), resource_version, self.name))
        return resource_version

    def _watch(self, resource_version: str) -> str:
        timeout = random.randint(*self._timeout_range)
        try:
            response = self._list_fn(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
        except ApiException as exc:
            # A 410 (or "too large") can come as the watch request's own HTTP status too.
            reason = relist_reason(_api_exception_status(exc))
            if reason:
                raise _Relist(reason) from None
            raise
        started = time.monotonic()
        self._set_response(response)
        # Connected: not yet progress (an in-stream error or an empty stream may follow).
        trio.from_thread.run_sync(self._connected)
        delivered = False
        try:
            for line in iter_resp_lines(response):
                if self._cancelled.is_set():
                    break
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    reason = relist_reason(obj)
                    if reason:
                        raise _Relist(reason)
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    resource_version = str(rv)
                if kind in _CHANGE_KINDS:
                    self._emit(Changed(ChangeKind(kind), obj, self.name), progress=True)
                    delivered = True
                elif kind == "BOOKMARK":
                    trio.from_thread.run_sync(self._progressed)
                    delivered = True
        finally:
            with self._response_lock:
                self._response = None
            # Close, not release to the pool: a watch connection cut mid-stream (cancel,
            # shutdown) must not stay open on the API server holding a watch.
            response.close()
        lasted = time.monotonic() - started
        if not delivered and not self._cancelled.is_set():
            if lasted < timeout * CLEAN_END_FRACTION:
                raise _NoProgress(
                    f"the watch ended after {lasted:.1f}s of the {timeout}s asked, without an event"
                )
            trio.from_thread.run_sync(self._progressed)  # the server's clean timeout
        return resource_version

    def _emit(self, event: WatchEvent, *, progress: bool = False) -> None:
        trio.from_thread.run(self._deliver, event, progress)

    async def _deliver(self, event: WatchEvent, progress: bool) -> None:
        if isinstance(event, Relisted):
            # Counted before its pods go on: whoever sees their effect sees the count.
            self.health = attrs.evolve(self.health, relists=self.health.relists + 1)
        await self._send.send(event)
        if progress:
            self._progressed()


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
