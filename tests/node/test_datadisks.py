"""DATA_MOUNT re-resolution: the not-mounted check, the mount-table wait, and how a
change of disks is taken (the agent-level behaviour is in tests/security/test_data_disks)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskguard.model import Device
from diskguard.node.datadisks import DataDisks, DiskResolution, resolve, wait_for_mount_change
from diskguard.node.devices import parse_mountinfo

A, B = Device(7, 100, "loop100"), Device(7, 101, "loop101")


@pytest.mark.pure
def test_mountinfo_root_field_is_kept() -> None:
    (bind,) = parse_mountinfo("40 27 254:0 /host/with\\040space /data rw - ext4 /dev/vda rw\n")
    assert bind.root == "/host/with space" and bind.mount_point == "/data"


def _mountinfo(tmp_path: Path, device: Device, lines: list[tuple[str, str]]) -> str:
    """A mountinfo of "/" plus (root, mount point) entries, all on `device`."""
    text = f"1 0 {device} / / rw - ext4 /dev/x rw\n"
    for i, (root, point) in enumerate(lines, start=2):
        text += f"{i} 1 {device} {root} {point} rw - ext4 /dev/x rw\n"
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


@pytest.mark.kernel
def test_a_mount_of_a_filesystem_root_is_a_data_disk(loop_disk, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    info = _mountinfo(tmp_path, loop_disk.device, [("/", str(data))])
    found = resolve([str(data)], allow_unmounted=False, mountinfo=info)
    assert found == DiskResolution((loop_disk.device,), "")


@pytest.mark.kernel
@pytest.mark.parametrize("root", ["/var/lib/kubelet-data", None])
def test_a_plain_directory_or_a_bind_of_one_is_not_ready_unless_allowed(
    loop_disk, tmp_path: Path, root: str | None
) -> None:
    """None: nothing mounted there (the host's view); a root: the hostPath bind of a
    plain directory (the DaemonSet's view)."""
    data = tmp_path / "data"
    data.mkdir()
    info = _mountinfo(tmp_path, loop_disk.device, [(root, str(data))] if root else [])
    found = resolve([str(data)], allow_unmounted=False, mountinfo=info)
    assert found.devices == ()
    assert f"data path {data} is not a mount point" in found.problem
    assert "DATA_MOUNT_ALLOW_UNMOUNTED=true" in found.problem
    allowed = resolve([str(data)], allow_unmounted=True, mountinfo=info)
    assert allowed == DiskResolution((loop_disk.device,), "")


@pytest.mark.kernel
def test_a_missing_path_is_a_problem_and_the_others_still_resolve(
    loop_disk, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    info = _mountinfo(tmp_path, loop_disk.device, [("/", str(data))])
    found = resolve([str(tmp_path / "gone"), str(data)], allow_unmounted=False, mountinfo=info)
    assert found.devices == (loop_disk.device,)
    assert "does not exist" in found.problem


@pytest.fixture
def mount_point(require_root: None, tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "point"
    point.mkdir()
    yield point
    while os.path.ismount(point):
        subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.mark.kernel
def test_a_mount_after_opening_mountinfo_wakes_the_wait(mount_point: Path) -> None:
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "none", str(mount_point)], check=True)
        assert wait_for_mount_change(fd, 5.0)  # POLLPRI: pending since the open
    finally:
        os.close(fd)


async def _disks(initial: DiskResolution) -> tuple[DataDisks, list[tuple[Device, ...]]]:
    moves: list[tuple[Device, ...]] = []

    async def on_change(devices: tuple[Device, ...]) -> None:
        moves.append(devices)

    disks = DataDisks(
        ["/data"],
        allow_unmounted=False,
        resync_interval=60,
        initial=initial,
        on_change=on_change,
    )
    return disks, moves


@pytest.mark.pure
async def test_an_unmount_keeps_the_limits_where_they_were_until_a_disk_is_back() -> None:
    disks, moves = await _disks(DiskResolution((A,)))
    await disks._take(DiskResolution((), "data path /data is not a mount point"))
    assert moves == [] and disks.current.devices == (A,)
    assert "not a mount point" in disks.problem
    await disks._take(DiskResolution((B,)))
    assert moves == [(B,)] and disks.problem == "" and disks.changes == 1
    await disks._take(DiskResolution((B,)))  # a resync that finds the same: no move
    assert moves == [(B,)]


@pytest.mark.pure
async def test_a_late_disk_is_taken_when_it_arrives() -> None:
    disks, moves = await _disks(DiskResolution((), "data path /data is not a mount point"))
    await disks._take(DiskResolution((), "data path /data is not a mount point"))
    assert moves == []
    await disks._take(DiskResolution((A,)))
    assert moves == [(A,)] and disks.as_json()["devices"] == ["loop100=7:100"]
