"""Shared pytest fixtures for tests against the real kernel: cgroups, loop disks, fio.

Registered from tests/conftest.py. Everything a fixture creates is uniquely named, owned
by the test, and removed at teardown even when the test fails; nothing pre-existing is
touched, with one exception on cgroup v2: the hierarchy root gets `+io` in its
cgroup.subtree_control if it lacks it (a v2 test lane's own VM; kubelet hosts have it).

Markers (declared in pyproject.toml) become skips with a stated reason:
  kernel -> needs root;  v1 -> needs the cgroup v1 blkio controller;
  v2 -> needs the cgroup v2 io controller.
Set DISKGUARD_TEST_CGROUP_ROOT to use a cgroup mount other than /sys/fs/cgroup, and
DISKGUARD_TEST_SCRATCH_DISK (default: the qemu lane's DISKGUARD_VM_DISK) to a scratch block
device whose space past its first GiB loop disks may use (see ScratchDisk).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from diskguard.model import CgroupDriver, CgroupVersion, ContainerRef, Device, QoSClass, Runtime
from diskguard.node.cgroups import (
    CgroupError,
    CgroupHierarchy,
    detect_cgroup,
)
from diskguard.node.devices import whole_disk

# Re-exported for the test modules that import them from here.
from diskguard.testing.lab import (
    FioResult,
    KubeletRoot,
    LoopDisk,
    ScratchDisk,
    prepare_fio_file,
    remove_cgroup_tree,
    run_fio,
    spawn_in_cgroup,
)
from diskguard.testing.lab import loop_disk as lab_loop_disk

CGROUP_ROOT = os.environ.get("DISKGUARD_TEST_CGROUP_ROOT", "/sys/fs/cgroup")

SKIP_V1 = "needs cgroup v1 blkio controller"
SKIP_V2 = "needs cgroup v2 io controller"
SKIP_ROOT = "needs root"

__all__ = [
    "FioResult",
    "KubeletRoot",
    "LoopDisk",
    "ScratchDisk",
    "prepare_fio_file",
    "remove_cgroup_tree",
]

_LANE_KEY = pytest.StashKey[CgroupHierarchy | str]()


def _lane(config: pytest.Config) -> CgroupHierarchy | str:
    """The detected IO hierarchy, or why there is none (cached per session)."""
    if _LANE_KEY not in config.stash:
        lane: CgroupHierarchy | str
        if os.geteuid() != 0:
            lane = SKIP_ROOT
        else:
            try:
                lane = detect_cgroup(CGROUP_ROOT, None)
            except CgroupError as exc:
                lane = f"needs a cgroup IO hierarchy: {exc}"
        config.stash[_LANE_KEY] = lane
    return config.stash[_LANE_KEY]


def pytest_runtest_setup(item: pytest.Item) -> None:
    markers = {m.name for m in item.iter_markers()}
    if not markers & {"kernel", "v1", "v2"}:
        return
    if "host_only" in markers and os.environ.get("DISKGUARD_LANE") == "v2":
        pytest.skip("host lane only: its timing means nothing under emulation")
    if os.geteuid() != 0:
        pytest.skip(SKIP_ROOT)
    lane = _lane(item.config)
    if "v1" in markers and not (
        isinstance(lane, CgroupHierarchy) and lane.version is CgroupVersion.V1
    ):
        pytest.skip(SKIP_V1)
    if "v2" in markers and not (
        isinstance(lane, CgroupHierarchy) and lane.version is CgroupVersion.V2
    ):
        pytest.skip(SKIP_V2)


# ---------------------------------------------------------------- privileges, hierarchy


@pytest.fixture(scope="session")
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(SKIP_ROOT)


def _enable_io(cgroup_dir: Path) -> None:
    """Enable the io controller for cgroup_dir's children (v2 only)."""
    control = cgroup_dir / "cgroup.subtree_control"
    if "io" not in control.read_text().split():
        control.write_text("+io")


@pytest.fixture(scope="session")
def cgroup_hierarchy(request: pytest.FixtureRequest, require_root: None) -> CgroupHierarchy:
    """The hierarchy holding IO limits in this lane (blkio on v1, the unified tree on v2)."""
    lane = _lane(request.config)
    if isinstance(lane, str):
        pytest.skip(lane)
    if lane.version is CgroupVersion.V2:
        _enable_io(lane.path)
    return lane


# ---------------------------------------------------------------- processes in cgroups


@attrs.define
class Spawned:
    """Processes started by a test, killed and reaped at teardown."""

    procs: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    tracker = Spawned()
    try:
        yield tracker
    finally:
        tracker.kill_all()


