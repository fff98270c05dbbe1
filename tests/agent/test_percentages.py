"""Limits as percentages of the data disk's capacity, on real cgroups: the capacity comes
from the record `diskguard profile` writes (rewritten here directly, as it would be) or is
declared; a percentage nothing can resolve is an InvalidIOLimit Event."""

from __future__ import annotations

from typing import Any

import pytest

from diskguard.model import IOLimits
from diskguard.node.capacity import DiskCapacity, disk_identity, record_capacity
from diskguard.node.state import StateDir

from .conftest import Cluster, P

pytestmark = pytest.mark.kernel


def record(cluster: Cluster, write_iops: int) -> None:
    assert cluster.state_dir is not None
    identity = disk_identity(cluster.device)
    assert identity is not None
    record_capacity(
        StateDir(cluster.state_dir), identity, DiskCapacity(4000, write_iops, 2**30, 2**30)
    )


async def test_a_percentage_follows_the_recorded_capacity(
    cluster: Cluster, start_agent: Any
) -> None:
    record(cluster, 800)
    pod = cluster.add_pod("quarter", annotations={f"{P}/write-iops": "25%"})
    await start_agent()
    cg = cluster.cgroup(cluster.refs(pod)[0])
    await cluster.wait_kernel(cg, IOLimits(500, 200), timeout=5)
    # `diskguard profile` measured the disk again: the agent reads the record every 5 s.
    record(cluster, 400)
    await cluster.wait_kernel(cg, IOLimits(500, 100), timeout=15)
    assert not cluster.events("InvalidIOLimit")


async def test_a_declared_capacity_resolves_an_env_percentage(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("plain")
    await start_agent(SMART_LIMIT_DEVICE_IOPS="1000", CONTAINER_WRITE_IOPS_LIMIT="10%")
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 100), timeout=5)


async def test_a_percentage_without_a_capacity_is_an_invalid_io_limit(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("blind", annotations={f"{P}/write-iops": "25%"})
    await start_agent()
    # Nothing held before: the write limit stays the env default, as for any bad value.
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 500), timeout=5)
    [event] = await cluster.wait_events("InvalidIOLimit", 1)
    assert event["involvedObject"]["name"] == "blind"
    assert event["type"] == "Warning"
    message = event["message"]
    assert f"annotation {P}/write-iops='25%' ignored" in message
    assert "IOPS capacity of" in message and "is not known" in message
    assert "run `diskguard profile` on the node, or declare SMART_LIMIT_DEVICE_IOPS" in message
