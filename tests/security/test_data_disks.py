"""The broken node: the data disk is mounted after the agent started (the boot race), or
replaced by another disk while it runs. Limits must land on the disk that is mounted at
DATA_MOUNT now, never on the root disk below an empty directory, and move with it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from diskguard.agent.run import Agent
from diskguard.config import load_config
from diskguard.kube.client import make_api_client
from diskguard.model import UNLIMITED, Device, IOLimits
from diskguard.node.datadisks import resolve
from diskguard.node.devices import DeviceError, parse_mountinfo, whole_disk
from diskguard.node.setup import NodeSetup

from .conftest import Cluster, P, http_get, scaled, wait_until

pytestmark = pytest.mark.kernel


def _key(device: Device) -> tuple[int, int]:
    return (device.major, device.minor)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory to serve as DATA_MOUNT; whatever a test mounts on it is
    unmounted at the end."""
    path = tmp_path / "data"
    path.mkdir()
    yield path
    # The mount table, not os.path.ismount: a bind of a directory of the same filesystem
    # is a mount that ismount (st_dev) does not see.
    while _mounted_at(path):
        subprocess.run(["umount", "-l", str(path)], check=True)


def _mounted_at(path: Path) -> bool:
    entries = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return any(e.mount_point == str(path) for e in entries)


def bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


@pytest.fixture
async def launch(cluster: Cluster) -> AsyncIterator[Callable[..., Any]]:
    """Start the agent the way `diskguard run` does: the data disks resolved from the
    node's mount table at start-up (not handed in)."""
    async with trio.open_nursery() as nursery:

        async def start(**env: str) -> Agent:
            full = cluster.env(**env)
            config = load_config(full)
            found = resolve(config.data_mounts, allow_unmounted=config.data_mount_allow_unmounted)
            agent = Agent(
                config,
                NodeSetup(cluster.hierarchy, found.devices, found.problem),
                make_api_client(full),
            )
            await nursery.start(agent.run)
            with trio.fail_after(scaled(10) + 10):
                await agent.reconciler.synced.wait()
            return agent

        yield start
        nursery.cancel_scope.cancel()


def _root_disk() -> Device | None:
    st = os.stat("/")
    try:
        return whole_disk(os.major(st.st_dev), os.minor(st.st_dev))
    except DeviceError:
        return None


async def test_late_data_mount_is_not_ready_until_the_disk_arrives(
    cluster: Cluster, launch: Any, data_dir: Path
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    agent = await launch(DATA_MOUNT=str(data_dir))
    base = agent.http_binds[0]

    ready = await http_get(base, "/readyz")
    assert ready.status_code == 503
    assert "is not a mount point" in ready.text and str(data_dir) in ready.text
    status = (await http_get(base, "/status")).json()
    assert "not a mount point" in status["data_disks"]["problem"]
    assert status["devices"] == []
    # Nothing was limited on the disk below the empty directory (the old boot-race bug).
    held = cluster.backend.read(cg)
    root = _root_disk()
    if root is not None:
        assert held.get(_key(root), UNLIMITED) == UNLIMITED
    assert held.get(_key(cluster.device), UNLIMITED) == UNLIMITED

    bind(cluster.mount, data_dir)  # the disk arrives
    await cluster.wait_kernel(cg, IOLimits(100, 100), timeout=scaled(5))
    await wait_until(agent.ready, scaled(5), "ready once the data disk is mounted")
    assert (await http_get(base, "/readyz")).status_code == 200
    status = (await http_get(base, "/status")).json()
    assert status["devices"] == [{"device": str(cluster.device), "name": cluster.device.name}]
    assert agent.data_disks.problem == ""


async def test_a_bind_of_a_plain_directory_is_not_a_data_disk(
    cluster: Cluster, launch: Any, data_dir: Path, tmp_path: Path
) -> None:
    """What the DaemonSet's hostPath volume looks like while the host's /data is empty:
    a mount point in the agent's mount table, showing a subdirectory of the root disk."""
    plain = tmp_path / "host-data"
    plain.mkdir()
    bind(plain, data_dir)
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    agent = await launch(DATA_MOUNT=str(data_dir))
    assert "is not a mount point" in agent.readiness_problem()
    assert agent.applier.devices == ()
    bind(cluster.mount, data_dir)  # the host mounts the disk; it propagates on top
    await cluster.wait_kernel(cg, IOLimits(100, 100), timeout=scaled(5))
    await wait_until(agent.ready, scaled(5), "ready once the data disk is mounted")


async def test_allow_unmounted_takes_the_disk_below_a_plain_directory(
    cluster: Cluster, launch: Any
) -> None:
    """Single-disk nodes: DATA_MOUNT_ALLOW_UNMOUNTED=true limits the disk the directory is
    on (a directory on the loop disk's filesystem, not itself a mount point)."""
    plain = cluster.mount / "plain"
    plain.mkdir()
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "120"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    agent = await launch(DATA_MOUNT=str(plain), DATA_MOUNT_ALLOW_UNMOUNTED="true")
    await cluster.wait_kernel(cg, IOLimits(120, 120), timeout=scaled(5))
    assert agent.ready()


async def test_a_new_disk_at_the_data_mount_takes_the_limits_from_the_old(
    cluster: Cluster, launch: Any, data_dir: Path, make_loop_disk: Any
) -> None:
    old = cluster.device
    bind(cluster.mount, data_dir)
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    # Someone else's rule on the old disk, on a cgroup diskguard does not manage: stays.
    other = cluster.kubelet.leaf("someone-elses")
    cluster.backend.write(other, old, IOLimits(riops=77))
    agent = await launch(DATA_MOUNT=str(data_dir), RESYNC_INTERVAL="600")
    await cluster.wait_kernel(cg, IOLimits(100, 100))

    new = make_loop_disk()
    await trio.to_thread.run_sync(lambda: subprocess.run(["umount", str(data_dir)], check=True))
    bind(new.mount, data_dir)

    def moved() -> bool:
        held = cluster.backend.read(cg)
        return (
            held.get(_key(new.device), UNLIMITED) == IOLimits(100, 100)
            and held.get(_key(old), UNLIMITED) == UNLIMITED
        )

    # Far below the resync interval: the mount-table change itself moved the limits.
    await wait_until(moved, scaled(5), "limits on the new disk, cleared on the old")
    assert cluster.backend.read(other)[_key(old)] == IOLimits(riops=77)
    assert agent.ready()
    assert [d for d in agent.applier.devices] == [new.device]
    assert agent.data_disks.changes >= 1
    cluster.backend.write(other, old, UNLIMITED)
