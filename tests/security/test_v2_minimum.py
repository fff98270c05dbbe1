"""cgroup v2: io.max refuses a limit of 1 (EINVAL), and one bad field used to make the
kernel refuse the whole line, leaving a fresh container with no limit at all. The plan
raises 1 to 2 (with a Warning Event), every other field holds, and the read-back matches
the plan so a resync rewrites nothing."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from diskguard.model import IOLimits

from .conftest import Cluster, P, scaled

pytestmark = [pytest.mark.kernel, pytest.mark.v2]

MiB = 1 << 20


async def test_a_requested_one_becomes_two_and_the_rest_holds(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod(
        "tiny",
        annotations={f"{P}/write-iops": "1", f"{P}/read-iops": "300", f"{P}/read-bps": "1"},
    )
    # A resync every second, so the test sees several pass over the pod.
    running = await start_agent(CONTAINER_WRITE_BPS_LIMIT="8Mi", RESYNC_INTERVAL="1")
    cg = cluster.cgroup(cluster.refs(pod)[0])
    want = IOLimits(riops=300, wiops=2, rbps=2, wbps=8 * MiB)
    await cluster.wait_kernel(cg, want)
    [event] = await cluster.wait_events("IOLimitRaised", 1)
    assert event["type"] == "Warning"
    assert "rbps=2, wiops=2" in event["message"], event["message"]

    # Resyncs find nothing to change: the plan already says what the kernel reads back.
    reconciler = running.agent.reconciler
    changed = reconciler.outcomes["changed"]
    passes = reconciler.reconciles
    with trio.fail_after(scaled(10)):
        while reconciler.reconciles < passes + 2:
            await trio.sleep(0.05)
    assert reconciler.outcomes["changed"] == changed
    assert reconciler.outcomes["error"] == 0
    assert cluster.kernel(cg) == want
    assert len(cluster.events("IOLimitRaised")) == 1
