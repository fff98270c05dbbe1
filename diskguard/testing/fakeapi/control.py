"""Test controls that sit beside the API: a log of received requests and injected faults.

Both are thread-safe: the server's trio loop records and consults them while test code on
other threads reads the log, waits on it and changes the fault plan.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs


@attrs.frozen
class RecordedRequest:
    """One request as the server received it (before any injected fault was applied)."""

    method: str
    path: str
    query: Mapping[str, str]
    content_type: str | None
    body: Any  # parsed JSON, the raw text if it was not JSON, or None without a body
    time: float  # time.monotonic() at receipt

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "contentType": self.content_type,
            "body": self.body,
            "time": self.time,
        }


class RequestLog:
    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._entries: list[RecordedRequest] = []
        self._cond = threading.Condition()

    def record(self, entry: RecordedRequest) -> None:
        with self._cond:
            self._entries.append(entry)
            if len(self._entries) > self._limit:
                del self._entries[: len(self._entries) - self._limit]
            self._cond.notify_all()

    def entries(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._entries)

    def clear(self) -> None:
        with self._cond:
            self._entries.clear()

    def wait_for(self, match: Callable[[RecordedRequest], bool], timeout: float) -> RecordedRequest:
        """The first logged request that satisfies `match`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self._entries:
                    if match(entry):
                        return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching request within {timeout} s")
                self._cond.wait(remaining)


@attrs.frozen
class Traffic:
    """Requests and bytes of one kind of API call (e.g. `watch pods`), as the server saw them.

    `bytes_in` counts request bodies, `bytes_out` response bodies (a watch's every event and
    bookmark included), neither counting HTTP headers or TLS framing."""

    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.requests + other.requests,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.requests - other.requests,
            self.bytes_in - other.bytes_in,
            self.bytes_out - other.bytes_out,
        )


class TrafficMeter:
    """What an API client costs the server, by kind of call (`verb resource`): the figures
    behind the README's API-server cost table (bench/soak.py reads them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, Traffic] = {}

    def add(self, kind: str, *, requests: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
        with self._lock:
            self._kinds[kind] = self._kinds.get(kind, Traffic()) + Traffic(
                requests, bytes_in, bytes_out
            )

    def snapshot(self) -> dict[str, Traffic]:
        with self._lock:
            return dict(self._kinds)


def call_kind(method: str, path: str, query: Mapping[str, str]) -> str:
    """`verb resource` of a request, with the Kubernetes verbs: `list pods`, `watch pods`,
    `patch pods`, `create events`, `create selfsubjectaccessreviews`, ..."""
    parts = [p for p in path.split("/") if p]
    watch_path = "watch" in parts[:4]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
    else:
        return f"{method.lower()} {path}"
    if rest[:1] == ["watch"]:
        rest = rest[1:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        resource, name = rest[2], rest[3] if len(rest) > 3 else None
    elif rest:
        resource, name = rest[0], rest[1] if len(rest) > 1 else None
    else:
        return f"{method.lower()} {path}"
    if method == "GET":
        if name is not None:
            verb = "get"
        elif watch_path or query.get("watch", "").lower() in ("true", "1"):
            verb = "watch"
        else:
            verb = "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, method.lower()
        )
    return f"{verb} {resource}"


def _upper_or_none(method: str | None) -> str | None:
    return method.upper() if method else None


@attrs.frozen
class Fault:
    """What to do to matching requests.

    `delay` seconds pass first; then `hang` holds the request until the faults are cleared
    (or the server stops); then `status`, if set, is answered as an error `Status` instead of
    serving the request. `count` is how many requests it hits (None: until cleared).

    Narrowing: `watch` True hits only watch requests (`watch=true` or a `/watch/` path),
    False only the others; `body_regex` is searched in the request body (e.g. one Event).

    Watch streams: `stream_error` answers 200 and then one in-stream ERROR event with that
    code (what a real server sends once the watch is accepted: e.g. 410, or 500/504 "too
    large resource version"); `stream_end` answers 200 and ends the stream at once, empty.
    `message` and `cause` (a StatusCause reason, e.g. "ResourceVersionTooLarge") go into the
    error `Status` of `status` or `stream_error`.
    """

    method: str | None = attrs.field(default=None, converter=_upper_or_none)
    path_regex: str = attrs.field(default="")
    status: int | None = None
    delay: float = 0.0
    count: int | None = None
    hang: bool = False
    watch: bool | None = None
    body_regex: str = attrs.field(default="")
    stream_error: int | None = None
    stream_end: bool = False
    message: str = ""
    cause: str = ""

    @path_regex.validator
    @body_regex.validator
    def _check_regex(self, attribute: Any, value: str) -> None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{attribute.name} {value!r} is not a valid regex: {exc}") from exc

    def __attrs_post_init__(self) -> None:
        for name, code in (("status", self.status), ("stream_error", self.stream_error)):
            if code is not None and not 400 <= code <= 599:
                raise ValueError(f"fault {name} must be an HTTP error code, got {code}")
        answers = [self.status is not None, self.stream_error is not None, self.stream_end]
        if sum(answers) > 1:
            raise ValueError("a fault answers with at most one of status, stream_error, stream_end")
        if self.delay < 0:
            raise ValueError(f"fault delay must be >= 0, got {self.delay}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"fault count must be >= 1 or None, got {self.count}")

    def matches(self, method: str, path: str, *, watch: bool = False, body: str = "") -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.watch is None or self.watch == watch)
            and bool(re.search(self.path_regex, path))
            and (not self.body_regex or bool(re.search(self.body_regex, body)))
        )

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        fields = {f.name for f in attrs.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(fields)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


@attrs.define
class _Armed:
    fault: Fault
    remaining: int | None


class FaultPlan:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Armed] = []
        self._clear_listeners: list[Callable[[], None]] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_Armed(fault, fault.count))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            listeners = list(self._clear_listeners)
        for listener in listeners:
            listener()

    @contextlib.contextmanager
    def on_clear(self, listener: Callable[[], None]) -> Iterator[None]:
        """Call `listener` (from whichever thread clears) if the faults are cleared meanwhile."""
        with self._lock:
            self._clear_listeners.append(listener)
        try:
            yield
        finally:
            with self._lock:
                self._clear_listeners.remove(listener)

    def active(self) -> list[Fault]:
        with self._lock:
            return [armed.fault for armed in self._faults]

    def take(self, method: str, path: str, *, watch: bool = False, body: str = "") -> Fault | None:
        """The first fault matching this request, consuming one of its count."""
        with self._lock:
            for armed in self._faults:
                if armed.fault.matches(method, path, watch=watch, body=body):
                    if armed.remaining is not None:
                        armed.remaining -= 1
                        if armed.remaining <= 0:
                            self._faults.remove(armed)
                    return armed.fault
            return None
