"""Reading and writing a cgroup's IO limits: v1 blk-throttle files and v2 io.max.

Both versions sit behind one LimitBackend so the applier never branches on the version.
What the kernel reads back is the truth; writes touch only the fields that differ, so a
reconcile loop that finds nothing to change writes nothing. Every failure becomes a
typed LimitError whose message says what was written where.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from diskguard.model import (
    V2_MIN_LIMIT,
    CgroupVersion,
    Device,
    IOLimits,
    LimitField,
    LimitUnit,
)
from diskguard.policy.values import Unlimited, render_limit

DeviceKey = tuple[int, int]


class LimitError(Exception):
    """Reading or writing a cgroup's IO limits failed."""


class CgroupGoneError(LimitError):
    """The cgroup directory no longer exists (the container went away)."""


class DeviceRejectedError(LimitError):
    """The kernel refused the device: gone, or not a whole disk (a partition)."""


class LimitRejectedError(LimitError):
    """The kernel (or our range check) refused a value or the line's format."""


class ControllerMissingError(LimitError):
    """The cgroup exists but has no IO-limit file: the controller is not enabled for it."""


class LimitBackend(Protocol):
    version: CgroupVersion

    def read(self, cgroup_dir: Path) -> dict[DeviceKey, IOLimits]:
        """Per device, the limits the kernel holds; devices without a rule are absent."""
        ...

    def write(
        self, cgroup_dir: Path, device: Device, want: IOLimits, have: IOLimits | None = None
    ) -> None:
        """Make the kernel hold `want` for `device`, writing only fields that differ
        from `have` (read from the kernel when None)."""
        ...


def check_limits(limits: IOLimits, where: str = "") -> None:
    """Refuse values the kernel would reject or silently clamp."""
    for field, value in limits.as_dict().items():
        top = field.kernel_max
        if not 0 <= value <= top:
            raise LimitRejectedError(f"{where}{field}={value} is outside 0..{top}")


# blk-throttle's own "no limit" for IOPS (an unsigned int): it reads back as unlimited.
# MAX_IOPS, one less, is the largest real limit and reads back as itself (measured, v1).
UINT_MAX = 2**32 - 1


def kernel_view(limits: IOLimits) -> IOLimits:
    """`limits` as the kernel will read them back: an IOPS limit of UINT_MAX is
    blk-throttle's own "no limit", so it reads back as unlimited (0) on v1 and v2."""
    return IOLimits.of(
        {
            f: 0 if f.unit is LimitUnit.IOPS and v >= UINT_MAX else v
            for f, v in limits.as_dict().items()
        }
    )


def _refused_fields(errors: list[tuple[LimitField, LimitError]]) -> None:
    """Raise for the fields the kernel refused, after the others were written: the most
    telling error type (a vanished cgroup, then a refused device) wins."""
    if not errors:
        return
    message = "; ".join(str(exc) for _field, exc in errors)
    for kind in (CgroupGoneError, DeviceRejectedError, ControllerMissingError, LimitRejectedError):
        if any(isinstance(exc, kind) for _field, exc in errors):
            raise kind(message) from errors[0][1]
    raise LimitError(message) from errors[0][1]


def _dir_gone(cgroup_dir: Path) -> bool:
    return not cgroup_dir.is_dir()


def read_knob(cgroup_dir: Path, knob: str) -> str:
    """Read one cgroup file, mapping a vanished cgroup to CgroupGoneError."""
    path = cgroup_dir / knob
    try:
        return path.read_text()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV) and _dir_gone(cgroup_dir):
            raise CgroupGoneError(f"reading {path}: cgroup {cgroup_dir} is gone") from exc
        if exc.errno == errno.ENOENT:
            raise ControllerMissingError(_missing_message(cgroup_dir, knob)) from exc
        raise LimitError(f"reading {path}: {exc.strerror}") from exc


def _missing_message(cgroup_dir: Path, knob: str) -> str:
    return (
        f"{cgroup_dir} has no {knob}: the IO controller is not enabled for this cgroup "
        "(on v2 the parent's cgroup.subtree_control must contain io)"
    )


