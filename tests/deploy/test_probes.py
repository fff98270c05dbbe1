"""The DaemonSet's probe and scrape paths are served by the agent, as a subprocess like in
the pod, on the port the manifest names."""

from __future__ import annotations

import socket
import subprocess

import httpx
import pytest
import trio

from tests.agent.conftest import Cluster, agent_output, agent_subprocess

from .manifests import agent_container, load_manifests, one

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_agent_serves_the_probe_and_metrics_paths(cluster: Cluster) -> None:
    daemonset = one(load_manifests(), "DaemonSet").doc
    container = agent_container(daemonset)
    paths = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]
    paths.append(daemonset["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    port = _free_port()  # loopback, not the manifest's :2112: tests must not bind all interfaces
    proc = agent_subprocess(cluster.env(HTTP_ADDR=f"127.0.0.1:{port}"))
    answers: dict[str, str] = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for path in paths:
                with trio.move_on_after(30):  # readiness waits for the first reconcile
                    while not answers.get(path, "").startswith("200"):
                        try:
                            reply = await client.get(path)
                            answers[path] = f"{reply.status_code} {reply.text[:200]!r}"
                        except httpx.TransportError as exc:
                            answers[path] = repr(exc)
                        await trio.sleep(0.1)
    finally:
        proc.terminate()
        try:
            await trio.to_thread.run_sync(lambda: proc.wait(timeout=10))
        except subprocess.TimeoutExpired:
            proc.kill()
            await trio.to_thread.run_sync(proc.wait)
    log = agent_output(proc).decode(errors="replace")[-3000:]
    for path in paths:
        assert answers.get(path, "").startswith("200"), (
            f"{path} last answered {answers.get(path)}; agent log:\n{log}"
        )
