"""`diskguard reset-all` on real cgroups: clears exactly the limits diskguard manages."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from diskguard.model import UNLIMITED, CgroupDriver, IOLimits
from diskguard.node.devices import DeviceError, whole_disk

from .conftest import Cluster, P, scaled

pytestmark = pytest.mark.kernel


def reset_all(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **cluster.env()}
    return subprocess.run(
        [sys.executable, "-m", "diskguard", "reset-all", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )


async def test_reset_all_clears_data_device_limits_of_every_container(
    cluster: Cluster, start_agent: Any
) -> None:
    a = cluster.add_pod("a", annotations={f"{P}/iops": "100"})
    b = cluster.add_pod("b", qos="BestEffort", driver=CgroupDriver.SYSTEMD)
    running = await start_agent()
    a_cg = cluster.cgroup(cluster.refs(a)[0])
    b_cg = cluster.cgroup(cluster.refs(b)[0], CgroupDriver.SYSTEMD)
    await cluster.wait_kernel(a_cg, IOLimits(100, 100))
    await cluster.wait_kernel(b_cg, IOLimits(500, 500))
    running.stop()

    # a rule on another device, and a cgroup outside kubepods: not diskguard's, left alone
    root = os.stat("/").st_dev
    try:
        other = whole_disk(os.major(root), os.minor(root))
    except DeviceError:  # / is not on a block device (the v2 lane's 9p root)
        other = cluster.device
    if (other.major, other.minor) != (cluster.device.major, cluster.device.minor):
        cluster.backend.write(a_cg, other, IOLimits(wiops=777))
    outside = cluster.kubelet.leaf("not-a-pod")
    cluster.backend.write(outside, cluster.device, IOLimits(riops=42))

    dry = reset_all(cluster, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 limit(s) would clear" in dry.stdout
    assert cluster.kernel(a_cg) == IOLimits(100, 100)  # dry run changed nothing

    done = reset_all(cluster)
    assert done.returncode == 0, done.stderr
    assert "2 limit(s) cleared" in done.stdout
    assert cluster.kernel(a_cg) == UNLIMITED
    assert cluster.kernel(b_cg) == UNLIMITED
    assert cluster.kernel(outside) == IOLimits(riops=42)
    if (other.major, other.minor) != (cluster.device.major, cluster.device.minor):
        held = cluster.backend.read(a_cg)
        assert held[(other.major, other.minor)] == IOLimits(wiops=777)
        cluster.backend.write(a_cg, other, UNLIMITED)