def write_knob(cgroup_dir: Path, knob: str, line: str) -> None:
    """Write one line to a cgroup file in a single write(2), errors typed by errno."""
    path = cgroup_dir / knob
    where = f"writing {line!r} to {path}"
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV) and _dir_gone(cgroup_dir):
            raise CgroupGoneError(f"{where}: cgroup {cgroup_dir} is gone") from exc
        if exc.errno == errno.ENOENT:
            raise ControllerMissingError(f"{where}: {_missing_message(cgroup_dir, knob)}") from exc
        raise LimitError(f"{where}: {exc.strerror}") from exc
    try:
        os.write(fd, line.encode())
    except OSError as exc:
        # A file opened before its cgroup was removed fails with ENODEV; so does a bad
        # device. Only the directory's existence tells the two apart.
        if exc.errno in (errno.ENOENT, errno.ENODEV) and _dir_gone(cgroup_dir):
            raise CgroupGoneError(f"{where}: cgroup {cgroup_dir} is gone") from exc
        if exc.errno == errno.ENODEV:
            raise DeviceRejectedError(
                f"{where}: no such device (gone, or a partition rather than a whole disk)"
            ) from exc
        if exc.errno in (errno.EINVAL, errno.ERANGE):
            raise LimitRejectedError(f"{where}: {exc.strerror}") from exc
        raise LimitError(f"{where}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _parse_devkey(text: str, where: str) -> DeviceKey:
    try:
        major, minor = text.split(":")
        return int(major), int(minor)
    except ValueError as exc:
        raise LimitError(f"unexpected device {text!r} in {where}") from exc


def _changed(want: IOLimits, have: IOLimits) -> Iterable[tuple[LimitField, int]]:
    for field in LimitField:
        value = want.get(field)
        if value != have.get(field):
            yield field, value


class V1Backend:
    """cgroup v1 blk-throttle: one file per field, lines "MAJ:MIN value", 0 clears."""

    version = CgroupVersion.V1

    KNOBS: Mapping[LimitField, str] = {f: f.v1_knob for f in LimitField}

    def read(self, cgroup_dir: Path) -> dict[DeviceKey, IOLimits]:
        fields: dict[DeviceKey, dict[LimitField, int]] = {}
        for field, knob in self.KNOBS.items():
            for line in read_knob(cgroup_dir, knob).splitlines():
                if not line.strip():
                    continue
                try:
                    dev, value = line.split()
                    number = int(value)
                except ValueError as exc:
                    raise LimitError(f"unexpected line {line!r} in {cgroup_dir / knob}") from exc
                key = _parse_devkey(dev, str(cgroup_dir / knob))
                fields.setdefault(key, {})[field] = number
        return {key: IOLimits.of(values) for key, values in fields.items()}

    def write(
        self, cgroup_dir: Path, device: Device, want: IOLimits, have: IOLimits | None = None
    ) -> None:
        check_limits(want, f"{device} in {cgroup_dir}: ")
        want = kernel_view(want)
        have = kernel_view(
            self.read(cgroup_dir).get((device.major, device.minor), IOLimits())
            if have is None
            else have
        )
        errors: list[tuple[LimitField, LimitError]] = []
        for field, value in _changed(want, have):
            try:
                write_knob(cgroup_dir, self.KNOBS[field], f"{device} {value}")
            except CgroupGoneError:
                raise
            except LimitError as exc:
                # One refused field (a read-only file, a refused value) must not leave the
                # other fields unwritten.
                errors.append((field, exc))
        _refused_fields(errors)


class V2Backend:
    """cgroup v2 io.max: "MAJ:MIN riops=N wiops=N rbps=N wbps=N", "key=max" clears.

    "key=0" is refused with ERANGE and a bare "max" with EINVAL, so 0 (unlimited in our
    model) is always spelled "max"; "key=1" is EINVAL too, so the plan raises 1 to
    MIN_LIMIT on v2 (v1 takes it) and a 1 reaching this backend is refused for its field
    alone.
    """

    version = CgroupVersion.V2

    KNOB = "io.max"
    # blk-throttle's io.max parser takes only values > 1 (measured on 6.1: EINVAL for 1).
    MIN_LIMIT = V2_MIN_LIMIT

    def read(self, cgroup_dir: Path) -> dict[DeviceKey, IOLimits]:
        result: dict[DeviceKey, IOLimits] = {}
        where = str(cgroup_dir / self.KNOB)
        for line in read_knob(cgroup_dir, self.KNOB).splitlines():
            parts = line.split()
            if not parts:
                continue
            values: dict[LimitField, int] = {}
            for item in parts[1:]:
                key, sep, value = item.partition("=")
                # Newer kernels may add keys; only the four limits are ours to read.
                if not sep or (field := _V2_KEYS.get(key)) is None:
                    continue
                try:
                    values[field] = 0 if value == Unlimited.KERNEL else int(value)
                except ValueError as exc:
                    raise LimitError(f"unexpected value {item!r} in {where}") from exc
            result[_parse_devkey(parts[0], where)] = IOLimits.of(values)
        return result

    def write(
        self, cgroup_dir: Path, device: Device, want: IOLimits, have: IOLimits | None = None
    ) -> None:
        check_limits(want, f"{device} in {cgroup_dir / self.KNOB}: ")
        want = kernel_view(want)
        have = kernel_view(
            self.read(cgroup_dir).get((device.major, device.minor), IOLimits())
            if have is None
            else have
        )
        changed = dict(_changed(want, have))
        errors: list[tuple[LimitField, LimitError]] = []
        for field, value in changed.items():
            if value == 1:
                # The plan raises 1 to MIN_LIMIT on v2; this guards any other caller.
                errors.append(
                    (
                        field,
                        LimitRejectedError(
                            f"{field}=1 for {device} in {cgroup_dir / self.KNOB}: io.max takes "
                            f"no limit below {self.MIN_LIMIT} (the kernel answers EINVAL)"
                        ),
                    )
                )
        items = {
            f: f"{f.v2_key}={render_limit(v, Unlimited.KERNEL)}"
            for f, v in changed.items()
            if v != 1
        }
        if not items:
            _refused_fields(errors)
            return
        try:
            write_knob(cgroup_dir, self.KNOB, f"{device} {' '.join(items.values())}")
        except LimitRejectedError as exc:
            if len(items) == 1:
                errors.append((next(iter(items)), exc))
            else:
                # The kernel refuses the whole line for one bad field (it parses every
                # field before applying any): write the fields one by one so the others
                # still hold.
                for field, item in items.items():
                    try:
                        write_knob(cgroup_dir, self.KNOB, f"{device} {item}")
                    except LimitRejectedError as one:
                        errors.append((field, one))
        _refused_fields(errors)


_V2_KEYS = {f.v2_key: f for f in LimitField}


def backend_for(version: CgroupVersion) -> LimitBackend:
    if version is CgroupVersion.V1:
        return V1Backend()
    return V2Backend()
