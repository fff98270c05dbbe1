"""Fixtures for the reliability suite: the whole-agent fixtures of tests/agent, plus an
in-process agent that does not wait for its first reconcile (start-up faults), a
subprocess agent whose HTTP port is read from its log, and polling helpers."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
import trio

from diskguard.agent.run import Agent
from diskguard.config import load_config
from diskguard.kube.client import make_api_client
from diskguard.model import Device, IOLimits
from diskguard.node.setup import NodeSetup
from diskguard.testing.oracle import DEFAULT, expected_limits
from tests.agent.conftest import (
    NODE,
    Cluster,
    P,
    RunningAgent,
    agent_output,
    agent_subprocess,
    cluster,
    start_agent,
)

__all__ = [
    "DEFAULT",
    "NODE",
    "Cluster",
    "P",
    "RunningAgent",
    "agent_output",
    "agent_subprocess",
    "cluster",
    "expected_limits",
    "launch_agent",
    "start_agent",
]


@pytest.fixture
async def launch_agent(cluster: Cluster) -> AsyncIterator[Callable[..., Any]]:
    """`await launch_agent(devices=None, **env) -> RunningAgent`: the agent in this trio
    loop, returned as soon as it serves HTTP, *without* waiting for its first reconcile
    (so a test can watch it start against a broken API server). `devices` overrides the
    data devices (default: the cluster's loop disk)."""
    async with trio.open_nursery() as nursery:

        async def launch(devices: Sequence[Device] | None = None, **env: str) -> RunningAgent:
            full = cluster.env(**env)
            config = load_config(full)
            node = NodeSetup(
                cluster.hierarchy,
                tuple(devices or (cluster.device,)),
                follow_data_mounts=devices is None,  # handed-in disks are not DATA_MOUNT's
            )
            agent = Agent(config, node, make_api_client(full))
            scope = trio.CancelScope()

            async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await agent.run(task_status=task_status)

            await nursery.start(run)
            return RunningAgent(agent, scope)

        yield launch
        nursery.cancel_scope.cancel()


async def http_get(base: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{base}{path}", timeout=5)


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll `predicate` until true; return the seconds it took, or fail naming `what`."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(interval)
        return trio.current_time() - start
    raise AssertionError(f"not within {timeout}s: {what}")


# The text log line: `... serving /healthz /readyz /metrics /status  [logger] addresses=...`.
_SERVING = re.compile(
    rb"serving /healthz /readyz /metrics /status [^\n]*?addresses='?(http://[\d.:]+)"
)


async def subprocess_http(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """The base URL a subprocess agent serves on (HTTP_ADDR=127.0.0.1:0), from its log."""
    with trio.move_on_after(timeout):
        while True:
            m = _SERVING.search(agent_output(proc))
            if m:
                return m.group(1).decode()
            if proc.poll() is not None:
                break
            await trio.sleep(0.05)
    raise AssertionError(
        f"the agent never said where it serves; its output:\n{agent_output(proc).decode()[-3000:]}"
    )


async def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return await trio.to_thread.run_sync(lambda: proc.wait(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
    return await trio.to_thread.run_sync(proc.wait)


def kernel_mismatches(
    cluster: Cluster, expected: dict[Any, IOLimits]
) -> list[tuple[Any, IOLimits | str, IOLimits]]:
    """Every cgroup whose kernel limits differ from what is expected of it."""
    wrong: list[tuple[Any, IOLimits | str, IOLimits]] = []
    for cgroup, want in expected.items():
        try:
            got: IOLimits | str = cluster.kernel(cgroup)
        except OSError as exc:
            got = f"unreadable: {exc}"
        if got != want:
            wrong.append((cgroup, got, want))
    return wrong


async def wait_all(
    cluster: Cluster, expected: dict[Any, IOLimits], timeout: float, what: str = ""
) -> float:
    """Wait until the kernel holds every expected limit; fail listing the stragglers."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while kernel_mismatches(cluster, expected):
            await trio.sleep(0.05)
        return trio.current_time() - start
    wrong = kernel_mismatches(cluster, expected)
    raise AssertionError(
        f"{len(wrong)} of {len(expected)} cgroups not converged after {timeout}s {what}: "
        + "; ".join(f"{cg}: kernel {got}, want {want}" for cg, got, want in wrong[:5])
    )
