"""Fallback sampler: the kernel's own per-cgroup IO counters.

cgroup v2: `io.stat` (`MAJ:MIN rbytes=… wbytes=… rios=… wios=… …`).
cgroup v1: `blkio.throttle.io_serviced` / `blkio.throttle.io_service_bytes`
(`MAJ:MIN Read N` / `MAJ:MIN Write N` …). Recent kernels only count these once some
throttle rule has been written for the device, so each (cgroup, device) is armed once with
a no-op `MAJ:MIN 0` rule, written only where no rule for that device exists yet.

Both count bios at submission, where the eBPF sampler counts requests at issue: merged or
split IO (buffered, readahead) makes them differ; O_DIRECT IO of block size agrees.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

from diskguard.model import CgroupVersion, Counters, Device
from diskguard.sampler.base import Logger, Snapshot, Target, alive, under_root, zero_counters
from diskguard.sampler.latency import LatencySnapshot

V2_STAT = "io.stat"
V1_IOS = "blkio.throttle.io_serviced"
V1_BYTES = "blkio.throttle.io_service_bytes"
# Any throttle file arms counting; a read-IOPS rule of 0 means "no limit" to the kernel.
V1_ARM = "blkio.throttle.read_iops_device"

DevNum = tuple[int, int]


def _devnum(text: str) -> DevNum | None:
    major, sep, minor = text.partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def parse_io_stat(text: str) -> dict[DevNum, Counters]:
    """cgroup v2 io.stat; malformed lines and unknown keys are skipped."""
    out: dict[DevNum, Counters] = {}
    for line in text.splitlines():
        parts = line.split()
        dev = _devnum(parts[0]) if parts else None
        if dev is None:
            continue
        fields = parts[1:]
        values: dict[str, int] = {}
        for field in fields:
            key, sep, value = field.partition("=")
            if sep and value.isdigit():
                values[key] = int(value)
        out[dev] = Counters(
            rios=values.get("rios", 0),
            wios=values.get("wios", 0),
            rbytes=values.get("rbytes", 0),
            wbytes=values.get("wbytes", 0),
        )
    return out


def _parse_v1_file(text: str) -> dict[DevNum, tuple[int, int]]:
    """(Read, Write) per device from a v1 blkio stat file."""
    out: dict[DevNum, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[1] not in ("Read", "Write") or not parts[2].isdigit():
            continue
        dev = _devnum(parts[0])
        if dev is None:
            continue
        out.setdefault(dev, [0, 0])[parts[1] == "Write"] = int(parts[2])
    return {dev: (rw[0], rw[1]) for dev, rw in out.items()}


def parse_v1_stats(serviced: str, service_bytes: str) -> dict[DevNum, Counters]:
    ios = _parse_v1_file(serviced)
    nbytes = _parse_v1_file(service_bytes)
    return {
        dev: Counters(
            rios=ios.get(dev, (0, 0))[0],
            wios=ios.get(dev, (0, 0))[1],
            rbytes=nbytes.get(dev, (0, 0))[0],
            wbytes=nbytes.get(dev, (0, 0))[1],
        )
        for dev in ios.keys() | nbytes.keys()
    }


def has_rule(rules: str, device: Device) -> bool:
    prefix = f"{device} "
    return any(line.startswith(prefix) for line in rules.splitlines())


class CgroupSampler:
    kind = "cgroup"

    def __init__(
        self,
        devices: Sequence[Device],
        root: Path,
        version: CgroupVersion,
        log: Logger,
        degraded: str | None = None,
        *,
        arm: bool = True,
    ) -> None:
        """`arm`: write the no-op rule that makes v1 count (off for a reader of limited
        cgroups only, whose limits arm counting already: it then never writes)."""
        self._arm_counters = arm
        self._devices = tuple(devices)
        self._root = root
        self._version = version
        self._log = log
        self._degraded = degraded
        self._armed: set[tuple[Target, Device]] = set()
        self._warned: set[tuple[Target, str]] = set()

    @property
    def degraded(self) -> str | None:
        return self._degraded

    @property
    def devices(self) -> Sequence[Device]:
        return self._devices

    def set_devices(self, devices: Sequence[Device]) -> None:
        """Read these disks' counters from now on (the data disks changed)."""
        self._devices = tuple(dict.fromkeys(devices))

    def _warn_once(self, target: Target, what: str, **kw: object) -> None:
        if (target, what) not in self._warned:
            self._warned.add((target, what))
            self._log.warning(what, cgroup=str(target.path), **kw)

    def _arm(self, target: Target) -> None:
        """Make sure the kernel counts this cgroup's IO on each data device (v1 only).

        Read-then-write is not atomic: a read-IOPS limit written by someone else between the
        two would be reset to "no limit". Run arming and limit writes from one thread (the
        agent does both) or arm before limits are applied. On 6.18, arming one cgroup
        arms the whole device queue; older kernels may count without arming at all.
        """
        for device in self._devices:
            if (target, device) in self._armed:
                continue
            rules_file = target.path / V1_ARM
            try:
                # Never overwrite a rule: a real limit already arms counting.
                if not has_rule(rules_file.read_text(), device):
                    rules_file.write_text(f"{device} 0\n")
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return  # the cgroup went away; read() drops it
                reason = "no such device" if e.errno == errno.ENODEV else str(e)
                self._warn_once(
                    target, "cannot arm cgroup IO counting", device=str(device), reason=reason
                )
            self._armed.add((target, device))

    def _read_one(self, target: Target) -> dict[DevNum, Counters] | None:
        try:
            if self._version is CgroupVersion.V2:
                return parse_io_stat((target.path / V2_STAT).read_text())
            if self._arm_counters:
                self._arm(target)
            return parse_v1_stats(
                (target.path / V1_IOS).read_text(), (target.path / V1_BYTES).read_text()
            )
        except FileNotFoundError:
            if target.path.is_dir():
                # The directory exists but has no stat file: the IO controller is not
                # enabled for it (v2 subtree_control), so it has no counters at all.
                self._warn_once(target, "no IO counters: io controller not enabled")
            return None
        except OSError as e:
            self._warn_once(target, "cgroup IO counters unreadable", error=str(e))
            return None

    # The cgroup files count IO; they hold no per-request timing.
    latency_problem = "the cgroup sampler has no per-request timing"

    def read_latency(self, targets: Sequence[Target]) -> LatencySnapshot | None:
        return None

    def read(self, targets: Sequence[Target]) -> Snapshot:
        out: Snapshot = {}
        for target in targets:
            if not under_root(self._root, target.path):
                self._warn_once(
                    target, "cgroup outside the hierarchy; not sampled", root=str(self._root)
                )
                continue
            stats = self._read_one(target)
            # Checked after reading so a directory replaced meanwhile is not misreported.
            if stats is None or not alive(target):
                continue
            counters = zero_counters(self._devices)
            for device in self._devices:
                counters[device] = stats.get((device.major, device.minor), Counters())
            out[target] = counters
        current = set(targets)
        self._armed = {(t, d) for t, d in self._armed if t in current}
        self._warned = {(t, w) for t, w in self._warned if t in current}
        return out

    def close(self) -> None:
        """Nothing to release; the no-op arming rules are harmless and stay."""
