"""The ASGI application: Kubernetes core/v1 REST semantics over a `Store`, plus `/_fake/` controls.

Routing is Starlette's; the watch stream is a small ASGI response of its own so that it can end
three ways, as a real server's does: cleanly (timeoutSeconds), with an ERROR event (410), or
abruptly without the closing chunk (`drop_watches`), which the client sees as a broken
connection.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import attrs
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors
from .authz import (
    Grants,
    NotAResourceRequest,
    ResourceAttributes,
    request_attributes,
    review_attributes,
)
from .control import Fault, FaultPlan, RecordedRequest, RequestLog, TrafficMeter, call_kind
from .errors import ApiError
from .resources import ResourceType
from .selectors import FieldTerm, Selection, parse_field_selector, parse_label_selector
from .store import Store, Subscription, watch_event

KUBE_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-diskguard-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@attrs.define
class FakeAPIState:
    """Everything the application serves from; shared with the controlling server object."""

    store: Store
    requests: RequestLog = attrs.Factory(RequestLog)
    traffic: TrafficMeter = attrs.Factory(TrafficMeter)
    faults: FaultPlan = attrs.Factory(FaultPlan)
    bookmark_interval: float = 1.0
    # Set by a server that can stop listening: schedules an outage of that many seconds.
    outage: Callable[[float], None] | None = None
    # What the one user the fake serves may do: every request and SelfSubjectAccessReview
    # is decided by these rules (by default, everything is allowed).
    grants: Grants = attrs.Factory(Grants.everything)
    # (verb, resource) pairs a SelfSubjectAccessReview answers "not allowed" for, on top of
    # the grants (requests themselves are not refused for them).
    denied: set[tuple[str, str]] = attrs.Factory(set)


def build_app(state: FakeAPIState) -> ASGIApp:
    routes: list[BaseRoute] = [
        Route("/api", partial(_api_versions, state), methods=["GET"]),
        Route("/api/v1", partial(_api_resources, state), methods=["GET"]),
        Route("/apis", _api_groups, methods=["GET"]),
        Route("/version", _version, methods=["GET"]),
        # The client's VersionApi asks for "/version/"; the real server answers both.
        Route("/version/", _version, methods=["GET"]),
        Route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            partial(_access_review, state),
            methods=["POST"],
        ),
        *(Route(p, _ok, methods=["GET"]) for p in ("/healthz", "/readyz", "/livez")),
        *_control_routes(state),
    ]
    for rt in state.store.registry:
        routes += _resource_routes(state, rt)
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_exception,
            ApiError: _api_error_handler,
            # A bug in the fake: answered as the real server's InternalError, and still logged.
            Exception: _internal_error,
        },
    )
    return _Harness(app, state)


# -- request log and fault injection --------------------------------------------------------


class _Harness:
    """Logs every API request with its parsed body and applies injected faults before routing.

    `/_fake/` control requests are neither logged nor faulted.
    """

    def __init__(self, app: ASGIApp, state: FakeAPIState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_fake/"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        method, path = scope["method"], scope["path"]
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type")
        self.state.requests.record(
            RecordedRequest(
                method=method,
                path=path,
                query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
                content_type=content_type.decode("latin-1") if content_type else None,
                body=_loose_json(body),
                time=time.monotonic(),
            )
        )
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        kind = call_kind(method, path, query)
        self.state.traffic.add(kind, requests=1, bytes_in=len(body))
        send = _counting(send, self.state.traffic, kind)
        fault = self.state.faults.take(
            method,
            path,
            watch=_is_watch(path, query),
            body=body.decode("utf-8", errors="replace"),
        )
        if fault is not None:
            if fault.delay:
                await trio.sleep(fault.delay)
            if fault.hang and not await self._hang(receive):
                return
            if fault.status is not None:
                error = _fault_error(fault, fault.status, path)
                await _status_response(error)(scope, receive, send)
                return
            if fault.stream_error is not None or fault.stream_end:
                await _stream_fault(fault, path, send)
                return

        forbidden = self._forbidden(method, path, scope)
        if forbidden is not None:
            await _status_response(forbidden)(scope, receive, send)
            return

        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _forbidden(self, method: str, path: str, scope: Scope) -> ApiError | None:
        """The 403 the API server's authorizer answers a request the grants do not allow."""
        grants = self.state.grants
        if grants.rules is None:
            return None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            attributes = request_attributes(method, path, query)
        except NotAResourceRequest:
            return None  # routing answers it (404/405), as the real server's handler chain does
        if grants.allows(attributes):
            return None
        details = None
        if isinstance(attributes, ResourceAttributes):
            details = {"name": attributes.name, "kind": attributes.resource}
        return ApiError(403, "Forbidden", grants.forbidden_message(attributes), details=details)

    async def _hang(self, receive: Receive) -> bool:
        """Hold the request until the faults are cleared (True) or the client leaves (False)."""
        waker = _Waker()
        released = waker.arm()
        client_left = False
        with self.state.faults.on_clear(waker):
            async with trio.open_nursery() as nursery:

                async def watch_client() -> None:
                    nonlocal client_left
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    client_left = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_client)
                await released.wait()
                nursery.cancel_scope.cancel()
        return not client_left


