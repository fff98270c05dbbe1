"""Data-path → whole-disk resolution, against real mounts, loop disks and partitions."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskguard.model import Device
from diskguard.node.devices import (
    DeviceError,
    MountEntry,
    find_mount,
    parse_mountinfo,
    resolve_data_devices,
    whole_disk,
)

LOOP_MAJOR = 7


# ---------------------------------------------------------------- pure: mountinfo parsing

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 27 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 27 7:3 / /var/lib/with\\040space rw,relatime shared:5 master:1 - ext4 /dev/loop3 rw
41 27 7:4 / /data rw - ext4 /dev/loop4 rw
42 41 7:5 / /data/deep rw - ext4 /dev/loop5 rw
43 41 7:6 / /data rw - xfs /dev/loop6 rw
44 27 0:50 / /srv rw - btrfs /dev/loop7 rw
"""


def test_parse_mountinfo_decodes_escapes_and_optional_fields() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    spaced = entries[2]
    assert spaced.mount_point == "/var/lib/with space"
    assert (spaced.major, spaced.minor, spaced.fstype, spaced.source) == (
        7,
        3,
        "ext4",
        "/dev/loop3",
    )
    assert [e.mount_id for e in entries] == [27, 31, 40, 41, 42, 43, 44]


def test_parse_mountinfo_rejects_garbage_with_line_number() -> None:
    with pytest.raises(DeviceError, match="line 2"):
        parse_mountinfo("27 1 254:0 / / rw - ext4 /dev/vda rw\nnot a mountinfo line\n")


@pytest.mark.parametrize(
    ("path", "mount_id"),
    [
        ("/", 27),
        ("/etc/hostname", 27),
        ("/var/lib/with space/x", 40),
        ("/var/lib/with spacey", 27),  # a prefix of the string but not of the path
        ("/data/file", 43),  # the later mount stacked on /data wins
        # /data/deep lives on the mount that 43 now covers: hidden, as path lookup sees it
        ("/data/deep/file", 43),
        ("/srv/a", 44),
    ],
)
def test_find_mount_walks_like_path_lookup(path: str, mount_id: int) -> None:
    found = find_mount(parse_mountinfo(MOUNTINFO), path)
    assert found is not None and found.mount_id == mount_id


def test_find_mount_falls_back_to_longest_prefix_when_tree_is_disconnected() -> None:
    entries = (
        MountEntry(5, 99, 7, 1, "/a", "ext4", "/dev/loop1"),
        MountEntry(6, 98, 7, 2, "/a/b", "ext4", "/dev/loop2"),
        MountEntry(7, 97, 7, 3, "/a/b", "ext4", "/dev/loop3"),
    )
    assert find_mount(entries, "/a/b/c") == entries[2]
    assert find_mount(entries, "/a/x") == entries[0]
    assert find_mount(entries, "/z") is None


# ---------------------------------------------------------------- real kernel


