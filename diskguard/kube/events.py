"""Kubernetes Events about pods: queued without blocking, posted with rate limit and retry.

The apply path must never wait on the API server, so Events go through a bounded queue; a
full queue drops the Event with a log line rather than stalling enforcement.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from diskguard.model import PodInfo

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000


@attrs.frozen
class EventRequest:
    kind: str  # Pod | Namespace
    namespace: str  # "" for cluster-scoped objects
    name: str
    uid: str
    reason: str
    message: str
    type: str = "Normal"  # Normal | Warning


def pod_event(pod: PodInfo, reason: str, message: str, *, warning: bool = False) -> EventRequest:
    return EventRequest(
        kind="Pod",
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        reason=reason,
        message=message,
        type="Warning" if warning else "Normal",
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
            "kind": req.kind,
            "namespace": req.namespace or None,
            "name": req.name,
            "uid": req.uid,
        },
        "reason": req.reason,
        "message": req.message[:1024],
        "type": req.type,
        "source": {"component": "diskguard", "host": node_name},
        "reportingComponent": "diskguard",
        "reportingInstance": node_name,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventSink:
    """Producer side: `emit` never blocks."""

    def __init__(self, send: trio.MemorySendChannel[EventRequest]) -> None:
        self._send = send
        self.dropped = 0

    def emit(self, req: EventRequest) -> None:
        log_fn = log.warning if req.type == "Warning" else log.info
        log_fn("event %s %s/%s: %s", req.reason, req.namespace, req.name, req.message)
        try:
            self._send.send_nowait(req)
        except trio.WouldBlock:
            self.dropped += 1
            log.warning(
                "event queue full, dropped %s for %s/%s", req.reason, req.namespace, req.name
            )


Posting = tuple[EventRequest, dict[str, Any]]  # a request and its body (name fixed)


async def post_events(
    receive: trio.MemoryReceiveChannel[EventRequest],
    api: CoreV1Api,
    node_name: str,
    *,
    rate: float = 10.0,
    attempts: int = 5,
    unfinished: list[Posting] | None = None,
    first: Sequence[Posting] = (),
) -> None:
    """Post queued Events at most `rate` per second, retrying transient failures.

    Cancelled in the middle of one (shutdown), that Event goes to `unfinished` so that the
    shutdown flush can post it again (pass it as `first`): its body keeps its name, so an
    original that did reach the API server makes no duplicate."""

    async def postings() -> AsyncIterator[Posting]:
        for posting in first:
            yield posting
        async for req in receive:
            yield req, event_body(req, node_name, dt.datetime.now(dt.UTC))

    async for req, body in postings():
        try:
            await _post(api, req, body, attempts)
        except trio.Cancelled:
            if unfinished is not None:
                unfinished.append((req, body))
            raise
        await trio.sleep(1.0 / rate)


async def _post(api: CoreV1Api, req: EventRequest, body: dict[str, Any], attempts: int) -> None:
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            # Abandoned on cancel (shutdown must not wait on a hung API server); a retried
            # Event keeps its name, so a late original makes no duplicate.
            await trio.to_thread.run_sync(
                lambda: api.create_namespaced_event(
                    body["metadata"]["namespace"],
                    body,  # type: ignore[arg-type]  # the client serialises dicts as they are
                    _request_timeout=(5, 10),
                ),
                abandon_on_cancel=True,
            )
            return
        except ApiException as exc:
            # 4xx other than throttling will not get better by retrying.
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                if exc.status != 409:  # 409: a retried Event whose original arrived
                    log.warning("event %s rejected: HTTP %s", req.reason, exc.status)
                return
            err: str = f"HTTP {exc.status}"
        except Exception as exc:  # connection errors of many types
            err = type(exc).__name__
        if attempt == attempts:
            log.warning(
                "event %s for %s/%s not posted after %d attempts (%s)",
                req.reason,
                req.namespace,
                req.name,
                attempts,
                err,
            )
        else:
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)