def _counting(send: Send, traffic: TrafficMeter, kind: str) -> Send:
    """`send` that adds every response body chunk (each watch event too) to `traffic`."""

    async def counted(message: Message) -> None:
        if message["type"] == "http.response.body":
            traffic.add(kind, bytes_out=len(message.get("body", b"")))
        await send(message)

    return counted


def _is_watch(path: str, query: dict[str, str]) -> bool:
    return "/watch/" in path or query.get("watch", "").lower() in ("true", "1")


def _fault_error(fault: Fault, code: int, path: str) -> ApiError:
    details = None
    if fault.cause:
        details = {"causes": [{"reason": fault.cause, "message": fault.message}]}
    message = fault.message or f"injected fault: {path}"
    return ApiError(code, _reason(code), message, details=details)


async def _stream_fault(fault: Fault, path: str, send: Send) -> None:
    """A watch that is accepted (200) and then ends: with one ERROR event, or empty."""
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-cache, private")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if fault.stream_error is not None:
        error = _fault_error(fault, fault.stream_error, path)
        line = _event_line("ERROR", error.status())
        await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _loose_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _reason(code: int) -> str:
    return _REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = "the server could not find the requested resource"
    else:
        message = exc.detail
    return _status_response(ApiError(exc.status_code, _reason(exc.status_code), message))


async def _api_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _status_response(exc)


async def _internal_error(_: Request, exc: Exception) -> Response:
    return _status_response(ApiError(500, "InternalError", f"fake API server bug: {exc!r}"))


def _status_response(exc: ApiError) -> Response:
    return JSONResponse(exc.status(), status_code=exc.code)


# -- discovery and health ------------------------------------------------------------------


async def _api_versions(state: FakeAPIState, request: Request) -> Response:
    host = request.headers.get("host", "")
    return JSONResponse(
        {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }
    )


async def _api_resources(state: FakeAPIState, _: Request) -> Response:
    resources: list[dict[str, Any]] = []
    for rt in state.store.registry:
        resources.append(
            {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": rt.verbs,
                "shortNames": list(rt.short_names),
            }
        )
        if rt.has_status:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return JSONResponse({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})


async def _api_groups(_: Request) -> Response:
    return JSONResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})


async def _version(_: Request) -> Response:
    return JSONResponse(KUBE_VERSION)


async def _access_review(state: FakeAPIState, request: Request) -> Response:
    review = await request.json()
    if not isinstance(review, dict) or not isinstance(review.get("spec"), dict):
        raise errors.bad_request("a SelfSubjectAccessReview needs a spec")
    try:
        attributes = review_attributes(review["spec"])
    except ValueError as exc:
        raise errors.invalid("SelfSubjectAccessReview", "", str(exc)) from None
    allowed = state.grants.allows(attributes)
    if isinstance(attributes, ResourceAttributes) and (
        (attributes.verb, attributes.resource) in state.denied
    ):
        allowed = False
    # As the RBAC authorizer answers: a reason when allowed, none when no rule matched.
    review["status"] = {"allowed": allowed}
    if allowed:
        review["status"]["reason"] = "RBAC: allowed by the fake API server's grants"
    review.setdefault("apiVersion", "authorization.k8s.io/v1")
    review.setdefault("kind", "SelfSubjectAccessReview")
    review.setdefault("metadata", {"creationTimestamp": None})
    return JSONResponse(review, status_code=201)


