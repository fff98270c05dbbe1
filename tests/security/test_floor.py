"""The hostile tenant against the administrator's floor, with the real agent on real
cgroups: containers that match an exclusion rule the tenant controls (a keyword in the
container's name or image, the pod's labels, a regex on names) are still held to the
ceilings in the kernel; only the administrator's namespace settings lift them.

Each test asserts on what the kernel holds (read back from blkio.throttle / io.max) and that
the agent is still alive (a canary pod gets its limits afterwards)."""

from __future__ import annotations

from typing import Any

import pytest

from diskguard.model import IOLimits
from diskguard.web.status import containers_json
from tests.agent.conftest import (
    Cluster,
    P,
    cluster,
    start_agent,
)

# The whole-agent fixtures, shared with tests/agent.
__all__ = ["cluster", "start_agent"]

pytestmark = pytest.mark.kernel

MI = 2**20
CEILING_ENV = {
    "LIMIT_CEILING_READ_IOPS": "1000",
    "LIMIT_CEILING_WRITE_IOPS": "800",
    "LIMIT_CEILING_WRITE_BPS": "50Mi",
}
CEILING = IOLimits(riops=1000, wiops=800, rbps=0, wbps=50 * MI)
DEFAULT = IOLimits(500, 500, 0, 0)  # the env defaults (DEFAULT_*_IOPS)
# What the pod's own limits come to under those ceilings (`iops: 0`, `write-iops: 7`).
GREEDY = {f"{P}/iops": "0", f"{P}/write-iops": "7"}
GREEDY_LIMITS = IOLimits(riops=1000, wiops=7, rbps=0, wbps=50 * MI)


def cgroup_of(cluster: Cluster, pod: dict[str, Any], container: str) -> Any:
    [ref] = [r for r in cluster.refs(pod) if r.container == container]
    return cluster.cgroup(ref)


async def assert_alive(cluster: Cluster, running: Any, name: str = "canary") -> None:
    """The agent's loop still takes in pods and limits them."""
    canary = cluster.add_pod(name, annotations={f"{P}/read-iops": "321"})
    await cluster.wait_kernel(
        cluster.cgroup(cluster.refs(canary)[0]), IOLimits(321, 500, 0, 0).stricter(CEILING)
    )
    assert running.agent.reconciler.synced.is_set()


async def test_keyword_named_containers_are_held_to_the_ceiling(
    cluster: Cluster, start_agent: Any
) -> None:
    """`app-pause` (name) and an image path with `apisix` match the default keywords; the
    tenant picked both. They get the ceilings - not the pod's unlimited, not its 7 IOPS, not
    the env default."""
    pod = cluster.add_pod(
        "escape",
        annotations=GREEDY,
        containers=(
            ("app-pause", "busybox:1.36"),
            ("gw", "registry.example.com/apisix/gateway:3.9"),
            ("main", "busybox:1.36"),
        ),
    )
    running = await start_agent(**CEILING_ENV)
    await cluster.wait_kernel(cgroup_of(cluster, pod, "app-pause"), CEILING)
    await cluster.wait_kernel(cgroup_of(cluster, pod, "gw"), CEILING)
    await cluster.wait_kernel(cgroup_of(cluster, pod, "main"), GREEDY_LIMITS)

    status = {c["container"]: c for c in containers_json(running.agent.reconciler, {}, P)}
    assert status["app-pause"]["enforcement"] == "ceilings"
    assert "excluded keyword 'pause'" in status["app-pause"]["excluded"]
    assert status["gw"]["enforcement"] == "ceilings"
    assert status["main"]["enforcement"] == "pod_limits"
    assert status["app-pause"]["in_sync"] and status["gw"]["in_sync"]
    assert status["gw"]["desired"]["source_kinds"]["wiops"] == "ceiling"
    await assert_alive(cluster, running)


