"""An ASGI app served by hypercorn on its own trio loop in a background thread.

The base of the bundled fakes (API server, kubelet): tests and the demo drive them with
plain blocking calls from any thread other than the server's own, including a thread that
runs another trio loop (e.g. a pytest-trio test): those calls never wait long.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import attrs
import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio

from diskguard.logs import get_logger

T = TypeVar("T")

CALL_TIMEOUT = 30.0

log = get_logger(__name__)


@attrs.define
class _Listening:
    scope: trio.CancelScope
    done: trio.Event


class ThreadedServer:
    """Serve `app` on host:port (0 = any free port, fixed after the first start)."""

    what = "server"  # for messages: "the fake API server is not running"

    def __init__(self, app: Any, host: str, port: int) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self._app = app
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._listening: _Listening | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"the {self.what} is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name=self.what, daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout=CALL_TIMEOUT)
        except BaseException:
            self._thread.join(timeout=CALL_TIMEOUT)
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join the server thread."""
        thread, token, nursery = self._thread, self._token, self._nursery
        if thread is None:
            return
        if token is not None and nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        thread.join(timeout=CALL_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"the {self.what} thread did not stop")
        self._thread = self._token = self._nursery = None
        self._listening = None

    def go_down(self) -> None:
        """Stop listening (connections are refused, open ones cut) while keeping all state."""
        self._call(self._go_down)

    def come_back(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen)

    def url_host(self) -> str:
        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return host

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
                # Keeps the loop alive while not listening (between go_down and come_back).
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("server loop failed", server=self.what)

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` on the server's loop and wait for its result (from another thread)."""
        token, nursery = self._token, self._nursery
        if self._thread is None or token is None or nursery is None:
            raise RuntimeError(f"the {self.what} is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"blocking control call made from the {self.what}'s own loop")
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def runner() -> None:
            try:
                result.set_result(await fn())
            except Exception as exc:
                result.set_exception(exc)
            except BaseException as exc:
                result.set_exception(RuntimeError(f"{self.what} loop ended: {exc!r}"))
                raise

        def spawn() -> None:
            try:
                nursery.start_soon(runner)
            except RuntimeError as exc:  # the loop is shutting down
                result.set_exception(RuntimeError(f"the {self.what} is stopping: {exc}"))

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise RuntimeError(f"the {self.what} is not running") from None
        return result.result(timeout=CALL_TIMEOUT)

    def _hypercorn_config(self) -> hypercorn.config.Config:
        """The bare config; subclasses override it to add TLS."""
        return hypercorn.config.Config()

    def _config(self) -> hypercorn.config.Config:
        config = self._hypercorn_config()
        host = f"[{self.host}]" if ":" in self.host else self.host
        config.bind = [f"{host}:{self.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger(f"diskguard.{self.what.replace(' ', '')}.hypercorn")
        # Connections are cut on go_down()/stop(); nothing is worth waiting for.
        config.graceful_timeout = 0.0
        return config

    async def _listen(self) -> None:
        assert self._nursery is not None
        if self._listening is not None:
            return
        listening = _Listening(trio.CancelScope(), trio.Event())

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                with listening.scope:
                    app = cast(hypercorn.typing.Framework, self._app)
                    await hypercorn.trio.serve(app, self._config(), task_status=task_status)
            finally:
                listening.done.set()

        binds: list[str] = await self._nursery.start(serve)
        if self.port == 0:
            self.port = int(binds[0].rsplit(":", 1)[1])
        self._listening = listening

    async def _go_down(self) -> None:
        listening, self._listening = self._listening, None
        if listening is None:
            return
        listening.scope.cancel()
        await listening.done.wait()
