"""`diskguard profile` on a real loop disk: figures near fio's own, recorded by the disk's
identity; a busy disk or one without room is refused and nothing is left behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from diskguard.model import Device
from diskguard.node.capacity import read_capacity
from diskguard.node.profiling import busy, disk_stat
from diskguard.node.state import StateDir
from diskguard.testing.lab import run_fio, start_load
from diskguard.tools.profile import ProfileOptions, profile_paths

# Host only: the figures compare two fio runs, which under emulation measure the emulator.
pytestmark = [pytest.mark.kernel, pytest.mark.host_only]

MiB = 2**20
SMALL = ProfileOptions(size=64 * MiB, seconds=2, numjobs=1, settle=0.5)


def _leftovers(mount: Path) -> list[Path]:
    return list(mount.glob(".diskguard-profile-*"))


def _wait_quiet(device: Device, timeout: float = 60.0) -> None:
    """A fresh ext4 zeroes its inode tables in the background (ext4lazyinit) for a while
    after mount: profile would rightly call that disk busy."""
    deadline = time.monotonic() + timeout
    before = disk_stat(device)
    while True:
        time.sleep(1.0)
        after = disk_stat(device)
        if not busy(before, after, 1.0):
            return
        assert time.monotonic() < deadline, "the fresh loop disk never went quiet"
        before = after


def test_profile_measures_near_fio_and_records_by_identity(
    make_loop_disk: Any, container_cgroup: Path, tmp_path: Path
) -> None:
    disk = make_loop_disk(size_mib=256)
    _wait_quiet(disk.device)
    state = StateDir(tmp_path / "state")
    said: list[str] = []
    [result] = profile_paths([str(disk.mount)], SMALL, state, said.append)
    assert result.error == "" and result.capacity is not None, result
    assert result.device == disk.device
    assert result.identity == f"loop:{disk.backing}"
    assert read_capacity(state) == {result.identity: result.capacity}
    assert len(said) == 8 and "randread-4k" in said[0]  # progress: each job, then its figure
    assert not _leftovers(disk.mount)
    # fio's own measurement of the same shape, from an unlimited container cgroup.
    fio = run_fio(container_cgroup, disk.mount, "randread", "4k", 2, ioengine="libaio", iodepth=32)
    ratio = result.capacity.read_iops / fio.read_iops
    assert 1 / 3 < ratio < 3, (result.capacity.read_iops, fio.read_iops)


def test_a_busy_disk_is_refused_before_anything_is_written(
    make_loop_disk: Any, container_cgroup: Path, tmp_path: Path
) -> None:
    disk = make_loop_disk(size_mib=256)
    load = start_load(container_cgroup, disk.mount)
    try:
        # Started is not writing yet: wait until the disk counts the load's IO.
        start = disk_stat(disk.device).wios
        deadline = time.monotonic() + 60
        while disk_stat(disk.device).wios < start + 200:
            assert time.monotonic() < deadline, "the load never reached the disk"
            time.sleep(0.05)
        state = StateDir(tmp_path / "state")
        [result] = profile_paths([str(disk.mount)], SMALL, state, lambda _: None)
    finally:
        load.kill()
        load.wait()
    assert result.capacity is None
    assert "is busy: other IO is running on it" in result.error
    assert "--force" in result.error
    assert not _leftovers(disk.mount) and read_capacity(state) == {}


def test_a_disk_without_room_for_the_test_file_is_refused(
    make_loop_disk: Any, tmp_path: Path
) -> None:
    disk = make_loop_disk(size_mib=64)
    state = StateDir(tmp_path / "state")
    options = ProfileOptions(size=128 * MiB, seconds=1, numjobs=1, settle=0.1)
    [result] = profile_paths([str(disk.mount)], options, state, lambda _: None)
    assert result.capacity is None and "must stay free" in result.error
    assert not _leftovers(disk.mount) and read_capacity(state) == {}
