"""Which whole block devices hold the node's data paths.

IO throttling is keyed by the whole disk the block layer submits IO to (a partition's
MAJ:MIN is refused with ENODEV), so every configured data path is resolved here, once,
to that disk: the mount holding the path (from mountinfo), its device number, then
sysfs to step from a partition to its parent disk.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import attrs

from diskguard.model import Device


class DeviceError(ValueError):
    """A data path that cannot be mapped to a whole block device."""


@attrs.frozen
class MountEntry:
    """One line of /proc/<pid>/mountinfo, the parts device discovery needs."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    mount_point: str
    fstype: str
    source: str
    # The directory of the filesystem this mount shows ("/" unless it is a bind mount of
    # a subdirectory, such as a hostPath volume of a plain directory).
    root: str = "/"


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mountinfo as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[MountEntry, ...]:
    """Parse mountinfo text; malformed lines raise DeviceError naming the line."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_id, parent_id = int(fields[0]), int(fields[1])
            major_s, minor_s = fields[2].split(":")
            entries.append(
                MountEntry(
                    mount_id=mount_id,
                    parent_id=parent_id,
                    major=int(major_s),
                    minor=int(minor_s),
                    mount_point=_unescape(fields[4]),
                    fstype=_unescape(fields[sep + 1]),
                    source=_unescape(fields[sep + 2]),
                    root=_unescape(fields[3]),
                )
            )
        except (ValueError, IndexError) as exc:
            raise DeviceError(f"malformed mountinfo line {lineno}: {line!r}") from exc
    return tuple(entries)


def _covers(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point + "/")


def _longest_prefix(entries: Sequence[MountEntry], path: str) -> MountEntry | None:
    best: MountEntry | None = None
    for entry in entries:
        # ">=" so that the last mount on a mount point wins.
        if _covers(entry.mount_point, path) and (
            best is None or len(entry.mount_point) >= len(best.mount_point)
        ):
            best = entry
    return best


def find_mount(entries: Sequence[MountEntry], path: str) -> MountEntry | None:
    """The mount that holds absolute, symlink-free `path`.

    Walks the mount tree the way path lookup does: from the root mount, step into the
    child mount whose mount point is the shortest prefix of the path (a mount over /a
    hides an older child mount at /a/b of the same parent), and on ties take the last
    one (stacked mounts). When the tree is not connected (a hand-written or filtered
    mountinfo), fall back to the longest mount-point prefix, last one winning.
    """
    ids = {e.mount_id for e in entries}
    roots = [e for e in entries if e.mount_point == "/" and e.parent_id not in ids]
    if not roots:
        return _longest_prefix(entries, path)
    children: dict[int, list[MountEntry]] = {}
    for entry in entries:
        children.setdefault(entry.parent_id, []).append(entry)
    current = roots[-1]
    seen = {current.mount_id}
    while True:
        step: MountEntry | None = None
        for child in children.get(current.mount_id, ()):
            if child.mount_id in seen or not _covers(child.mount_point, path):
                continue
            if step is None or len(child.mount_point) <= len(step.mount_point):
                step = child
        if step is None:
            return current
        seen.add(step.mount_id)
        current = step


def _read_attr(path: Path) -> str:
    return path.read_text().strip()


def _parse_uevent(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def whole_disk(major: int, minor: int, *, sys_root: str = "/sys") -> Device:
    """The device IO to `major:minor` is throttled at.

    A partition maps to its parent disk. Loop devices and device-mapper devices map to
    themselves: IO through a filesystem on them is submitted to (and throttled at) the
    loop/dm device; it reaches the disks below only from the kernel's own workers, outside
    the container's cgroup.
    """
    node = Path(sys_root, "dev", "block", f"{major}:{minor}")
    try:
        sysdir = node.resolve(strict=True)
    except OSError as exc:
        raise DeviceError(f"block device {major}:{minor} is not in {node.parent}") from exc
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    try:
        maj_s, min_s = _read_attr(sysdir / "dev").split(":")
        uevent = _parse_uevent((sysdir / "uevent").read_text())
    except (OSError, ValueError) as exc:
        raise DeviceError(f"cannot read block device attributes in {sysdir}: {exc}") from exc
    return Device(int(maj_s), int(min_s), uevent.get("DEVNAME", sysdir.name))


def _mount_device(entry: MountEntry, path: str) -> tuple[int, int]:
    if entry.major != 0:
        return entry.major, entry.minor
    # Major 0 is an anonymous device (btrfs subvolumes, overlay, tmpfs, ...); btrfs & co
    # still name a real block device as the mount source.
    try:
        st = os.stat(entry.source)
    except OSError:
        st = None
    if st is None or not stat.S_ISBLK(st.st_mode):
        raise DeviceError(
            f"{path} is on {entry.fstype} (mounted at {entry.mount_point} from "
            f"{entry.source!r}), which has no block device"
        )
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def resolve_data_device(
    path: str, entries: Sequence[MountEntry], *, sys_root: str = "/sys"
) -> Device:
    """The whole disk holding `path`, given parsed mountinfo."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        raise DeviceError(f"data path {path!r} does not exist: {exc.strerror}") from exc
    entry = find_mount(entries, real)
    if entry is None:
        raise DeviceError(f"data path {path!r} ({real}) is on no mount in mountinfo")
    major, minor = _mount_device(entry, path)
    try:
        return whole_disk(major, minor, sys_root=sys_root)
    except DeviceError as exc:
        raise DeviceError(f"data path {path!r}: {exc}") from exc


def resolve_data_devices(
    paths: Sequence[str],
    *,
    mountinfo: str = "/proc/self/mountinfo",
    sys_root: str = "/sys",
) -> tuple[Device, ...]:
    """The whole disks holding `paths`, deduplicated, in the order first seen."""
    try:
        text = Path(mountinfo).read_text(errors="surrogateescape")
    except OSError as exc:
        raise DeviceError(f"cannot read {mountinfo}: {exc.strerror}") from exc
    entries = parse_mountinfo(text)
    found: dict[Device, None] = {}
    for path in paths:
        found.setdefault(resolve_data_device(path, entries, sys_root=sys_root), None)
    return tuple(found)