async def _ok(_: Request) -> Response:
    return PlainTextResponse("ok")


# -- resources -----------------------------------------------------------------------------


Handler = Callable[[Request], Awaitable[Response]]


def _resource_routes(state: FakeAPIState, rt: ResourceType) -> list[BaseRoute]:
    def bind(fn: Callable[..., Awaitable[Response]], **kw: Any) -> Handler:
        return partial(fn, state, rt, **kw)

    base = f"/api/{rt.api_version}"
    if rt.namespaced:
        collection = f"{base}/namespaces/{{namespace}}/{rt.plural}"
        watch_collection = f"{base}/watch/namespaces/{{namespace}}/{rt.plural}"
        routes: list[BaseRoute] = [
            Route(f"{base}/{rt.plural}", bind(_collection), methods=["GET"]),
            Route(
                f"{base}/watch/{rt.plural}", bind(_collection, force_watch=True), methods=["GET"]
            ),
        ]
        collection_methods = ["GET", "POST"]
    else:
        collection = f"{base}/{rt.plural}"
        watch_collection = f"{base}/watch/{rt.plural}"
        routes = []
        collection_methods = ["GET", "POST"]
    routes += [
        Route(collection, bind(_collection), methods=collection_methods),
        Route(watch_collection, bind(_collection, force_watch=True), methods=["GET"]),
        Route(f"{watch_collection}/{{name}}", bind(_collection, force_watch=True), methods=["GET"]),
        Route(f"{collection}/{{name}}", bind(_item), methods=["GET", "PUT", "PATCH", "DELETE"]),
    ]
    if rt.has_status:
        routes.append(
            Route(
                f"{collection}/{{name}}/status",
                bind(_item, subresource="status"),
                methods=["GET", "PUT", "PATCH"],
            )
        )
    return routes


def _bool_param(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "").lower()
    if value in ("true", "1"):
        return True
    if value in ("", "false", "0"):
        return False
    raise errors.bad_request(f"invalid value for {name}: {value!r}")


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise errors.bad_request(f"invalid value for {name}: {value!r}") from None
    if number < 0:
        raise errors.bad_request(f"{name} must not be negative, got {number}")
    return number


def _reject_dry_run(request: Request) -> None:
    if request.query_params.get("dryRun"):
        raise errors.bad_request("dryRun is not supported by the fake API server")


def _json_body(body: bytes, content_type: str | None, *, patch: bool = False) -> Any:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if not patch and media not in ("application/json", "*/*"):
        raise errors.unsupported_media_type(media)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None


async def _collection(
    state: FakeAPIState, rt: ResourceType, request: Request, *, force_watch: bool = False
) -> Response:
    namespace = request.path_params.get("namespace")
    if request.method == "POST":
        _reject_dry_run(request)
        body = _json_body(await request.body(), request.headers.get("content-type"))
        return JSONResponse(state.store.create(rt, namespace, body), status_code=201)
    q = request.query_params
    fields = parse_field_selector(q.get("fieldSelector", ""), rt.field_getters)
    name = request.path_params.get("name")
    if name is not None:  # the legacy /watch/.../{name} form
        fields = attrs.evolve(
            fields, terms=(*fields.terms, FieldTerm("metadata.name", name, False))
        )
    selection = Selection(namespace, fields, parse_label_selector(q.get("labelSelector", "")))
    if force_watch or _bool_param(request, "watch"):
        return _watch(state, rt, request, selection)
    return JSONResponse(
        state.store.list_objects(
            rt,
            selection,
            limit=_int_param(request, "limit"),
            continue_token=q.get("continue") or None,
            resource_version=q.get("resourceVersion"),
            resource_version_match=q.get("resourceVersionMatch"),
        )
    )


