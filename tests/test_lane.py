"""Checks that the test lane named by DISKGUARD_LANE is what it claims to be.

host: this machine's own kernel, whichever IO hierarchy it has (cgroup v1 blkio on the development
machines). v1: a host that must have the cgroup v1 blkio controller. v2: the qemu guest of
tests/vm/run-v2-lane.sh, cgroup v2 only with the io controller enabled at the root, tracefs mounted
and a virtio data disk in DISKGUARD_VM_DISK. Every lane promises root, tracefs, working loop devices
and a loopback interface that is up. The kernel is asked and read back; nothing here trusts that a
file was merely written.
"""

from __future__ import annotations

import mmap
import os
import platform
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

LANE = os.environ.get("DISKGUARD_LANE")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        LANE is None, reason="DISKGUARD_LANE is not set: not running in a test lane"
    ),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
LOOP_MAJOR = 7
LANES = ("host", "v1", "v2")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of every mount, from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, super_opts = right.split(" ", 2)
        out.append((left.split(" ")[4], fstype, super_opts))
    return out


def _dev_numbers(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _direct_write(dev: str, blocks: int) -> None:
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT wants
    buf.write(b"d" * 4096)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        for i in range(blocks):
            os.pwrite(fd, buf, i * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if shutil.which("losetup") is None:
        pytest.fail("losetup (util-linux) is missing from the lane")
    backing = tmp_path / "loop.img"
    with backing.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def _io_hierarchy() -> tuple[str, Path]:
    """("v1", blkio mount) or ("v2", cgroup2 mount with io): the lane's IO controller."""
    mounts = _mounts()
    if LANE in ("host", "v1"):
        blkio = [m for m, t, opts in mounts if t == "cgroup" and "blkio" in opts.split(",")]
        if blkio:
            return "v1", Path(blkio[0])
        assert LANE == "host", "no cgroup v1 blkio hierarchy on the v1 lane"
    for mount, fstype, _ in mounts:
        if fstype == "cgroup2" and "io" in (Path(mount) / "cgroup.controllers").read_text().split():
            return "v2", Path(mount)
    pytest.fail(f"lane {LANE}: neither a v1 blkio nor a v2 io hierarchy is mounted")


@pytest.fixture
def own_cgroup_dir() -> Iterator[tuple[str, Path]]:
    """A uniquely named child cgroup in the lane's IO hierarchy, removed afterwards."""
    version, parent = _io_hierarchy()
    path = parent / f"diskguard-lane-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield version, path
    finally:
        path.rmdir()


def test_lane_name_is_known_and_root() -> None:
    assert LANE in LANES, f"DISKGUARD_LANE={LANE!r}; expected one of {LANES}"
    assert os.geteuid() == 0, "the lanes run as root"


def test_cgroup_hierarchy_matches_lane() -> None:
    mounts = _mounts()
    if LANE == "v2":
        assert (str(CGROUP_ROOT), "cgroup2") in [(m, t) for m, t, _ in mounts]
        assert not [m for m, t, _ in mounts if t == "cgroup"], "v1 hierarchies on the v2 lane"
        assert "io" in (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        assert "io" in (CGROUP_ROOT / "cgroup.subtree_control").read_text().split()
    elif LANE == "v1":
        blkio = [m for m, t, opts in mounts if t == "cgroup" and "blkio" in opts.split(",")]
        assert blkio == [str(CGROUP_ROOT / "blkio")], f"blkio hierarchies: {blkio}"
    else:
        _io_hierarchy()  # fails the test when the host has no IO controller at all


def test_io_limit_reads_back(own_cgroup_dir: tuple[str, Path], loop_device: str) -> None:
    version, cgroup = own_cgroup_dir
    major, minor = _dev_numbers(loop_device)
    if version == "v2":
        (cgroup / "io.max").write_text(f"{major}:{minor} wiops=100\n")
        assert (
            f"{major}:{minor} rbps=max wbps=max riops=max wiops=100"
            in (cgroup / "io.max").read_text().splitlines()
        )
    else:
        rules = cgroup / "blkio.throttle.write_iops_device"
        rules.write_text(f"{major}:{minor} 100\n")
        assert f"{major}:{minor} 100" in rules.read_text().splitlines()


def test_loop_device_takes_io(loop_device: str) -> None:
    major, minor = _dev_numbers(loop_device)
    assert major == LOOP_MAJOR
    sysfs = Path(f"/sys/dev/block/{major}:{minor}")
    assert int((sysfs / "size").read_text()) == 16 * 1024 * 1024 // 512
    before = int((sysfs / "stat").read_text().split()[4])  # write IOs completed
    _direct_write(loop_device, 8)
    assert int((sysfs / "stat").read_text().split()[4]) - before >= 8


def test_tracefs_is_available() -> None:
    tracing = [m for m, t, _ in _mounts() if t == "tracefs"]
    if not tracing and LANE != "v2":
        # Host lanes leave mounting to whoever needs it (the sampler mounts it itself).
        assert "tracefs" in Path("/proc/filesystems").read_text().split()
        pytest.skip("tracefs is available but not mounted on this host lane")
    assert tracing, "tracefs is not mounted on the v2 lane"
    fmt = Path(tracing[0]) / "events/block/block_rq_issue/format"
    assert "field:" in fmt.read_text()


def test_loopback_is_up() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


@pytest.mark.skipif(LANE != "v2", reason="the data disk is a v2-lane (qemu) promise")
def test_vm_data_disk_is_a_real_whole_disk() -> None:
    disk = os.environ.get("DISKGUARD_VM_DISK")
    assert disk, "DISKGUARD_VM_DISK is not set on the v2 lane"
    major, minor = _dev_numbers(disk)
    assert major != LOOP_MAJOR
    sysfs = Path(f"/sys/dev/block/{major}:{minor}")
    assert not (sysfs / "partition").exists(), f"{disk} is a partition"
    assert int((sysfs / "size").read_text()) > 0
    before = int((sysfs / "stat").read_text().split()[4])
    _direct_write(disk, 4)
    assert int((sysfs / "stat").read_text().split()[4]) - before >= 4


@pytest.mark.skipif(LANE != "v2", reason="only the v2 guest runs a kernel with its own headers")
def test_kernel_headers_match_running_kernel() -> None:
    build = Path("/lib/modules") / platform.release() / "build"
    assert (build / "include/generated/autoconf.h").is_file(), f"no headers behind {build}"
    assert (build / "Makefile").is_file()


@pytest.mark.bpf
@pytest.mark.slow
@pytest.mark.skipif(LANE != "v2", reason="only the v2 guest runs a kernel with its own headers")
def test_bcc_compiles_and_sees_block_io(loop_device: str) -> None:
    bcc = pytest.importorskip("bcc")
    major, minor = _dev_numbers(loop_device)
    prog = bcc.BPF(
        text="""
        BPF_ARRAY(issued, u64, 1);
        TRACEPOINT_PROBE(block, block_rq_issue) {
            if (args->dev != DEV) return 0;
            int zero = 0;
            u64 *n = issued.lookup(&zero);
            if (n) __sync_fetch_and_add(n, 1);
            return 0;
        }
        """,
        cflags=[f"-DDEV={(major << 20) | minor}"],
    )
    try:
        _direct_write(loop_device, 16)
        assert prog["issued"][0].value >= 16
    finally:
        prog.cleanup()
