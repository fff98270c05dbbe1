"""Percentages of a disk's capacity (`iops-limit/write-iops: "25%"`, a `Share`): the capacity
they are relative to, whether a key's share can be resolved on every data disk, and how a
resolved value is described.

The capacity of a disk is, per limit field, what `diskguard profile` measured of it
(capacity.json), else the declared SMART_LIMIT_DEVICE_IOPS / SMART_LIMIT_DEVICE_BPS; 0 is
unknown. Never the observed capacity: it is measured under the very limits a share would
set, so a share of it would feed back on itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from diskguard.model import Device, IOLimits, LimitField, LimitUnit
from diskguard.policy.values import LimitValue, Share

# Per data disk, what each limit field is relative to (0 = unknown).
Capacities = Mapping[Device, IOLimits]
# No data disk known (a share then resolves nowhere).
NO_DISKS: Capacities = MappingProxyType({})
UNKNOWN = IOLimits()

# Where an administrator declares a capacity, per unit.
DECLARED_VARIABLE = {
    LimitUnit.IOPS: "SMART_LIMIT_DEVICE_IOPS",
    LimitUnit.BPS: "SMART_LIMIT_DEVICE_BPS",
}
_UNIT_WORDS = {LimitUnit.IOPS: "IOPS", LimitUnit.BPS: "bytes/s"}


def disk_capacities(
    devices: Sequence[Device], measured: Mapping[Device, IOLimits], declared: IOLimits
) -> dict[Device, IOLimits]:
    """Per data disk and field: its measured capacity, else the declared one."""
    out = {}
    for device in devices:
        own = measured.get(device, UNKNOWN)
        out[device] = IOLimits.of({f: own.get(f) or declared.get(f) for f in LimitField})
    return out


def disk_name(device: Device) -> str:
    """How messages name a disk: `nvme1n1 (259:1)`, or `259:1` without a kernel name."""
    return f"{device.name} ({device})" if device.name else str(device)


def unresolvable(value: Share, fields: Iterable[LimitField], capacity: Capacities) -> str:
    """Why `value` cannot be turned into a number on every data disk for `fields` (the
    fields its key sets), or "" when it can."""
    if not capacity:
        return f"{value} is a share of each data disk's capacity, and no data disk is known"
    fields = tuple(fields)
    units = sorted({f.unit for f in fields})
    for unit in units:
        missing = [
            device
            for device, known in capacity.items()
            if any(not known.get(f) for f in fields if f.unit is unit)
        ]
        if missing:
            disks = ", ".join(disk_name(d) for d in missing)
            return (
                f"{value} is a share of each data disk's capacity, and the {_UNIT_WORDS[unit]} "
                f"capacity of {disks} is not known: run `diskguard profile` on the node, or "
                f"declare {DECLARED_VARIABLE[unit]}"
            )
    return ""


def share_text(value: Share, capacity: int, device: Device | None) -> str:
    """How a source names a resolved share: `25% of 2000 on 259:0`."""
    where = f" on {device}" if device is not None else ""
    return f"{value} of {capacity}{where}"


def involves_shares(values: Iterable[LimitValue | None]) -> bool:
    return any(isinstance(v, Share) for v in values)