RunInCgroup = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def run_in_cgroup(spawned: Spawned) -> RunInCgroup:
    """`run_in_cgroup(cgroup_dir, argv, **popen_kwargs) -> Popen`, already inside the cgroup."""

    def run(cgroup_dir: Path, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = spawn_in_cgroup(cgroup_dir, argv, **kwargs)
        spawned.procs.append(proc)
        return proc

    return run


# ---------------------------------------------------------------- kubelet layout


@pytest.fixture
def kubelet_root(cgroup_hierarchy: CgroupHierarchy, spawned: Spawned) -> Iterator[KubeletRoot]:
    root = KubeletRoot(cgroup_hierarchy, f"dgtest_{uuid.uuid4().hex[:12]}")
    try:
        yield root
    finally:
        spawned.kill_all()
        root.cleanup()


def make_container_ref(
    *,
    runtime: Runtime = Runtime.CONTAINERD,
    qos: QoSClass = QoSClass.BURSTABLE,
    pod_uid: str | None = None,
    container_id: str | None = None,
) -> ContainerRef:
    """A ContainerRef with fresh, valid, unique IDs."""
    return ContainerRef(
        namespace="dgtest",
        pod="pod",
        pod_uid=pod_uid or str(uuid.uuid4()),
        container="app",
        container_id=container_id or (uuid.uuid4().hex + uuid.uuid4().hex),
        runtime=runtime,
        qos=qos,
    )


@pytest.fixture
def new_container_ref() -> Callable[..., ContainerRef]:
    """`new_container_ref(runtime=, qos=, pod_uid=, container_id=)`: fresh valid IDs."""
    return make_container_ref


@pytest.fixture
def container_cgroup(kubelet_root: KubeletRoot) -> Path:
    """A Burstable containerd container's cgroup (cgroupfs layout) under kubelet_root."""
    return kubelet_root.create(make_container_ref(), CgroupDriver.CGROUPFS)


# ---------------------------------------------------------------- loop disks


@contextlib.contextmanager
def loop_disk_ctx(workdir: Path, **kwargs: Any) -> Iterator[LoopDisk]:
    """`diskguard.testing.lab.loop_disk`, skipping the test where the tools are missing."""
    if shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs losetup and mkfs.ext4")
    with lab_loop_disk(workdir, **kwargs) as disk:
        yield disk


@pytest.fixture(scope="session")
def scratch_disk(require_root: None) -> ScratchDisk | None:
    """The lane's scratch disk for loop disks (DISKGUARD_TEST_SCRATCH_DISK, else the qemu
    lane's DISKGUARD_VM_DISK), or None: loop disks then use sparse files in tmp_path."""
    return ScratchDisk.from_env()


@pytest.fixture
def loop_disk(
    scratch_disk: ScratchDisk | None, tmp_path: Path, spawned: Spawned
) -> Iterator[LoopDisk]:
    """A 256 MiB loop disk with ext4 mounted at `.mount`."""
    with loop_disk_ctx(tmp_path / "loopdisk", scratch=scratch_disk) as disk:
        try:
            yield disk
        finally:
            # Nothing we started may still hold the mount when it is unmounted.
            spawned.kill_all()


@pytest.fixture
def make_loop_disk(
    scratch_disk: ScratchDisk | None, tmp_path: Path, spawned: Spawned
) -> Iterator[Callable[..., LoopDisk]]:
    """Factory: `make_loop_disk(size_mib=, filesystem=, partition=, mount_name=)`."""
    with contextlib.ExitStack() as stack:
        stack.callback(spawned.kill_all)
        count = 0

        def make(**kwargs: object) -> LoopDisk:
            nonlocal count
            count += 1
            workdir = tmp_path / f"loopdisk{count}"
            return stack.enter_context(loop_disk_ctx(workdir, scratch=scratch_disk, **kwargs))

        yield make


@pytest.fixture(scope="session")
def root_disk() -> Device:
    """The whole disk holding `/`, or a skip when `/` is not on a block device."""
    dev = os.stat("/").st_dev
    if os.major(dev) == 0:
        pytest.skip("/ is not on a block device here")
    return whole_disk(os.major(dev), os.minor(dev))


# ---------------------------------------------------------------- fio


FioIops = Callable[..., FioResult]


@pytest.fixture
def fio_iops(run_in_cgroup: RunInCgroup) -> FioIops:
    """`fio_iops(cgroup_dir, directory, rw="randwrite", bs="4k", runtime=3, ...)`: lab's
    `run_fio` (one synchronous IO at a time unless asked), started through run_in_cgroup so
    teardown kills it whatever happens."""
    if shutil.which("fio") is None:
        pytest.skip("needs fio")
    return functools.partial(run_fio, spawn=run_in_cgroup, ioengine="psync", iodepth=1)
