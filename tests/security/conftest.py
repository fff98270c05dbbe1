"""Fixtures for the adversarial suite: the whole-agent fixtures of tests/agent (fake API
server, kubelet-layout cgroups on a loop disk, the agent in-process) and the reliability
suite's helpers; the tests play the hostile tenant and the broken node against them."""

from __future__ import annotations

from tests.agent.conftest import NODE, Cluster, P, RunningAgent, cluster, scaled, start_agent
from tests.reliability.conftest import http_get, launch_agent, wait_until

__all__ = [
    "NODE",
    "Cluster",
    "P",
    "RunningAgent",
    "cluster",
    "http_get",
    "launch_agent",
    "scaled",
    "start_agent",
    "wait_until",
]
