"""Prometheus exposition of the agent's state, computed at scrape time.

A custom collector reads the agent's state when scraped, so the hot paths keep no metric
objects up to date and there is no global registry: each agent owns its own.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from diskguard.status import source_kind

if TYPE_CHECKING:
    from diskguard.agent import Agent

_DIRECTIONS = (
    ("riops", "read", "iops"),
    ("wiops", "write", "iops"),
    ("rbps", "read", "bps"),
    ("wbps", "write", "bps"),
)


def version() -> str:
    try:
        return metadata.version("diskguard")
    except metadata.PackageNotFoundError:
        return "unknown"


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        rec = agent.reconciler

        info = GaugeMetricFamily(
            "diskguard_build_info",
            "diskguard version and runtime",
            labels=["version", "python", "cgroup_version"],
        )
        info.add_metric(
            [version(), platform.python_version(), agent.node.hierarchy.version.value], 1
        )
        yield info

        ready = GaugeMetricFamily("diskguard_ready", "1 when /readyz answers ready")
        ready.add_metric([], 1 if agent.ready() else 0)
        yield ready

        limit = GaugeMetricFamily(
            "diskguard_container_limit",
            "IO limit the kernel holds for a container on a data device (0 = unlimited), "
            "and where the value came from",
            labels=["namespace", "pod", "container", "device", "direction", "unit", "source"],
        )
        states = {"limited": 0, "excluded": 0, "waiting_for_cgroup": 0, "error": 0}
        for plan in rec.plans.values():
            for cplan in plan.containers:
                ref, res = cplan.ref, cplan.resolution
                result = rec.results.get(ref.key)
                if res is None:
                    states["excluded"] += 1
                elif result is None or result.cgroup is None:
                    states["waiting_for_cgroup"] += 1
                elif result.error:
                    states["error"] += 1
                else:
                    states["limited"] += 1
                if result is None or res is None:
                    continue
                for device, held in result.kernel:
                    for field, direction, unit in _DIRECTIONS:
                        limit.add_metric(
                            [
                                ref.namespace,
                                ref.pod,
                                ref.container,
                                str(device),
                                direction,
                                unit,
                                source_kind(res.sources.get(field, "")),
                            ],
                            getattr(held, field),
                        )
        yield limit

        containers = GaugeMetricFamily(
            "diskguard_containers", "Containers on this node by state", labels=["state"]
        )
        for state, count in states.items():
            containers.add_metric([state], count)
        yield containers

        outcomes = CounterMetricFamily(
            "diskguard_reconcile_containers",
            "Container reconciles by outcome (changed, unchanged, cgroup_missing, error)",
            labels=["outcome"],
        )
        for outcome in ("changed", "unchanged", "cgroup_missing", "error"):
            outcomes.add_metric([outcome], rec.outcomes.get(outcome, 0))
        yield outcomes

        passes = CounterMetricFamily("diskguard_reconcile_passes", "Reconcile batches run")
        passes.add_metric([], rec.reconciles)
        yield passes

        relists = CounterMetricFamily(
            "diskguard_watch_relists", "Full relists", labels=["resource"]
        )
        restarts = CounterMetricFamily(
            "diskguard_watch_failures",
            "Failed list/watch attempts (retried with backoff)",
            labels=["resource"],
        )
        failing = GaugeMetricFamily(
            "diskguard_watch_failing", "1 while the list/watch is failing", labels=["resource"]
        )
        for watcher in (agent.pod_watcher, agent.namespace_watcher):
            health = watcher.health
            relists.add_metric([watcher.name], health.relists)
            restarts.add_metric([watcher.name], health.restarts)
            failing.add_metric([watcher.name], 1 if health.failing_since is not None else 0)
        yield relists
        yield restarts
        yield failing

        dropped = CounterMetricFamily(
            "diskguard_events_dropped", "Kubernetes Events dropped because the queue was full"
        )
        dropped.add_metric([], agent.events.dropped)
        yield dropped


def exposition(agent: Agent) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return generate_latest(registry)