async def _item(
    state: FakeAPIState, rt: ResourceType, request: Request, *, subresource: str | None = None
) -> Response:
    namespace = request.path_params.get("namespace")
    name = request.path_params["name"]
    store = state.store
    if request.method == "GET":
        return JSONResponse(store.get(rt, namespace, name))
    _reject_dry_run(request)
    raw = await request.body()
    content_type = request.headers.get("content-type")
    if request.method == "PUT":
        body = _json_body(raw, content_type)
        return JSONResponse(store.replace(rt, namespace, name, body, subresource=subresource))
    if request.method == "PATCH":
        if not content_type:
            raise errors.unsupported_media_type("")
        body = _json_body(raw, content_type, patch=True)
        return JSONResponse(
            store.patch(rt, namespace, name, content_type, body, subresource=subresource)
        )
    options = _json_body(raw, content_type) if raw.strip() else {}
    if not isinstance(options, dict):
        raise errors.bad_request("DeleteOptions must be a JSON object")
    preconditions = options.get("preconditions") or {}
    if not isinstance(preconditions, dict):
        raise errors.bad_request("DeleteOptions.preconditions must be a JSON object")
    return JSONResponse(store.delete(rt, namespace, name, preconditions=preconditions))


# -- watch ---------------------------------------------------------------------------------


def _watch(
    state: FakeAPIState, rt: ResourceType, request: Request, selection: Selection
) -> Response:
    bookmarks = _bool_param(request, "allowWatchBookmarks")
    timeout = _int_param(request, "timeoutSeconds")
    initial = _bool_param(request, "sendInitialEvents")
    rv = None if initial else request.query_params.get("resourceVersion")
    waker = _Waker()
    try:
        sub = state.store.watch(rt, selection, rv, waker)
    except ApiError as exc:
        # Once the request is accepted and its resourceVersion parsed, the real server
        # reports a resourceVersion it cannot serve from (410 too old, 504 too large) inside
        # a 200 watch stream (the watch cache's "errWatcher").
        return _WatchStream(state, rt, None, waker, error=exc)
    return _WatchStream(
        state,
        rt,
        sub,
        waker,
        bookmarks=bookmarks,
        timeout=float(timeout) if timeout else math.inf,
        initial_end_marker=initial and bookmarks,
    )


