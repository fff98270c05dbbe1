"""`diskguard profile`: measure each data disk once and record what it can do in the
node-state directory (capacity.json), keyed by the disk's stable identity.

The order of things protects the node: the free space is checked before anything is
written; a disk busy with other IO is refused (its figures would be shared, and the
measurement would slow that IO down) unless forced; the test file is the only thing
written and is removed whatever happens, including Ctrl-C.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from diskguard.model import Device, LimitField
from diskguard.node.capacity import (
    DiskCapacity,
    disk_identity,
    now_iso,
    record_capacity,
)
from diskguard.node.devices import DeviceError, parse_mountinfo, resolve_data_device
from diskguard.node.profiling import (
    JOBS,
    ProfileError,
    busy,
    check_space,
    disk_stat,
    fio_args,
    parse_fio,
    run_fio,
    space,
)
from diskguard.node.state import StateDir, StateError

Say = Callable[[str], None]

DEFAULT_SIZE = 2**30
DEFAULT_SECONDS = 5.0
SETTLE_SECONDS = 1.0  # how long the disk is watched for other IO before measuring
# fio lays the test file out before the first job: allow a slow disk (20 MiB/s) for that.
LAYOUT_RATE = 20 * 2**20


@attrs.frozen
class ProfileOptions:
    size: int = DEFAULT_SIZE
    seconds: float = DEFAULT_SECONDS
    numjobs: int = attrs.field(factory=lambda: min(4, os.cpu_count() or 1))
    force: bool = False
    fio: str = "fio"
    settle: float = SETTLE_SECONDS


@attrs.frozen
class Profiled:
    """One data path's disk and what it measured (or why it was not)."""

    path: str
    device: Device | None
    identity: str | None
    capacity: DiskCapacity | None = None
    error: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "device": None if self.device is None else str(self.device),
            "device_name": None if self.device is None else self.device.name,
            "identity": self.identity,
            "capacity": None if self.capacity is None else self.capacity.as_json(),
            "recorded": self.capacity is not None and self.identity is not None,
            "error": self.error or None,
        }


def measure(
    path: Path, device: Device, options: ProfileOptions, say: Say, sys_root: str = "/sys"
) -> DiskCapacity:
    """Run the four fio jobs on a temporary file in `path` (on `device`)."""
    if problem := check_space(space(path), options.size):
        raise ProfileError(f"{path}: {problem}")
    if not options.force:
        counters = Path(sys_root) / "dev" / "block"
        before = disk_stat(device, counters)
        time.sleep(options.settle)
        after = disk_stat(device, counters)
        if reason := busy(before, after, options.settle):
            raise ProfileError(f"{device.name} ({path}) is busy: {reason}; --force measures anyway")
    fd, name = tempfile.mkstemp(prefix=".diskguard-profile-", dir=path)
    os.close(fd)
    test_file = Path(name)
    timeout = options.seconds + 60 + options.size / LAYOUT_RATE
    measured: dict[LimitField, float] = {}
    try:
        for job in JOBS:
            jobs = 1 if job.sequential else options.numjobs
            say(
                f"{device.name}: {job.name}, queue depth {job.iodepth} x {jobs} "
                f"job(s), {options.seconds:g} s"
            )
            args = fio_args(
                job,
                test_file,
                size=options.size,
                seconds=options.seconds,
                numjobs=options.numjobs,
                fio=options.fio,
            )
            value = parse_fio(run_fio(args, timeout), job)
            measured[job.field] = value
            unit = "IOPS" if job.field in (LimitField.RIOPS, LimitField.WIOPS) else "B/s"
            say(f"{device.name}: {job.name}: {value:,.0f} {unit}")
    finally:
        test_file.unlink(missing_ok=True)
    method = (
        "; ".join(f"{j.name} qd{j.iodepth}x{1 if j.sequential else options.numjobs}" for j in JOBS)
        + f"; O_DIRECT libaio {options.seconds:g} s each"
    )
    return DiskCapacity(
        read_iops=max(1, round(measured[LimitField.RIOPS])),
        write_iops=max(1, round(measured[LimitField.WIOPS])),
        read_bps=max(1, round(measured[LimitField.RBPS])),
        write_bps=max(1, round(measured[LimitField.WBPS])),
        measured_at=now_iso(),
        device_name=device.name,
        method=method,
    )


def profile_paths(
    paths: Sequence[str],
    options: ProfileOptions,
    state: StateDir | None,
    say: Say,
    *,
    mountinfo: str = "/proc/self/mountinfo",
    sys_root: str = "/sys",
) -> list[Profiled]:
    """Measure the disk of each data path once (two paths on one disk: measured once) and
    record each result in `state` (None: do not record)."""
    try:
        entries = parse_mountinfo(Path(mountinfo).read_text(errors="surrogateescape"))
    except (OSError, DeviceError) as exc:
        raise ProfileError(f"cannot read the mount table {mountinfo}: {exc}") from None
    sys_block = Path(sys_root) / "block"
    done: list[Profiled] = []
    seen: set[Device] = set()
    for path in paths:
        try:
            device = resolve_data_device(path, entries, sys_root=sys_root)
        except DeviceError as exc:
            done.append(Profiled(path, None, None, error=str(exc)))
            continue
        if device in seen:
            continue
        seen.add(device)
        identity = disk_identity(device, sys_block)
        try:
            capacity = measure(Path(path), device, options, say, sys_root)
        except ProfileError as exc:
            done.append(Profiled(path, device, identity, error=str(exc)))
            continue
        if identity is None:
            done.append(
                Profiled(
                    path,
                    device,
                    None,
                    capacity,
                    error=f"{device.name} has no stable identity (no WWN or serial in "
                    "sysfs): measured, not recorded",
                )
            )
            continue
        if state is not None:
            try:
                record_capacity(state, identity, capacity)
            except StateError as exc:
                done.append(Profiled(path, device, identity, capacity, error=str(exc)))
                continue
        done.append(Profiled(path, device, identity, capacity))
    return done
