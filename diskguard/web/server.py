"""The HTTP task: /healthz, /readyz, /metrics, /status (read-only; nothing here changes state).

Served by hypercorn on the agent's own trio loop, so an answer at all proves the loop is
not blocked. One listener model: HTTP_ADDR with an empty host listens on every address
through one dual-stack socket (`[::]` with IPV6_V6ONLY off, so IPv4 clients arrive as
::ffff:a.b.c.d), or on IPv4 alone where the node has no IPv6. /status lists every tenant's
pods, so with STATUS_LOCALHOST_ONLY it answers only clients on the pod's loopback (403
otherwise); /metrics and the probes answer everyone who can reach the port (NetworkPolicy:
deploy/components/network-policy).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from diskguard.config import ListenAddress
from diskguard.logs import get_logger
from diskguard.web.metrics import exposition, version
from diskguard.web.status import status_json
from diskguard.web.view import AgentView

log = get_logger(__name__)

# What socket(AF_INET6) or bind("::") fail with where IPv6 is off (ipv6.disable=1, no
# IPv6 in the container's network namespace).
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})

FORBIDDEN_STATUS = (
    "forbidden: /status is answered only on the agent pod's loopback (STATUS_LOCALHOST_ONLY="
    "true); run `kubectl -n <namespace> exec <agent pod> -- diskguard status`\n"
)


def is_loopback(host: str | None) -> bool:
    """Whether a peer address is the local host's loopback (IPv4-mapped IPv6 included)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def listen_socket(
    address: ListenAddress,
    make_socket: Callable[[int, int], socket.socket] = socket.socket,
) -> socket.socket:
    """A bound TCP socket for `address` (not listening yet)."""
    if address.every_address:
        try:
            return _bind(make_socket, socket.AF_INET6, ("::", address.port), dual_stack=True)
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise
            log.info("no IPv6 on this node: listening on IPv4 only", error=exc.strerror)
        return _bind(make_socket, socket.AF_INET, ("0.0.0.0", address.port))
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV
    )
    family, _, _, _, sockaddr = infos[0]
    return _bind(make_socket, family, sockaddr)


def _bind(
    make_socket: Callable[[int, int], socket.socket],
    family: int,
    sockaddr: Any,
    *,
    dual_stack: bool = False,
) -> socket.socket:
    sock = make_socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            # Off is Linux's default (net.ipv6.bindv6only=0), but a node may say otherwise.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def build_app(view: AgentView) -> Starlette:
    async def healthz(request: Request) -> Response:
        problem = view.health_snapshot().liveness_problem
        if problem:
            return PlainTextResponse(f"unhealthy: {problem}\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        problem = view.health_snapshot().readiness_problem
        if problem:
            return PlainTextResponse(f"not ready: {problem}\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics(request: Request) -> Response:
        return Response(exposition(view), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        client = request.client.host if request.client else None
        if view.setup_snapshot().status_localhost_only and not is_loopback(client):
            return PlainTextResponse(FORBIDDEN_STATUS, status_code=403)
        namespace = request.query_params.get("namespace")
        pod = request.query_params.get("pod")
        return JSONResponse(status_json(view, version(), namespace, pod))

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
        ]
    )


async def serve(
    view: AgentView,
    address: ListenAddress,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    sock = listen_socket(address)
    config = hypercorn.config.Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn takes the socket over
    config.accesslog = None
    config.errorlog = logging.getLogger("diskguard.http")
    config.graceful_timeout = 1.0
    app = cast(hypercorn.typing.Framework, build_app(view))
    await hypercorn.trio.serve(app, config, task_status=task_status)
