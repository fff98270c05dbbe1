"""What each data disk can do, as `diskguard profile` measured it: the capacity record in the
node-state directory (capacity.json), keyed by a stable disk identity.

Kernel names move between boots (nvme0n1 today may be nvme1n1 tomorrow), so the record is
keyed by what the disk says it is: its WWN (`/sys/block/X/wwid`, or the device's `wwid`),
else a device-mapper or MD RAID UUID, else its model and serial, else — loop disks in
tests — the file behind it. A disk with none
of these gets no identity and its measurement is not recorded (said, not guessed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from diskguard.logs import get_logger
from diskguard.model import Device, IOLimits, LimitField
from diskguard.node.state import (
    CAPACITY_FILE,
    StateDir,
    StateError,
    decode_document,
    write_atomically,
)

log = get_logger(__name__)

CAPACITY_KIND = "diskguard.capacity"
CAPACITY_SCHEMA = 1
MAX_CAPACITY_BYTES = 1024 * 1024  # a record per disk: a few hundred bytes each
MAX_IDENTITY = 256
SYS_BLOCK = Path("/sys/block")


@attrs.frozen
class DiskCapacity:
    """IO operations/s at 4k random and bytes/s at 1M sequential, per direction."""

    read_iops: int
    write_iops: int
    read_bps: int
    write_bps: int
    measured_at: str = ""  # ISO 8601, UTC
    device_name: str = ""  # the kernel name when measured (for people; not the key)
    method: str = ""  # how (fio job shapes), for people

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)

    def as_limits(self) -> IOLimits:
        return IOLimits(
            riops=self.read_iops, wiops=self.write_iops, rbps=self.read_bps, wbps=self.write_bps
        )

    def describe(self) -> str:
        return (
            f"read {self.read_iops:,} IOPS {self.read_bps / 2**20:,.0f} MiB/s, write "
            f"{self.write_iops:,} IOPS {self.write_bps / 2**20:,.0f} MiB/s"
            + (f" (measured {self.measured_at})" if self.measured_at else "")
        )


def _read(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[:MAX_IDENTITY] if text.isprintable() else ""


def disk_identity(device: Device, sys_block: Path = SYS_BLOCK) -> str | None:
    """A stable identity of the whole disk `device` (by its kernel name), or None."""
    name = device.name
    if not name or "/" in name or name in (".", ".."):
        return None
    disk = sys_block / name
    for wwid in (disk / "wwid", disk / "device" / "wwid"):
        if value := _read(wwid):
            return f"wwid:{value}"
    # Device-mapper (LVM) and MD RAID volumes: no WWN, but a UUID of their own.
    for kind in ("dm", "md"):
        if value := _read(disk / kind / "uuid"):
            return f"{kind}:{value}"
    # SCSI/SATA/NVMe put the serial under device/; virtio-blk beside the disk.
    serial = _read(disk / "device" / "serial") or _read(disk / "serial")
    if serial:
        model = _read(disk / "device" / "model")
        return f"serial:{model}:{serial}" if model else f"serial:{serial}"
    if backing := _read(disk / "loop" / "backing_file"):
        return f"loop:{backing}"
    return None


def encode_capacity(disks: Mapping[str, DiskCapacity]) -> bytes:
    doc = {
        "kind": CAPACITY_KIND,
        "schema": CAPACITY_SCHEMA,
        "disks": {identity: disks[identity].as_json() for identity in sorted(disks)},
    }
    return json.dumps(doc, indent=1).encode() + b"\n"


def decode_capacity(data: bytes, where: str) -> dict[str, DiskCapacity]:
    doc = decode_document(data, where, CAPACITY_KIND, CAPACITY_SCHEMA, "capacity record")
    disks = doc.get("disks")
    if not isinstance(disks, dict):
        raise StateError(f"{where}: 'disks' is not an object")
    out = {}
    for identity, entry in disks.items():
        try:
            if not isinstance(identity, str) or not isinstance(entry, dict):
                raise TypeError
            numbers = [entry[k] for k in ("read_iops", "write_iops", "read_bps", "write_bps")]
            if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in numbers):
                raise TypeError
            texts = {k: entry.get(k, "") for k in ("measured_at", "device_name", "method")}
            if not all(isinstance(t, str) for t in texts.values()):
                raise TypeError
        except (KeyError, TypeError):
            raise StateError(f"{where}: malformed entry {identity!r:.100}") from None
        out[identity] = DiskCapacity(*numbers, **texts)
    return out


def capacity_path(state: StateDir) -> Path:
    return state.path / CAPACITY_FILE


def read_capacity(state: StateDir) -> dict[str, DiskCapacity]:
    """The recorded capacities ({} when none was measured yet)."""
    path = capacity_path(state)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CAPACITY_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_CAPACITY_BYTES:
        raise StateError(f"{path} is larger than {MAX_CAPACITY_BYTES} bytes")
    return decode_capacity(data, str(path))


def record_capacity(state: StateDir, identity: str, measured: DiskCapacity) -> None:
    """Add or replace one disk's measurement (the others are kept). An unreadable record
    (another schema, damage) is moved aside to `capacity.unreadable` for the operator and a
    new one started: measuring again is the way out that doctor and the log point to."""
    state.ensure()
    path = capacity_path(state)
    try:
        disks = read_capacity(state)
    except StateError as exc:
        aside = path.with_suffix(".unreadable")
        log.warning("capacity record unreadable; moving it aside", error=str(exc), to=str(aside))
        try:
            os.replace(path, aside)
        except OSError as move:
            raise StateError(f"cannot move {path} aside: {move.strerror}") from move
        disks = {}
    disks[identity] = measured
    try:
        write_atomically(path, encode_capacity(disks))
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from exc


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def slowest(disks: Sequence[IOLimits]) -> IOLimits:
    """Per limit field, the lowest of `disks` (smart limit judges a container by its busiest
    data disk, so the reference is the disk that saturates first)."""
    return IOLimits(**{f.value: min(d.get(f) for d in disks) for f in LimitField})


class CapacityReader:
    """The record as the agent reads it: the measured capacity of the data disks, read
    again only when the file or the data disks change."""

    def __init__(self, state: StateDir, sys_block: Path = SYS_BLOCK) -> None:
        self._path = capacity_path(state)
        self._state = state
        self._sys_block = sys_block
        # (file and disks it was read for, what was found): one value, replaced whole, as
        # the smart limiter's worker thread and the HTTP side both read it.
        self._cache: tuple[object, dict[Device, DiskCapacity]] = (None, {})

    def per_device(self, devices: Sequence[Device]) -> dict[Device, DiskCapacity]:
        """The recorded measurement of each of `devices` that has one."""
        try:
            st = os.stat(self._path)
        except OSError:
            return {}
        key = (st.st_mtime_ns, st.st_size, st.st_ino, tuple(devices))
        cached_key, found = self._cache
        if key != cached_key:
            found = self._read(devices)
            self._cache = (key, found)
        return found

    def measured(self, devices: Sequence[Device]) -> IOLimits | None:
        """Per limit field the slowest data disk's measurement; None unless every data
        disk was measured (a declared capacity then stands in)."""
        found = self.per_device(devices)
        if not devices or any(d not in found for d in devices):
            return None
        return slowest([found[d].as_limits() for d in devices])

    def _read(self, devices: Sequence[Device]) -> dict[Device, DiskCapacity]:
        try:
            recorded = read_capacity(self._state)
        except StateError as exc:
            log.warning("the capacity record is unusable; run diskguard profile", error=str(exc))
            return {}
        found = {}
        for device in devices:
            identity = disk_identity(device, self._sys_block)
            if identity is not None and identity in recorded:
                found[device] = recorded[identity]
        return found
