"""The DaemonSet's probe and scrape paths are served by the agent, as a subprocess like in
the pod, on the port the manifest names."""

from __future__ import annotations

import contextlib
import socket
import subprocess

import httpx
import pytest
import trio
from agent.conftest import Cluster, agent_subprocess

from .manifests import agent_container, load_manifests, one

pytestmark = pytest.mark.kernel


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
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for path in paths:
                status = None
                with trio.move_on_after(20):  # readiness waits for the first reconcile
                    while status != 200:
                        with contextlib.suppress(httpx.TransportError):
                            status = (await client.get(path)).status_code
                        await trio.sleep(0.1)
                assert status == 200, f"{path} answered {status}"
    finally:
        proc.terminate()
        try:
            await trio.to_thread.run_sync(lambda: proc.wait(timeout=10))
        except subprocess.TimeoutExpired:
            proc.kill()
            await trio.to_thread.run_sync(proc.wait)
