"""`FakeKubelet`: the kubelet's read-only HTTPS API (`/pods`, `/metrics/cadvisor`) for tests.

Served by hypercorn over real TLS on its own trio loop in a background thread, like the fake
API server. The TLS context is the caller's (tests build it with `trustme`, see
`server_tls_context`), so server-certificate verification, mutual TLS and bearer tokens are
exercised for real. The control methods are blocking calls meant for other threads
(including a pytest-trio test's loop: none of them waits long).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    import trustme

T = TypeVar("T")

log = logging.getLogger(__name__)

_CALL_TIMEOUT = 30.0
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


class FakeKubelet:
    """A fake kubelet over HTTPS. Use as a context manager or with `start()`/`stop()`.

    `token`: when set, every request must carry `Authorization: Bearer <token>` (else 401,
    as the kubelet answers an unauthenticated request). A required client certificate is
    part of `tls` (see `server_tls_context`): without one the TLS handshake is refused.
    """

    def __init__(
        self,
        tls: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        user: str = "system:serviceaccount:kube-system:diskguard",
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self._tls = tls
        self._state = _State(token, user)
        self._app = _build_app(self._state)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._serving: tuple[trio.CancelScope, trio.Event] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> FakeKubelet:
        if self._thread is not None:
            raise RuntimeError("the fake kubelet is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="fakekubelet", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout=_CALL_TIMEOUT)
        except BaseException:
            self._thread.join(timeout=_CALL_TIMEOUT)
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        thread, token, nursery = self._thread, self._token, self._nursery
        if thread is None:
            return
        if token is not None and nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        thread.join(timeout=_CALL_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the fake kubelet thread did not stop")
        self._thread = self._token = self._nursery = None
        self._serving = None

    def go_down(self) -> None:
        """Stop listening (connections refused, open ones cut); state is kept."""
        self._call(self._stop_listening)

    def come_back(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen)

    @property
    def url(self) -> str:
        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return f"https://{host}:{self.port}"

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

    # -- on the server's loop -------------------------------------------------------------

    def _run_loop(self, ready: concurrent.futures.Future[None]) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._listen()
                except BaseException as exc:
                    ready.set_exception(exc)
                    raise
                ready.set_result(None)
                await trio.sleep_forever()  # keeps the loop alive while down

        try:
            trio.run(main)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("fake kubelet loop failed")

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        token, nursery = self._token, self._nursery
        if self._thread is None or token is None or nursery is None:
            raise RuntimeError("the fake kubelet is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking control call made from the fake kubelet's own loop")
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def runner() -> None:
            try:
                result.set_result(await fn())
            except Exception as exc:
                result.set_exception(exc)
            except BaseException as exc:
                result.set_exception(RuntimeError(f"fake kubelet loop ended: {exc!r}"))
                raise

        try:
            token.run_sync_soon(lambda: nursery.start_soon(runner))
        except trio.RunFinishedError:
            raise RuntimeError("the fake kubelet is not running") from None
        return result.result(timeout=_CALL_TIMEOUT)

    def _config(self) -> hypercorn.config.Config:
        config = _TLSConfig(self._tls)
        host = f"[{self.host}]" if ":" in self.host else self.host
        config.bind = [f"{host}:{self.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("diskguard.fakekubelet.hypercorn")
        config.graceful_timeout = 0.0  # go_down() cuts connections; nothing to wait for
        return config

    async def _listen(self) -> None:
        assert self._nursery is not None
        if self._serving is not None:
            return
        scope, done = trio.CancelScope(), trio.Event()

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                with scope:
                    app = cast(hypercorn.typing.Framework, self._app)
                    await hypercorn.trio.serve(app, self._config(), task_status=task_status)
            finally:
                done.set()

        binds: list[str] = await self._nursery.start(serve)
        if self.port == 0:
            self.port = int(binds[0].rsplit(":", 1)[1])
        self._serving = (scope, done)

    async def _stop_listening(self) -> None:
        serving, self._serving = self._serving, None
        if serving is None:
            return
        scope, done = serving
        scope.cancel()
        await done.wait()