class _Waker:
    """Wakes a watch stream from whatever thread the store was written on."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()

    def arm(self) -> trio.Event:
        """A fresh event for the next wait; call on the trio thread before draining."""
        self._event = trio.Event()
        return self._event

    def __call__(self) -> None:
        # If the server's loop is gone, nobody is waiting any more.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._fire)

    def _fire(self) -> None:
        self._event.set()


def _event_line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


class _WatchStream(Response):
    media_type = "application/json"

    def __init__(
        self,
        state: FakeAPIState,
        rt: ResourceType,
        sub: Subscription | None,
        waker: _Waker,
        *,
        error: ApiError | None = None,
        bookmarks: bool = False,
        timeout: float = math.inf,
        initial_end_marker: bool = False,
    ) -> None:
        self.state = state
        self.rt = rt
        self.sub = sub
        self.waker = waker
        self.error = error
        self.bookmarks = bookmarks
        self.timeout = timeout
        self.initial_end_marker = initial_end_marker
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache, private"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if self.sub is None:
            assert self.error is not None
            await send(
                {
                    "type": "http.response.body",
                    "body": _event_line("ERROR", self.error.status()),
                    "more_body": True,
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        dropped = False
        client_left = False
        try:
            async with trio.open_nursery() as nursery:

                async def watch_client() -> None:
                    nonlocal client_left
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    client_left = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_client)
                dropped = await self._pump(self.sub, send)
                nursery.cancel_scope.cancel()
        finally:
            self.state.store.unwatch(self.sub)
        if not dropped and not client_left:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # When dropped, returning without the closing chunk makes the ASGI server close the
        # connection mid-body: the client sees exactly what a cut TCP connection looks like.

    def _bookmark(self, rv: int, *, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        return _event_line(
            "BOOKMARK", {"kind": self.rt.kind, "apiVersion": self.rt.api_version, "metadata": meta}
        )

    async def _pump(self, sub: Subscription, send: Send) -> bool:
        """Stream events until the timeout (False) or until the watch is dropped (True)."""
        store = self.state.store
        interval = self.state.bookmark_interval
        deadline = trio.current_time() + self.timeout
        next_bookmark = trio.current_time() + interval if self.bookmarks else math.inf
        initial_left = sub.initial_events
        marker_due = self.initial_end_marker
        while True:
            woken = self.waker.arm()
            changes, dropped = store.take(sub)
            if dropped:
                return True
            chunk = bytearray()
            for change in changes:
                event = watch_event(change, sub.selection)
                if event is not None:
                    chunk += _event_line(*event)
            initial_left -= min(initial_left, len(changes))
            if marker_due and initial_left == 0:
                rv = store.bookmark_rv(sub)
                if rv is not None:
                    chunk += self._bookmark(rv, initial_end=True)
                    marker_due = False
            if chunk:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
                continue
            now = trio.current_time()
            if now >= deadline:
                return False
            if now >= next_bookmark:
                rv = store.bookmark_rv(sub)
                if rv is not None:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": self._bookmark(rv),
                            "more_body": True,
                        }
                    )
                    next_bookmark = now + interval
                continue
            with trio.move_on_at(min(deadline, next_bookmark)):
                await woken.wait()


# -- /_fake/ controls ----------------------------------------------------------------------


def _control_routes(state: FakeAPIState) -> list[BaseRoute]:
    async def compact(_: Request) -> Response:
        return JSONResponse({"resourceVersion": str(state.store.compact())})

    async def drop_watches(_: Request) -> Response:
        return JSONResponse({"dropped": state.store.drop_watches()})

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.faults.clear()
            return JSONResponse({"faults": []})
        if request.method == "POST":
            try:
                fault = Fault.from_json(json.loads(await request.body()))
            except ValueError as exc:
                raise errors.bad_request(f"invalid fault: {exc}") from None
            state.faults.add(fault)
            return JSONResponse(fault.to_json(), status_code=201)
        return JSONResponse({"faults": [f.to_json() for f in state.faults.active()]})

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            state.requests.clear()
            return JSONResponse({"requests": []})
        return JSONResponse({"requests": [r.to_json() for r in state.requests.entries()]})

    async def outage(request: Request) -> Response:
        if state.outage is None:
            raise ApiError(501, "NotImplemented", "this server cannot go down on request")
        try:
            seconds = float(json.loads(await request.body() or b"{}").get("seconds", 1.0))
        except (ValueError, AttributeError, TypeError) as exc:
            raise errors.bad_request(f'expected {{"seconds": N}}: {exc}') from None
        if not 0 < seconds <= 3600:
            raise errors.bad_request(f"seconds must be in (0, 3600], got {seconds}")
        state.outage(seconds)
        return JSONResponse({"down_for": seconds}, status_code=202)

    async def grants(request: Request) -> Response:
        if request.method == "PUT":
            try:
                body = json.loads(await request.body())
                rules = body.get("rules")
                state.grants = (
                    Grants.everything()
                    if rules is None
                    else Grants.from_rules(rules, body.get("user") or state.grants.user)
                )
            except (ValueError, AttributeError, TypeError) as exc:
                raise errors.bad_request(f'expected {{"rules": [...] | null}}: {exc}') from None
        rules = state.grants.rules
        rules_json = None if rules is None else [attrs.asdict(r) for r in rules]
        return JSONResponse({"user": state.grants.user, "rules": rules_json})

    async def status(_: Request) -> Response:
        return JSONResponse(
            {
                "resourceVersion": str(state.store.resource_version),
                "openWatches": state.store.open_watches(),
            }
        )

    return [
        Route("/_fake/compact", compact, methods=["POST"]),
        Route("/_fake/drop-watches", drop_watches, methods=["POST"]),
        Route("/_fake/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_fake/requests", requests, methods=["GET", "DELETE"]),
        Route("/_fake/outage", outage, methods=["POST"]),
        Route("/_fake/status", status, methods=["GET"]),
        Route("/_fake/grants", grants, methods=["GET", "PUT"]),
    ]
