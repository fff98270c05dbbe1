"""`FakeAPIServer`: the fake API served by hypercorn on its own trio loop in a background thread.

The control methods are plain blocking calls, safe from any thread other than the server's own
(including a thread that runs another trio loop, e.g. a pytest-trio test: they never wait long).
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar, cast

import attrs
import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio
import yaml

from .app import FakeAPIState, build_app
from .control import Fault, RecordedRequest
from .patching import MERGE_PATCH
from .resources import CORE_V1, Registry
from .selectors import Selection, parse_field_selector, parse_label_selector
from .store import Store

T = TypeVar("T")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_CALL_TIMEOUT = 30.0
_OUTAGE_GRACE = 0.1  # lets the answer to POST /_fake/outage leave before the port closes

log = logging.getLogger(__name__)


@attrs.define
class _Listening:
    scope: trio.CancelScope
    done: trio.Event


class FakeAPIServer:
    """A fake Kubernetes API server for tests and the demo.

    Use as a context manager or with `start()`/`stop()`. Object operations work before
    `start()` too (e.g. to seed state).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bookmark_interval: float = 1.0,
        history_limit: int = 10000,
        registry: Registry = CORE_V1,
        namespaces: tuple[str, ...] = DEFAULT_NAMESPACES,
    ) -> None:
        if bookmark_interval <= 0:
            raise ValueError(f"bookmark_interval must be > 0, got {bookmark_interval}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self.store = Store(registry, history_limit=history_limit)
        self.state = FakeAPIState(
            self.store, bookmark_interval=bookmark_interval, outage=self._schedule_outage
        )
        self._app = build_app(self.state)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._listening: _Listening | None = None
        for name in namespaces:
            self.create("namespaces", {"metadata": {"name": name}})

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FakeAPIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> FakeAPIServer:
        if self._thread is not None:
            raise RuntimeError("the fake API server is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="fakeapi-server", daemon=True
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
        """Stop serving, close every connection and join the server thread."""
        thread, token, nursery = self._thread, self._token, self._nursery
        if thread is None:
            return
        if token is not None and nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        thread.join(timeout=_CALL_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the fake API server thread did not stop")
        self._thread = self._token = self._nursery = None
        self._listening = None

    async def serve_forever(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on the current trio loop until cancelled (for `python -m diskguard.fakeapi`).

        The blocking control methods (`go_down`, ...) are for the threaded mode only; here the
        HTTP controls under `/_fake/` steer the server.
        """
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._listen()
            task_status.started()
            await trio.sleep_forever()

    def deny(self, verb: str, resource: str) -> None:
        """Make SelfSubjectAccessReviews answer "not allowed" for this verb on this resource."""
        self.state.denied.add((verb, resource))

    def go_down(self) -> None:
        """Stop listening (connections are refused, open ones cut) while keeping all state."""
        self._call(self._go_down)

    def come_back(self) -> None:
        """Listen again on the same port."""
        self._call(self._come_back)

    @property
    def url(self) -> str:
        host = self.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"http://{host}:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> str:
        """Write a kubeconfig (plain http, no auth) for this server; returns the path."""
        if self.port == 0:
            raise RuntimeError("start the server first: its port is not known yet")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.kubeconfig(), f, sort_keys=False)
        return os.fspath(path)

    # -- objects -------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self.store.resource_version)

    def create(
        self, resource: str, obj: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        """Create an object (creating its namespace if missing, as a fixture would)."""
        rt = self.store.registry.lookup(resource)
        return self.store.create(rt, namespace, dict(obj), ensure_namespace=True)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.store.get(self.store.registry.lookup(resource), namespace, name)

    def update(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        mutate: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """Edit the whole object (status included) in place via `mutate(obj)`."""
        return self.store.mutate(self.store.registry.lookup(resource), namespace, name, mutate)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        rt = self.store.registry.lookup(resource)
        return self.store.patch(rt, namespace, name, content_type, patch, subresource="*")

    def patch_annotations(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        annotations: Mapping[str, str | None],
    ) -> dict[str, Any]:
        """Merge-patch annotations; a None value removes that key."""
        return self.patch(resource, namespace, name, {"metadata": {"annotations": annotations}})

    def delete(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.store.delete(self.store.registry.lookup(resource), namespace, name)

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        field_selector: str = "",
        label_selector: str = "",
    ) -> builtins.list[dict[str, Any]]:
        rt = self.store.registry.lookup(resource)
        selection = Selection(
            namespace if rt.namespaced else None,
            parse_field_selector(field_selector, rt.field_getters),
            parse_label_selector(label_selector),
        )
        items: builtins.list[dict[str, Any]] = self.store.list_objects(rt, selection)["items"]
        for item in items:
            item["kind"], item["apiVersion"] = rt.kind, rt.api_version
        return items

    # -- history, watches, faults, request log --------------------------------------------

    def compact(self) -> str:
        """Drop all history: watches or continue tokens from any older rv now get 410."""
        return str(self.store.compact())

    def drop_watches(self) -> int:
        """Cut every open watch connection abruptly; returns how many were open."""
        return self.store.drop_watches()

    def open_watches(self) -> int:
        return self.store.open_watches()

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least `count` watches are open."""
        deadline = time.monotonic() + timeout
        while self.store.open_watches() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.store.open_watches()} watches open after {timeout} s, wanted {count}"
                )
            time.sleep(0.01)

    def inject_fault(
        self,
        method: str | None = None,
        path_regex: str = "",
        status: int | None = 500,
        delay: float = 0.0,
        count: int | None = None,
        hang: bool = False,
    ) -> Fault:
        """Make matching API requests fail (`status`), wait (`delay`) or hang until cleared.

        `path_regex` is searched in the URL path (no query); `count` limits how many requests
        it hits (None: until `clear_faults()`).
        """
        fault = Fault(method, path_regex, status, delay, count, hang)
        self.state.faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove all faults and release requests held by `hang`."""
        self.state.faults.clear()

    def requests(self) -> builtins.list[RecordedRequest]:
        return self.state.requests.entries()

    def clear_requests(self) -> None:
        self.state.requests.clear()

    def wait_for_request(
        self, match: Callable[[RecordedRequest], bool], timeout: float = 5.0
    ) -> RecordedRequest:
        return self.state.requests.wait_for(match, timeout)

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
                log.exception("fake API server loop failed")

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        token, nursery = self._token, self._nursery
        if self._thread is None or token is None or nursery is None:
            raise RuntimeError("the fake API server is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking control call made from the server's own loop")
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def runner() -> None:
            try:
                result.set_result(await fn())
            except Exception as exc:
                result.set_exception(exc)
            except BaseException as exc:
                result.set_exception(RuntimeError(f"server loop ended: {exc!r}"))
                raise

        def spawn() -> None:
            try:
                nursery.start_soon(runner)
            except RuntimeError as exc:  # the loop is shutting down
                result.set_exception(RuntimeError(f"the fake API server is stopping: {exc}"))

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise RuntimeError("the fake API server is not running") from None
        return result.result(timeout=_CALL_TIMEOUT)

    def _config(self) -> hypercorn.config.Config:
        config = hypercorn.config.Config()
        host = f"[{self.host}]" if ":" in self.host else self.host
        config.bind = [f"{host}:{self.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("diskguard.fakeapi.hypercorn")
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

    async def _come_back(self) -> None:
        await self._listen()

    def _schedule_outage(self, seconds: float) -> None:
        async def outage() -> None:
            await trio.sleep(_OUTAGE_GRACE)
            await self._go_down()
            await trio.sleep(seconds)
            await self._come_back()

        assert self._nursery is not None
        self._nursery.start_soon(outage)
