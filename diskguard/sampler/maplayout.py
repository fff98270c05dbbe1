"""The key and value layouts of the BPF program's maps, as user space reads them.

Each ctypes struct here is the twin of a C struct in bpf/diskguard_io.c (same members, same
order, same sizes); change both together. The loader reports the sizes BCC derived from the
C source and the agent checks them against these (and against what the kernel says the
handed-over map descriptors hold) before it reads anything, so a drift fails loudly at
start-up instead of reading garbage. tests/sampler/test_handoff.py checks them too.
The `struct.Struct` formats are the same layouts for fast bulk unpacking (iter_unpack).
"""

from __future__ import annotations

import ctypes
import struct

from diskguard.sampler.latency import SLOTS  # DG_LAT_SLOTS


class DgKey(ctypes.Structure):
    """struct dg_key { u64 cgroup_id; u32 major; u32 minor; u32 dir; u32 pad; }"""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("dir", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class DgVal(ctypes.Structure):
    """struct dg_val { u64 ios; u64 bytes; }"""

    _fields_ = (("ios", ctypes.c_uint64), ("bytes", ctypes.c_uint64))


class DgDev(ctypes.Structure):
    """struct dg_dev { u32 major; u32 minor; } (key of dg_devices; the value is a u8)"""

    _fields_ = (("major", ctypes.c_uint32), ("minor", ctypes.c_uint32))


class DgLat(ctypes.Structure):
    """struct dg_lat { u64 slots[DG_LAT_SLOTS]; u64 sum_ns; }"""

    _fields_ = (("slots", ctypes.c_uint64 * SLOTS), ("sum_ns", ctypes.c_uint64))


DEVICE_VALUE = ctypes.c_uint8  # dg_devices' value type

KEY = struct.Struct("<QIIII")  # DgKey
VAL = struct.Struct("<QQ")  # DgVal
DEV = struct.Struct("<II")  # DgDev
LAT = struct.Struct(f"<{SLOTS}QQ")  # DgLat

# (map name in the C source, key struct, value struct): what the agent reads or writes.
MAPS: dict[str, tuple[type[ctypes._CData], type[ctypes._CData]]] = {
    "dg_counts": (DgKey, DgVal),
    "dg_devices": (DgDev, DEVICE_VALUE),
    "dg_lat": (DgKey, DgLat),
}

for _c, _s in ((DgKey, KEY), (DgVal, VAL), (DgDev, DEV), (DgLat, LAT)):
    assert ctypes.sizeof(_c) == _s.size, (_c, _s)


def expected_sizes(name: str) -> tuple[int, int]:
    """(key size, value size) of a map as this module lays it out."""
    key, value = MAPS[name]
    return ctypes.sizeof(key), ctypes.sizeof(value)
