"""`FakeAPIServer`: the fake API served by hypercorn on its own trio loop in a background thread.

The control methods are plain blocking calls, safe from any thread other than the server's own
(including a thread that runs another trio loop, e.g. a pytest-trio test: they never wait long).
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio
import yaml

from diskguard.testing.threadserver import ThreadedServer

from .app import FakeAPIState, build_app
from .authz import DEFAULT_USER, Grants
from .control import Fault, RecordedRequest, Traffic
from .patching import MERGE_PATCH
from .resources import CORE_V1, Registry
from .selectors import Selection, parse_field_selector, parse_label_selector
from .store import Store

T = TypeVar("T")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_OUTAGE_GRACE = 0.1  # lets the answer to POST /_fake/outage leave before the port closes

log = logging.getLogger(__name__)


class FakeAPIServer(ThreadedServer):
    """A fake Kubernetes API server for tests and the demo.

    Use as a context manager or with `start()`/`stop()`. Object operations work before
    `start()` too (e.g. to seed state).
    """

    what = "fake API server"

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
        self.store = Store(registry, history_limit=history_limit)
        self.state = FakeAPIState(
            self.store, bookmark_interval=bookmark_interval, outage=self._schedule_outage
        )
        super().__init__(build_app(self.state), host, port)
        for name in namespaces:
            self.create("namespaces", {"metadata": {"name": name}})

    async def serve_forever(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on the current trio loop until cancelled (`python -m diskguard.testing.fakeapi`).

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

    def grant(self, rules: Iterable[Mapping[str, Any]] | None, user: str = DEFAULT_USER) -> None:
        """Authorize like RBAC with these PolicyRules (a ClusterRole's `rules`): requests
        they do not allow get 403 Forbidden and SelfSubjectAccessReviews are answered from
        them. None (the default) allows everything."""
        self.state.grants = Grants.everything() if rules is None else Grants.from_rules(rules, user)

    @property
    def url(self) -> str:
        return f"http://{self.url_host()}:{self.port}"

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
        *,
        watch: bool | None = None,
        body_regex: str = "",
        stream_error: int | None = None,
        stream_end: bool = False,
        message: str = "",
        cause: str = "",
    ) -> Fault:
        """Make matching API requests fail (`status`), wait (`delay`) or hang until cleared.

        `path_regex` is searched in the URL path (no query); `count` limits how many requests
        it hits (None: until `clear_faults()`). `watch` narrows to watch requests (True) or
        the others (False); `body_regex` to requests whose body matches. `stream_error` /
        `stream_end`: a watch answered 200 that then carries one ERROR event / ends empty
        (see `Fault`).
        """
        fault = Fault(
            method,
            path_regex,
            status,
            delay,
            count,
            hang,
            watch=watch,
            body_regex=body_regex,
            stream_error=stream_error,
            stream_end=stream_end,
            message=message,
            cause=cause,
        )
        self.state.faults.add(fault)
        return fault

    def inject_watch_error(
        self,
        path_regex: str,
        code: int,
        message: str = "",
        *,
        cause: str = "",
        count: int | None = None,
    ) -> Fault:
        """Watches on matching paths are accepted (200) and then carry one ERROR event."""
        return self.inject_fault(
            "GET",
            path_regex,
            status=None,
            count=count,
            watch=True,
            stream_error=code,
            message=message,
            cause=cause,
        )

    def clear_faults(self) -> None:
        """Remove all faults and release requests held by `hang`."""
        self.state.faults.clear()

    def requests(self) -> builtins.list[RecordedRequest]:
        return self.state.requests.entries()

    def traffic(self) -> dict[str, Traffic]:
        """Requests and bytes so far by kind of call (`watch pods`, `patch pods`, ...)."""
        return self.state.traffic.snapshot()

    def clear_requests(self) -> None:
        self.state.requests.clear()

    def wait_for_request(
        self, match: Callable[[RecordedRequest], bool], timeout: float = 5.0
    ) -> RecordedRequest:
        return self.state.requests.wait_for(match, timeout)

    # -- on the server's loop -------------------------------------------------------------

    def _schedule_outage(self, seconds: float) -> None:
        async def outage() -> None:
            await trio.sleep(_OUTAGE_GRACE)
            await self._go_down()
            await trio.sleep(seconds)
            await self._listen()

        assert self._nursery is not None
        self._nursery.start_soon(outage)
