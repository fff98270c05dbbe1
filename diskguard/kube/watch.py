"""List+watch of one resource, in a worker thread, bridged into a trio channel.

The kubernetes client is synchronous, so the blocking HTTP reads run in a thread; each
event is handed to trio with `trio.from_thread.run`. Semantics follow client-go's
reflector: list, then watch from the list's resourceVersion with bookmarks; a 410 (Gone /
Expired) means our resourceVersion is compacted away, so relist; a dropped connection
resumes the watch from the last resourceVersion seen, with jittered exponential backoff.
Cancellation shuts the socket down so the thread ends promptly: no thread is left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

# Client-go picks the server-side watch timeout at random in [5, 10) min so that a fleet of
# agents does not reconnect in lockstep; the read timeout must outlast the gap between
# bookmarks (about a minute on a real API server).
WATCH_TIMEOUT_RANGE = (300, 600)
READ_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
PAGE_SIZE = 500


@attrs.frozen
class Relisted:
    """A full, consistent snapshot: everything not in it is gone."""

    objects: tuple[Mapping[str, Any], ...]
    resource_version: str
    resource: str = "pods"


@attrs.frozen
class Changed:
    kind: str  # ADDED | MODIFIED | DELETED
    object: Mapping[str, Any]
    resource: str = "pods"


WatchEvent = Relisted | Changed


@attrs.frozen
class WatchHealth:
    """Counters the operations side reports (relists, restarts, last error)."""

    relists: int = 0
    restarts: int = 0
    failing_since: float | None = None
    last_error: str = ""


class _Gone(Exception):
    """The resourceVersion we hold is too old: relist."""


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
        self, name: str, list_fn: ListFn, send: trio.MemorySendChannel[WatchEvent]
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._send = send
        self._response_lock = threading.Lock()
        self._response: Any = None
        self._cancelled = threading.Event()
        self._backoff = Backoff()
        self.health = WatchHealth()

    async def run(self) -> None:
        backoff = self._backoff
        resource_version = ""
        while True:
            try:
                if not resource_version:
                    resource_version = await self._in_thread(self._list)
                    self.health = attrs.evolve(self.health, relists=self.health.relists + 1)
                    self._healthy()
                resource_version = await self._in_thread(self._watch, resource_version)
            except _Gone:
                log.info(
                    "%s watch: resourceVersion %s expired, relisting", self.name, resource_version
                )
                resource_version = ""
                self._healthy()
            except trio.Cancelled:
                raise
            except Exception as exc:  # network errors come in many types; all mean "retry"
                delay = backoff.next()
                self._failing(exc)
                log.warning(
                    "%s watch failed (%s); retrying in %.1fs", self.name, _brief(exc), delay
                )
                await trio.sleep(delay)

    def _healthy(self) -> None:
        self._backoff.reset()
        if self.health.failing_since is not None:
            log.info("%s watch recovered", self.name)
        self.health = attrs.evolve(self.health, failing_since=None, last_error="")

    def _failing(self, exc: BaseException) -> None:
        since = self.health.failing_since or trio.current_time()
        self.health = attrs.evolve(
            self.health,
            restarts=self.health.restarts + 1,
            failing_since=since,
            last_error=_brief(exc),
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
        timeout = random.randint(*WATCH_TIMEOUT_RANGE)
        response = self._list_fn(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )
        self._set_response(response)
        # Connected: the API server answers again, whatever the stream brings next.
        trio.from_thread.run_sync(self._healthy)
        try:
            for line in iter_resp_lines(response):
                if self._cancelled.is_set():
                    break
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    resource_version = str(rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._emit(Changed(kind, obj, self.name))
        finally:
            with self._response_lock:
                self._response = None
            # Close, not release to the pool: a watch connection cut mid-stream (cancel,
            # shutdown) must not stay open on the API server holding a watch.
            response.close()
        return resource_version

    def _emit(self, event: WatchEvent) -> None:
        trio.from_thread.run(self._send.send, event)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
