"""The data disks follow the node: DATA_MOUNT is re-resolved while the agent runs.

A data path is resolved again at every resync and whenever the mount table changes (the
kernel flags /proc/self/mountinfo with POLLPRI, not readability, when a mount comes or
goes). A data path that is a plain directory rather than a mount point is the boot race
(the directory exists, the disk is not mounted yet): resolving it would name the root
disk. In the DaemonSet the data path is always a mount point (the hostPath volume), so
"mounted" means a mount of a filesystem's root there, not a bind of a subdirectory; such
a path is reported not ready and looked at again until something is mounted, unless the
administrator said a plain directory is intended (DATA_MOUNT_ALLOW_UNMOUNTED).
"""

from __future__ import annotations

import os
import select
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs
import trio

from diskguard.logs import get_logger
from diskguard.model import Device
from diskguard.node.devices import DeviceError, find_mount, parse_mountinfo, resolve_data_device

log = get_logger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
# While a data path is not ready it is looked at this often (besides mount-table changes).
NOT_READY_RECHECK = 1.0
# The mount-table wait runs in a worker thread in slices this long, so a cancelled agent
# leaves no thread behind for longer.
POLL_SLICE = 5.0


@attrs.frozen
class DiskResolution:
    devices: tuple[Device, ...]
    problem: str = ""  # why some data path has no disk yet ("" when every one resolved)


def resolve(
    paths: Sequence[str],
    *,
    allow_unmounted: bool,
    mountinfo: str = MOUNTINFO,
    sys_root: str = "/sys",
) -> DiskResolution:
    """The whole disks of `paths`; a path that is not a mount point (unless allowed) or
    that cannot be resolved is left out and said in `problem`."""
    try:
        text = Path(mountinfo).read_text(errors="surrogateescape")
        entries = parse_mountinfo(text)
    except (OSError, DeviceError) as exc:
        return DiskResolution((), f"cannot read the mount table {mountinfo}: {exc}")
    found: dict[Device, None] = {}
    problems = []
    for path in paths:
        try:
            real = os.path.realpath(path, strict=True)
        except OSError as exc:
            problems.append(f"data path {path} does not exist ({exc.strerror})")
            continue
        entry = find_mount(entries, real)
        # A mount point showing a subdirectory of its filesystem is a bind mount of a
        # plain directory: what the DaemonSet's hostPath volume is while nothing is
        # mounted at the host's DATA_MOUNT yet.
        if not allow_unmounted and (
            entry is None or entry.mount_point != real or entry.root != "/"
        ):
            problems.append(
                f"data path {path} is not a mount point (nothing mounted there yet?); "
                "waiting for its disk. Set DATA_MOUNT_ALLOW_UNMOUNTED=true if a plain "
                "directory on the disk below is intended"
            )
            continue
        try:
            found.setdefault(resolve_data_device(path, entries, sys_root=sys_root), None)
        except DeviceError as exc:
            problems.append(str(exc))
    return DiskResolution(tuple(found), "; ".join(problems))


def wait_for_mount_change(fd: int, timeout: float) -> bool:
    """Block until the mount table changed since `fd` was opened, or `timeout` passed."""
    poller = select.poll()
    poller.register(fd, select.POLLPRI | select.POLLERR)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class DataDisks:
    """Keeps the resolved data disks current; `on_change` moves the limits."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        allow_unmounted: bool,
        resync_interval: float,
        initial: DiskResolution,
        on_change: Callable[[tuple[Device, ...]], Awaitable[None]],
        mountinfo: str = MOUNTINFO,
    ) -> None:
        self.paths = tuple(paths)
        self.allow_unmounted = allow_unmounted
        self.resync_interval = resync_interval
        self.current = initial
        self._on_change = on_change
        self._mountinfo = mountinfo
        self.resolutions = 0
        self.changes = 0

    @property
    def problem(self) -> str:
        return self.current.problem

    def as_json(self) -> dict[str, object]:
        return {
            "paths": list(self.paths),
            "devices": [f"{d.name or '?'}={d}" for d in self.current.devices],
            "allow_unmounted": self.allow_unmounted,
            "problem": self.current.problem,
            "changes": self.changes,
        }

    def _resolve(self) -> DiskResolution:
        return resolve(self.paths, allow_unmounted=self.allow_unmounted, mountinfo=self._mountinfo)

    async def run(self) -> None:
        while True:
            # Open before resolving: a change between the two still wakes the wait below.
            fd = os.open(self._mountinfo, os.O_RDONLY | os.O_CLOEXEC)
            try:
                found = await trio.to_thread.run_sync(self._resolve)
                self.resolutions += 1
                await self._take(found)
                interval = NOT_READY_RECHECK if found.problem else self.resync_interval
                deadline = trio.current_time() + interval
                while (left := deadline - trio.current_time()) > 0:
                    if await trio.to_thread.run_sync(
                        wait_for_mount_change, fd, min(left, POLL_SLICE), abandon_on_cancel=True
                    ):
                        break
            finally:
                os.close(fd)

    async def _take(self, found: DiskResolution) -> None:
        before = self.current
        if found.problem != before.problem:
            if found.problem:
                log.warning("data disks unresolved", reason=found.problem)
            else:
                log.info("data disks: every data path resolved")
        # A path that cannot be resolved right now keeps the disks it had: limits stay
        # where they were rather than leave the node unprotected.
        devices = found.devices if found.devices or not before.devices else before.devices
        if found.problem and before.devices:
            keep = {(d.major, d.minor) for d in found.devices}
            devices = (
                *found.devices,
                *(d for d in before.devices if (d.major, d.minor) not in keep),
            )
        if {(d.major, d.minor) for d in devices} != {(d.major, d.minor) for d in before.devices}:
            log.warning(
                "data disks changed; moving the limits",
                before=", ".join(map(str, before.devices)) or "none",
                after=", ".join(map(str, devices)) or "none",
            )
            self.changes += 1
            await self._on_change(devices)
        self.current = DiskResolution(devices, found.problem)
