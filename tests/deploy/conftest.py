"""The whole-agent fixtures of tests/agent, reused to run the agent for the RBAC check."""

from tests.agent.conftest import cluster, start_agent

__all__ = ["cluster", "start_agent"]
