"""The hostile tenant's values: a 5,000-digit limit (Python's int() refuses more than
4,300 digits with a plain ValueError, which used to end the agent) in every place a tenant
or namespace can write one. The real agent must refuse them with a short Warning Event,
keep the node's policy in the kernel, keep serving /metrics and /status, and keep working."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from diskguard.model import ErrorStage, IOLimits
from diskguard.testing.fakeapi.objects import make_namespace

from .conftest import Cluster, P, http_get

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]

HUGE = "1" * 5000
CEILINGS = {
    "LIMIT_CEILING_READ_IOPS": "1000",
    "LIMIT_CEILING_WRITE_IOPS": "1000",
    "LIMIT_CEILING_READ_BPS": "100Mi",
    "LIMIT_CEILING_WRITE_BPS": "100Mi",
}
DEFAULT = IOLimits(riops=500, wiops=500, rbps=100 << 20, wbps=100 << 20)
DEFAULT_BPS = (DEFAULT.rbps, DEFAULT.wbps)


async def test_five_thousand_digit_values_are_refused_and_the_agent_lives(
    cluster: Cluster, start_agent: Any
) -> None:
    cluster.api.create(
        "namespaces",
        make_namespace(
            "hostile",
            annotations={f"{P}/default-iops": HUGE, f"{P}/max-write-bps": HUGE},
        ),
    )
    pod = cluster.add_pod(
        "huge",
        namespace="hostile",
        annotations={
            f"{P}/iops": HUGE,
            f"{P}/read-bps": HUGE,
            f"{P}/write-iops": "9" * 200_000,  # near the API server's 256 KiB for all of them
            f"{P}/smart-limit": "true",
            f"{P}/auto-iops": HUGE,
            f"{P}/auto-bps": HUGE,
        },
    )
    running = await start_agent(**CEILINGS)
    cg = cluster.cgroup(cluster.refs(pod)[0])
    # Nothing good was ever seen for the pod's keys and the kernel held nothing: the node's
    # policy (env default, clamped to the env ceiling for unlimited bps) holds.
    await cluster.wait_kernel(cg, DEFAULT)

    events = await cluster.wait_events("InvalidIOLimit", 3)
    assert {e["message"].split("=")[0] for e in events} == {
        f"annotation {P}/iops",
        f"annotation {P}/read-bps",
        f"annotation {P}/write-iops",
    }
    for event in events:
        assert HUGE not in event["message"] and len(event["message"]) < 1000, event["message"]
        assert "characters" in event["message"]
    ns_events = await cluster.wait_events("InvalidIOPolicy", 2)
    assert all(len(e["message"]) < 1000 for e in ns_events)

    base = running.agent.http_binds[0]
    for path in ("/healthz", "/readyz", "/metrics", "/status"):
        response = await http_get(base, path)
        assert response.status_code == 200, (path, response.text[:500])
    status = (await http_get(base, "/status?namespace=hostile")).json()
    [container] = status["containers"]
    assert container["kernel"][str(cluster.device)]["riops"] == 500
    assert container["smart_limit"]["auto"] == {"iops": None, "bps": None}
    # Bounded before parsing, not merely contained: nothing fell back to the node policy.
    assert running.agent.reconciler.error_counts[ErrorStage.PLAN] == 0

    # The task is alive and acts on the next pod.
    after = cluster.add_pod("after", annotations={f"{P}/iops": "42"})
    after_cg = cluster.cgroup(cluster.refs(after)[0])
    await cluster.wait_kernel(after_cg, IOLimits(42, 42, *DEFAULT_BPS))
    # And on the hostile pod when it turns good.
    cluster.set_annotations("hostile", "huge", {f"{P}/iops": "77", f"{P}/write-iops": None})
    await cluster.wait_kernel(cg, IOLimits(77, 77, *DEFAULT_BPS))


async def test_a_huge_value_arriving_on_a_limited_pod_keeps_its_last_good_limit(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("edited", annotations={f"{P}/write-iops": "120"})
    running = await start_agent(**CEILINGS)
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 120, *DEFAULT_BPS))
    before = running.agent.reconciler.reconciles
    cluster.set_annotations("default", "edited", {f"{P}/write-iops": HUGE})
    with trio.fail_after(5):
        while running.agent.reconciler.reconciles == before:
            await trio.sleep(0.01)
    assert cluster.kernel(cg) == IOLimits(500, 120, *DEFAULT_BPS)
    [event] = await cluster.wait_events("InvalidIOLimit", 1)
    assert "last good value" in event["message"] and HUGE not in event["message"]
    response = await http_get(running.agent.http_binds[0], "/metrics")
    assert response.status_code == 200