async def test_label_selector_and_regex_exclusions_are_held_to_the_ceiling(
    cluster: Cluster, start_agent: Any
) -> None:
    labelled = cluster.add_pod("labelled", annotations=GREEDY, labels={"io-exempt": "yes"})
    named = cluster.add_pod("batch-17", annotations=GREEDY)
    running = await start_agent(
        EXCLUDE_LABEL_SELECTOR="io-exempt=yes", EXCLUDE_REGEX="/batch-[0-9]+/", **CEILING_ENV
    )
    await cluster.wait_kernel(cgroup_of(cluster, labelled, "app"), CEILING)
    await cluster.wait_kernel(cgroup_of(cluster, named, "app"), CEILING)
    await assert_alive(cluster, running)


async def test_relabelling_a_running_pod_to_match_the_selector_keeps_the_ceiling(
    cluster: Cluster, start_agent: Any
) -> None:
    """A tenant adds the exclusion label to a running pod: its limits go from the pod's to
    the ceilings, never to unlimited."""
    pod = cluster.add_pod("shifty", annotations={f"{P}/iops": "100"})
    cg = cgroup_of(cluster, pod, "app")
    running = await start_agent(EXCLUDE_LABEL_SELECTOR="io-exempt", **CEILING_ENV)
    await cluster.wait_kernel(cg, IOLimits(100, 100, 0, 50 * MI))

    def relabel(obj: dict[str, Any]) -> None:
        obj["metadata"]["labels"]["io-exempt"] = ""

    cluster.api.update("pods", "default", "shifty", relabel)
    await cluster.wait_kernel(cg, CEILING)
    await assert_alive(cluster, running)


async def test_only_namespace_settings_lift_the_ceiling_of_excluded_containers(
    cluster: Cluster, start_agent: Any
) -> None:
    """EXCLUDE_NAMESPACES: no limit at all. ALLOW_UNLIMITED_NAMESPACES: the env ceilings do
    not apply, so an excluded container there is unlimited too. Elsewhere: the ceiling."""
    system = cluster.add_pod(
        "agent", namespace="kube-system", containers=(("app-pause", "pause:3.9"),)
    )
    batch = cluster.add_pod("job", namespace="batch", containers=(("app-pause", "busybox"),))
    web = cluster.add_pod("web", namespace="web", containers=(("app-pause", "busybox"),))
    systemcg = cgroup_of(cluster, system, "app-pause")
    batchcg = cgroup_of(cluster, batch, "app-pause")
    # Pre-existing limits (e.g. from before an upgrade) are cleared where the floor is lifted.
    for cg in (systemcg, batchcg):
        cluster.backend.write(cg, cluster.device, IOLimits(9, 9), IOLimits())
    running = await start_agent(ALLOW_UNLIMITED_NAMESPACES="batch", **CEILING_ENV)
    await cluster.wait_kernel(cgroup_of(cluster, web, "app-pause"), CEILING)
    await cluster.wait_kernel(systemcg, IOLimits())
    await cluster.wait_kernel(batchcg, IOLimits())
    status = {
        (c["namespace"], c["container"]): c["enforcement"]
        for c in containers_json(running.agent.reconciler, {}, P)
    }
    assert status[("kube-system", "app-pause")] == "exempt"
    assert status[("batch", "app-pause")] == "ceilings"
    await assert_alive(cluster, running)


async def test_excluded_container_is_put_back_to_the_ceiling_after_drift(
    cluster: Cluster, start_agent: Any
) -> None:
    """Someone clears the limit of a keyword-excluded container by hand: the resync puts
    the ceiling back (the agent owns it like any other limit)."""
    pod = cluster.add_pod("drift", containers=(("istio-proxy", "istio/proxyv2:1.20"),))
    cg = cgroup_of(cluster, pod, "istio-proxy")
    running = await start_agent(RESYNC_INTERVAL="0.3", **CEILING_ENV)
    await cluster.wait_kernel(cg, CEILING)
    cluster.backend.write(cg, cluster.device, IOLimits(), CEILING)
    assert cluster.kernel(cg) == IOLimits()
    await cluster.wait_kernel(cg, CEILING, timeout=3)
    await assert_alive(cluster, running)
