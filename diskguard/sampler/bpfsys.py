"""BPF maps through the plain `bpf()` system call (ctypes), without BCC.

The agent reads and updates the maps the loader process handed over (diskguard.sampler.
loader) with these calls, so it never maps libbcc, LLVM or clang. Only the map commands
are used; every map is named by a file descriptor this process owns.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Iterator

import attrs

# The bpf() system call number per architecture (include/uapi/asm-generic/unistd.h and
# arch/x86/entry/syscalls/syscall_64.tbl).
_SYS_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "ppc64le": 361,
    "s390x": 351,
}

# enum bpf_cmd (include/uapi/linux/bpf.h)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_BATCH = 24
BPF_ANY = 0

# What a kernel without BPF_MAP_LOOKUP_BATCH (before 5.6) or a map type without it answers.
NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524)  # 524: ENOTSUPP (kernel)


class BpfError(OSError):
    """A bpf() call failed; errno is set."""


class _ElemAttr(ctypes.Structure):
    """union bpf_attr, the BPF_MAP_*_ELEM / GET_NEXT_KEY member."""

    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # also next_key
        ("flags", ctypes.c_uint64),
    )


class _BatchAttr(ctypes.Structure):
    """union bpf_attr, the BPF_MAP_*_BATCH member."""

    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


def _syscall_number() -> int:
    machine = platform.machine()
    try:
        return _SYS_BPF[machine]
    except KeyError:
        raise BpfError(errno.ENOSYS, f"bpf() system call number unknown for {machine}") from None


class _Syscall:
    """libc's syscall(2) bound to bpf()."""

    def __init__(self) -> None:
        self._nr = _syscall_number()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)

    def __call__(self, cmd: int, attr: ctypes.Structure) -> int:
        res = int(self._syscall(self._nr, cmd, ctypes.addressof(attr), ctypes.sizeof(attr)))
        if res < 0:
            err = ctypes.get_errno()
            raise BpfError(err, os.strerror(err))
        return res


_bpf: _Syscall | None = None


def _call(cmd: int, attr: ctypes.Structure) -> int:
    global _bpf  # one libc binding per process; holds no state
    if _bpf is None:
        _bpf = _Syscall()
    return _bpf(cmd, attr)


def fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo of a descriptor (map_type, key_size, value_size, max_entries,
    prog_id, link_type ... for BPF objects)."""
    out = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
    return out


@attrs.define
class BpfMap:
    """One map, by a descriptor this object owns (closed by `close`)."""

    name: str
    fd: int
    key_size: int
    value_size: int
    max_entries: int

    @classmethod
    def from_fd(cls, name: str, fd: int) -> BpfMap:
        """Sizes as the kernel reports them for the descriptor (not as anyone claims)."""
        info = fdinfo(fd)
        try:
            return cls(
                name, fd, int(info["key_size"]), int(info["value_size"]), int(info["max_entries"])
            )
        except (KeyError, ValueError) as e:
            raise BpfError(errno.EBADF, f"fd {fd} ({name}) is not a BPF map: {e}") from e

    def _check(self, buf: ctypes.Array[ctypes.c_char], size: int, what: str) -> None:
        if len(buf) < size:
            raise ValueError(f"{self.name}: {what} buffer of {len(buf)} bytes, need {size}")

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under `key`, or None."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.value_size)
        self._check(k, self.key_size, "key")
        attr = _ElemAttr(map_fd=self.fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
        try:
            _call(BPF_MAP_LOOKUP_ELEM, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def update(self, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self.value_size)
        attr = _ElemAttr(
            map_fd=self.fd, key=ctypes.addressof(k), value=ctypes.addressof(v), flags=BPF_ANY
        )
        _call(BPF_MAP_UPDATE_ELEM, attr)

    def delete(self, key: bytes) -> bool:
        """Remove `key`; False if it was not there."""
        k = ctypes.create_string_buffer(key, self.key_size)
        try:
            _call(BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=self.fd, key=ctypes.addressof(k)))
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def walk_keys(self) -> Iterator[bytes]:
        """Every key, walking with BPF_MAP_GET_NEXT_KEY.

        A hash map walk restarts from the first key when the current one was deleted
        meanwhile (LRU eviction): keys seen twice are skipped and the walk is bounded by
        twice the map's size, so it always ends."""
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        attr = _ElemAttr(map_fd=self.fd, key=0, value=ctypes.addressof(nxt))
        seen: set[bytes] = set()
        for _ in range(2 * self.max_entries + 1):
            try:
                _call(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)
            attr.key = ctypes.addressof(cur)
            if key not in seen:
                seen.add(key)
                yield key

    def items_walk(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs by get-next-key and one lookup each (any kernel)."""
        for key in list(self.walk_keys()):
            value = self.lookup(key)
            if value is not None:  # evicted between the walk and the lookup
                yield key, value

    def lookup_batch(
        self, keys: ctypes.Array[ctypes.c_char], values: ctypes.Array[ctypes.c_char]
    ) -> int:
        """Copy up to max_entries entries into the buffers with BPF_MAP_LOOKUP_BATCH; returns
        how many. Raises BpfError with an errno in NO_BATCH where the kernel lacks it."""
        limit = self.max_entries
        self._check(keys, limit * self.key_size, "keys")
        self._check(values, limit * self.value_size, "values")
        # A hash map's batch token is a bucket index (u32); 8 bytes leave room for others.
        token_in = ctypes.c_uint64(0)
        token_out = ctypes.c_uint64(0)
        attr = _BatchAttr(map_fd=self.fd, out_batch=ctypes.addressof(token_out))
        total = 0
        while total < limit:
            attr.in_batch = ctypes.addressof(token_in) if total else 0
            attr.keys = ctypes.addressof(keys) + self.key_size * total
            attr.values = ctypes.addressof(values) + self.value_size * total
            attr.count = limit - total
            try:
                _call(BPF_MAP_LOOKUP_BATCH, attr)
            except BpfError as e:
                total += attr.count  # the kernel reports what it copied, also on ENOENT
                if e.errno == errno.ENOENT:
                    break  # walked the whole map
                raise
            total += attr.count
            if attr.count == 0:
                break
            token_in.value = token_out.value
        return total

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
