"""Guardrails on real cgroups: env ceilings, namespace defaults and ceilings, and the
namespaces where pods may ask for unlimited. Assertions are on what the kernel holds and
on the Events the fake API server received."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from diskguard.model import IOLimits
from diskguard.testing.fakeapi.objects import make_namespace

from .conftest import Cluster, P

pytestmark = pytest.mark.kernel


def namespace(cluster: Cluster, name: str, annotations: dict[str, str]) -> None:
    cluster.api.create("namespaces", make_namespace(name, annotations=annotations))


def annotate_namespace(cluster: Cluster, name: str, changes: dict[str, str | None]) -> None:
    def mutate(obj: dict[str, Any]) -> None:
        ann = obj["metadata"].setdefault("annotations", {})
        for key, value in changes.items():
            if value is None:
                ann.pop(key, None)
            else:
                ann[key] = value

    cluster.api.update("namespaces", None, name, mutate)


async def test_request_above_the_ceiling_and_unlimited_get_the_ceiling(
    cluster: Cluster, start_agent: Any
) -> None:
    greedy = cluster.add_pod("greedy", annotations={f"{P}/write-iops": "5000"})
    free = cluster.add_pod("free", annotations={f"{P}/iops": "0"})
    modest = cluster.add_pod("modest", annotations={f"{P}/write-iops": "10"})
    await start_agent(LIMIT_CEILING_WRITE_IOPS="1000", LIMIT_CEILING_READ_IOPS="800")
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(greedy)[0]), IOLimits(500, 1000))
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(free)[0]), IOLimits(800, 1000))
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(modest)[0]), IOLimits(500, 10))
    clamped = await cluster.wait_events("IOLimitClamped", 2)
    by_pod = {e["involvedObject"]["name"]: e for e in clamped}
    assert set(by_pod) == {"greedy", "free"}
    assert by_pod["greedy"]["type"] == "Warning"
    assert "write-iops=5000 asked, wiops=1000 enforced" in by_pod["greedy"]["message"]
    assert "iops=unlimited asked" in by_pod["free"]["message"]


async def test_namespace_default_replaces_the_env_default(
    cluster: Cluster, start_agent: Any
) -> None:
    namespace(cluster, "team-a", {f"{P}/default-iops": "200", f"{P}/default-write-bps": "4Mi"})
    plain = cluster.add_pod("plain", namespace="team-a")
    own = cluster.add_pod("own", namespace="team-a", annotations={f"{P}/write-iops": "70"})
    elsewhere = cluster.add_pod("elsewhere", namespace="team-b")
    await start_agent()
    await cluster.wait_kernel(
        cluster.cgroup(cluster.refs(plain)[0]), IOLimits(200, 200, 0, 4 * 2**20)
    )
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(own)[0]), IOLimits(200, 70, 0, 4 * 2**20))
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(elsewhere)[0]), IOLimits(500, 500))
    applied = await cluster.wait_events("IOLimitApplied", 2)
    plain_event = next(e for e in applied if e["involvedObject"]["name"] == "plain")
    assert f"namespace annotation {P}/default-iops" in plain_event["message"]


async def test_namespace_ceiling_is_tighter_than_env(cluster: Cluster, start_agent: Any) -> None:
    namespace(cluster, "tight", {f"{P}/max-write-iops": "300"})
    pod = cluster.add_pod("p", namespace="tight", annotations={f"{P}/write-iops": "900"})
    await start_agent(LIMIT_CEILING_WRITE_IOPS="1000")
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 300))
    [event] = await cluster.wait_events("IOLimitClamped", 1)
    assert f"namespace ceiling {P}/max-write-iops=300" in event["message"]


async def test_policy_edit_is_applied_to_existing_pods_within_a_second(
    cluster: Cluster, start_agent: Any
) -> None:
    namespace(cluster, "live", {})
    pods = [cluster.add_pod(f"p{i}", namespace="live") for i in range(3)]
    await start_agent()
    cgroups = [cluster.cgroup(cluster.refs(p)[0]) for p in pods]
    for cg in cgroups:
        await cluster.wait_kernel(cg, IOLimits(500, 500))
    annotate_namespace(cluster, "live", {f"{P}/default-iops": "123"})
    for cg in cgroups:
        await cluster.wait_kernel(cg, IOLimits(123, 123), timeout=1.0)
    annotate_namespace(cluster, "live", {f"{P}/default-iops": None, f"{P}/max-read-iops": "50"})
    for cg in cgroups:
        await cluster.wait_kernel(cg, IOLimits(50, 500), timeout=1.0)


async def test_bad_namespace_annotation_keeps_the_last_good_policy(
    cluster: Cluster, start_agent: Any
) -> None:
    namespace(cluster, "shaky", {f"{P}/max-iops": "300"})
    pod = cluster.add_pod("p", namespace="shaky", annotations={f"{P}/iops": "900"})
    await start_agent(RESYNC_INTERVAL="0.2")
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(300, 300))
    annotate_namespace(cluster, "shaky", {f"{P}/max-iops": "lots"})
    await trio.sleep(0.6)
    assert cluster.kernel(cg) == IOLimits(300, 300)
    [warning] = await cluster.wait_events("InvalidIOPolicy", 1)
    assert warning["involvedObject"]["kind"] == "Namespace"
    assert warning["involvedObject"]["name"] == "shaky"
    assert "lots" in warning["message"]


async def test_allowed_namespace_may_ask_for_unlimited(cluster: Cluster, start_agent: Any) -> None:
    batch = cluster.add_pod("job", namespace="batch", annotations={f"{P}/iops": "0"})
    web = cluster.add_pod("web", namespace="web", annotations={f"{P}/iops": "0"})
    await start_agent(
        LIMIT_CEILING_READ_IOPS="1000",
        LIMIT_CEILING_WRITE_IOPS="1000",
        ALLOW_UNLIMITED_NAMESPACES="batch",
    )
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(batch)[0]), IOLimits(0, 0))
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(web)[0]), IOLimits(1000, 1000))
