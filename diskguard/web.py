"""The HTTP task: /healthz, /readyz, /metrics, /status (read-only; nothing here changes state).

Served by hypercorn on the agent's own trio loop, so an answer at all proves the loop is
not blocked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from diskguard.metrics import exposition, version
from diskguard.status import containers_json

if TYPE_CHECKING:
    from diskguard.agent import Agent


def build_app(agent: Agent) -> Starlette:
    async def healthz(request: Request) -> Response:
        problem = agent.liveness_problem()
        if problem:
            return PlainTextResponse(f"unhealthy: {problem}\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        problem = agent.readiness_problem()
        if problem:
            return PlainTextResponse(f"not ready: {problem}\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics(request: Request) -> Response:
        return Response(exposition(agent), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        namespace = request.query_params.get("namespace")
        pod = request.query_params.get("pod")
        body: dict[str, Any] = {
            "version": version(),
            "node": agent.config.node_name,
            "ready": agent.ready(),
            "readiness_problem": agent.readiness_problem() or None,
            "cgroup": {
                "version": agent.node.hierarchy.version.value,
                "hierarchy": str(agent.node.hierarchy.path),
            },
            "devices": [{"device": str(d), "name": d.name} for d in agent.node.devices],
            "watches": {
                w.name: {
                    "relists": w.health.relists,
                    "failures": w.health.restarts,
                    "failing": w.health.failing_since is not None,
                    "last_error": w.health.last_error or None,
                }
                for w in (agent.pod_watcher, agent.namespace_watcher)
            },
            "sampler": agent.sampler_status(),
            "smart_limit": agent.smart_status(),
            "containers": containers_json(
                agent.reconciler,
                agent.sampling.rates if agent.sampling else {},
                agent.config.annotation_prefix,
                namespace,
                pod,
                latency=agent.sampling.latency_window if agent.sampling else None,
            ),
        }
        return JSONResponse(body)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
        ]
    )


async def serve(
    agent: Agent, bind: str, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    config = hypercorn.config.Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("diskguard.http")
    config.graceful_timeout = 1.0
    app = cast(hypercorn.typing.Framework, build_app(agent))
    await hypercorn.trio.serve(app, config, task_status=task_status)