def _findmnt(path: str, column: str) -> str:
    return subprocess.run(
        ["findmnt", "--noheadings", "--first-only", "--output", column, "--target", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _findmnt_majmin(path: str) -> tuple[int, int]:
    major, minor = _findmnt(path, "MAJ:MIN").split(":")
    return int(major), int(minor)


@pytest.mark.kernel
def test_loop_ext4_mount_resolves_to_the_loop_disk(loop_disk) -> None:
    assert loop_disk.mount is not None
    sub = loop_disk.mount / "sub" / "dir"
    sub.mkdir(parents=True)
    devices = resolve_data_devices([str(sub)])
    assert devices == (loop_disk.device,)
    assert devices[0].major == LOOP_MAJOR
    assert devices[0].name == loop_disk.node.name
    # Independent witness: the kernel's own device number for the mount.
    assert _findmnt_majmin(str(sub)) == (loop_disk.device.major, loop_disk.device.minor)


@pytest.mark.kernel
def test_symlink_into_a_mount_resolves_to_its_disk(loop_disk, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(loop_disk.mount)
    assert resolve_data_devices([str(link)]) == (loop_disk.device,)


@pytest.mark.kernel
def test_mount_point_with_a_space_is_unescaped(make_loop_disk) -> None:
    disk = make_loop_disk(size_mib=64, mount_name="mount with space")
    assert " " in str(disk.mount)
    assert resolve_data_devices([str(disk.mount / ".")]) == (disk.device,)


@pytest.mark.kernel
def test_partition_resolves_to_its_parent_disk(make_loop_disk) -> None:
    disk = make_loop_disk(size_mib=64, partition=True)
    assert disk.partition is not None
    # The filesystem really sits on the partition, a different device from the disk.
    assert _findmnt_majmin(str(disk.mount)) == (disk.partition.major, disk.partition.minor)
    assert disk.partition != disk.device
    assert Path(f"/sys/dev/block/{disk.partition}/partition").exists()
    assert resolve_data_devices([str(disk.mount)]) == (disk.device,)
    assert whole_disk(disk.partition.major, disk.partition.minor) == disk.device


@pytest.fixture
def own_tmpfs(require_root: None, tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "dgtest", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.kernel
def test_tmpfs_has_no_block_device(own_tmpfs: Path) -> None:
    with pytest.raises(DeviceError, match=r"is on tmpfs.*which has no block device") as err:
        resolve_data_devices([str(own_tmpfs)])
    assert str(own_tmpfs) in str(err.value)


def test_nonexistent_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(DeviceError, match="does not exist") as err:
        resolve_data_devices([str(missing)])
    assert str(missing) in str(err.value)


def test_unreadable_mountinfo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="cannot read"):
        resolve_data_devices(["/"], mountinfo=str(tmp_path / "nope"))


@pytest.mark.kernel
def test_anonymous_device_uses_a_block_device_mount_source(loop_disk, tmp_path: Path) -> None:
    # btrfs shows an anonymous 0:N in mountinfo and names the real disk as the source.
    # No btrfs here, so describe the loop mount that way and let sysfs do the rest.
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"1 0 0:1 / / rw - rootfs rootfs rw\n"
        f"2 1 0:77 / {loop_disk.mount} rw - btrfs {loop_disk.node} rw\n"
    )
    assert resolve_data_devices([str(loop_disk.mount)], mountinfo=str(mountinfo)) == (
        loop_disk.device,
    )
    mountinfo.write_text(
        f"1 0 0:1 / / rw - rootfs rootfs rw\n2 1 0:78 / {loop_disk.mount} rw - overlay overlay rw\n"
    )
    with pytest.raises(DeviceError, match="is on overlay"):
        resolve_data_devices([str(loop_disk.mount)], mountinfo=str(mountinfo))


@pytest.mark.kernel
def test_device_missing_from_sysfs_is_an_error(loop_disk, tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("1 0 4095:1048575 / / rw - ext4 /dev/nothing rw\n")
    with pytest.raises(DeviceError, match="4095:1048575"):
        resolve_data_devices([str(loop_disk.mount)], mountinfo=str(mountinfo))


@pytest.mark.kernel
def test_root_resolves_to_the_disk_the_kernel_names(root_disk: Device) -> None:
    if shutil.which("lsblk") is None:
        pytest.skip("needs lsblk for an independent answer")
    major, minor = _findmnt_majmin("/")
    # lsblk names the parent disk of a partition (PKNAME) and nothing for a whole disk.
    out = subprocess.run(
        ["lsblk", "--nodeps", "--noheadings", "--output", "PKNAME", _findmnt("/", "SOURCE")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    expected = Device(major, minor)
    if out:
        parent = Path("/sys/class/block", out[0], "dev").read_text().strip().split(":")
        expected = Device(int(parent[0]), int(parent[1]))
    assert resolve_data_devices(["/"]) == (expected,)
    assert root_disk == expected


@pytest.mark.kernel
@pytest.mark.v1
def test_root_is_vda_on_the_dev_host(root_disk: Device) -> None:
    # The v1 dev host (KERNEL-LAB): ext4 straight on virtio /dev/vda = 254:0.
    uevent = Path("/sys/dev/block/254:0/uevent")
    if not uevent.exists() or "DEVNAME=vda" not in uevent.read_text().split():
        pytest.skip("not the dev host layout (/dev/vda = 254:0)")
    assert resolve_data_devices(["/"]) == (Device(254, 0, "vda"),)
    assert resolve_data_devices(["/"])[0].name == "vda"


@pytest.mark.kernel
def test_many_paths_dedupe_in_first_seen_order(make_loop_disk) -> None:
    a = make_loop_disk(size_mib=64)
    b = make_loop_disk(size_mib=64)
    paths = [str(b.mount), str(a.mount), str(b.mount / "."), str(a.mount)]
    assert resolve_data_devices(paths) == (b.device, a.device)
