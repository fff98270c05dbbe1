"""`FakeKubelet`: the kubelet's read-only HTTPS API (`/pods`, `/metrics/cadvisor`) for tests.

Served by hypercorn over real TLS on its own trio loop in a background thread, like the fake
API server. The TLS context is the caller's (tests build it with `trustme`, see
`server_tls_context`), so server-certificate verification, mutual TLS and bearer tokens are
exercised for real. The control methods are blocking calls meant for other threads
(including a pytest-trio test's loop: none of them waits long).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from diskguard.testing.threadserver import ThreadedServer

if TYPE_CHECKING:
    import trustme

T = TypeVar("T")

log = logging.getLogger(__name__)

# What the kubelet's authorizer says when RBAC denies a request (here for `/pods`).
_FORBIDDEN = "Forbidden (user={user}, verb=get, resource=nodes, subresource(s)=[{sub}])"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def server_tls_context(
    ca: trustme.CA,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    client_ca: trustme.CA | None = None,
) -> ssl.SSLContext:
    """A server-side TLS context: a serving cert from `ca` for `names`, and, with
    `client_ca`, a required client certificate signed by it (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@attrs.frozen
class KubeletRequest:
    """One request as the fake received it, before auth and faults were applied."""

    method: str
    path: str
    authorization: str | None
    time: float  # time.monotonic() at receipt


@attrs.define
class _Fault:
    remaining: int
    status: int | None  # None: only delay, then answer normally
    delay: float
    body: str | None


class _State:
    """What the fake serves; shared between the server loop and the test's thread."""

    def __init__(self, token: str | None, user: str) -> None:
        self.lock = threading.Lock()
        self.token = token
        self.user = user
        self.pods: list[dict[str, Any]] = []
        self.metrics = ""
        self.faults: list[_Fault] = []
        self.requests: list[KubeletRequest] = []
        self.changed = threading.Condition(self.lock)

    def take_fault(self) -> _Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
            self.faults = [f for f in self.faults if f.remaining > 0]
            return None


def _build_app(state: _State) -> Starlette:
    async def guard(request: Request, subresource: str) -> Response | None:
        auth = request.headers.get("authorization")
        with state.lock:
            state.requests.append(
                KubeletRequest(request.method, request.url.path, auth, time.monotonic())
            )
            state.changed.notify_all()
            token = state.token
        fault = state.take_fault()
        if fault is not None:
            if fault.delay:
                await trio.sleep(fault.delay)
            if fault.status == 403:
                return PlainTextResponse(
                    _FORBIDDEN.format(user=state.user, sub=subresource), status_code=403
                )
            if fault.status is not None:
                body = f"injected fault {fault.status}" if fault.body is None else fault.body
                return PlainTextResponse(body, fault.status)
        if token is not None and auth != f"Bearer {token}":
            return PlainTextResponse("Unauthorized", status_code=401)
        return None

    async def pods(request: Request) -> Response:
        refused = await guard(request, "proxy")
        if refused is not None:
            return refused
        with state.lock:
            items = json.loads(json.dumps(state.pods))  # a copy the test cannot mutate
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        return JSONResponse(body)

    async def metrics(request: Request) -> Response:
        refused = await guard(request, "metrics")
        if refused is not None:
            return refused
        with state.lock:
            text = state.metrics
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/pods", pods, methods=["GET"]),
            Route("/metrics/cadvisor", metrics, methods=["GET"]),
        ]
    )


class _TLSConfig(hypercorn.config.Config):
    """Hypercorn wants cert files; this serves the caller's in-memory TLS context instead."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context

    @property
    def ssl_enabled(self) -> bool:
        return True

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


class FakeKubelet(ThreadedServer):
    """A fake kubelet over HTTPS. Use as a context manager or with `start()`/`stop()`.

    `token`: when set, every request must carry `Authorization: Bearer <token>` (else 401,
    as the kubelet answers an unauthenticated request). A required client certificate is
    part of `tls` (see `server_tls_context`): without one the TLS handshake is refused.
    """

    what = "fake kubelet"

    def __init__(
        self,
        tls: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        user: str = "system:serviceaccount:kube-system:diskguard",
    ) -> None:
        self._tls = tls
        self._state = _State(token, user)
        super().__init__(_build_app(self._state), host, port)

    @property
    def url(self) -> str:
        return f"https://{self.url_host()}:{self.port}"

    # -- what it serves -------------------------------------------------------------------

    def set_pods(self, pods: Sequence[Mapping[str, Any]]) -> None:
        copied = json.loads(json.dumps(list(pods)))
        with self._state.lock:
            self._state.pods = copied

    def set_metrics(self, text: str) -> None:
        with self._state.lock:
            self._state.metrics = text

    def set_token(self, token: str | None) -> None:
        with self._state.lock:
            self._state.token = token

    # -- faults and the request log --------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int | None = 500,
        delay: float = 0.0,
        body: str | None = None,
    ) -> None:
        """The next `count` requests wait `delay` s, then answer `status` with `body`
        (status None: answer normally after the delay)."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        with self._state.lock:
            self._state.faults.append(_Fault(count, status, delay, body))

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def requests(self) -> list[KubeletRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        """Block until at least `count` requests have been received in total."""
        deadline = time.monotonic() + timeout
        with self._state.changed:
            while len(self._state.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._state.requests)} requests after {timeout} s, wanted {count}"
                    )
                self._state.changed.wait(remaining)

    def _hypercorn_config(self) -> hypercorn.config.Config:
        return _TLSConfig(self._tls)
