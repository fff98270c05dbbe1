"""A small reader for the kernel's BTF (BPF Type Format), enough to find struct member offsets.

The BPF sampler follows pointers through block-layer structs whose layout changes between
kernel builds and whose definitions are private to the kernel (no header declares `struct
blkcg_gq`). The running kernel describes its own layout in `/sys/kernel/btf/vmlinux`, so we
read offsets from there. `bpftool -j btf dump` gives the same data as ~17 MB of JSON that
costs far more to parse than walking the ~5 MB binary once (see bench/sampler_bench.py).

Format reference: Documentation/bpf/btf.rst in the kernel tree. Parsing is lazy: one pass
records where each type record starts, members are decoded only for the types asked about.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import attrs

BTF_MAGIC = 0xEB9F
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow the 12-byte common header: (fixed, per vlen item).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})
_COMPOSITE = frozenset({KIND_STRUCT, KIND_UNION})
_KIND_NAMES = {
    KIND_STRUCT: "struct",
    KIND_UNION: "union",
    KIND_ENUM: "enum",
    KIND_ENUM64: "enum",
    KIND_TYPEDEF: "typedef",
    KIND_FUNC_PROTO: "func_proto",
    KIND_PTR: "pointer",
    KIND_INT: "int",
}
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_PAIR = struct.Struct("<II")
_TRIPLE = struct.Struct("<III")
_POINTER_SIZE = 8  # BTF does not record it; every BTF-enabled 64-bit kernel uses 8.


class BTFError(Exception):
    """BTF is missing, malformed, or lacks a type/member we need."""


@attrs.frozen
class Member:
    """Where a (possibly nested) member lives inside the outermost struct, in bytes."""

    offset: int
    size: int
    type_id: int
    kind: int


class _Type(NamedTuple):
    kind: int
    name_off: int
    vlen: int
    kind_flag: bool
    size_or_type: int
    trailer: int  # byte offset of the kind-specific data in the type section


class BTF:
    """Parsed view of one BTF blob (the kernel's `vmlinux` BTF in practice)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BTFError("BTF blob is shorter than its header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = (
            _HEADER.unpack_from(data, 0)
        )
        if magic != BTF_MAGIC:
            # Big-endian BTF (s390) would read as 0x9FEB; we only support little-endian hosts.
            raise BTFError(f"bad BTF magic {magic:#x}")
        types_start = hdr_len + type_off
        strs_start = hdr_len + str_off
        if types_start + type_len > len(data) or strs_start + str_len > len(data):
            raise BTFError("BTF sections run past the end of the blob")
        self._data = data
        self._strs = data[strs_start : strs_start + str_len]
        self._types: list[_Type | None] = [None]  # type id 0 is `void`
        self._by_name: dict[int, list[int]] = {}
        self._index(types_start, types_start + type_len)

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF) -> BTF:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BTFError(f"cannot read BTF from {path}: {e.strerror or e}") from e
        return cls(data)

    def _index(self, pos: int, end: int) -> None:
        data = self._data
        unpack = _TYPE.unpack_from
        types = self._types
        by_name = self._by_name
        while pos < end:
            name_off, info, size_or_type = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            try:
                fixed, per_item = _TRAILER[kind]
            except KeyError:
                # Unknown kinds have unknown lengths, so nothing after them can be located.
                raise BTFError(f"unsupported BTF kind {kind} at byte {pos}") from None
            tid = len(types)
            types.append(_Type(kind, name_off, vlen, bool(info >> 31), size_or_type, pos + 12))
            if name_off:
                by_name.setdefault(name_off, []).append(tid)
            pos += 12 + fixed + per_item * vlen
        if pos != end:
            raise BTFError("BTF type section is truncated")

    # -- strings and names -------------------------------------------------------------

    def _str(self, off: int) -> str:
        end = self._strs.find(b"\0", off)
        if end < 0:
            raise BTFError(f"string offset {off} is not NUL-terminated")
        return self._strs[off:end].decode()

    def _name_offsets(self, name: str) -> Iterator[int]:
        needle = name.encode()
        strs = self._strs
        # Strings are NUL-separated; the first one (offset 0) is the empty string.
        pos = strs.find(b"\0" + needle + b"\0")
        while pos >= 0:
            yield pos + 1
            pos = strs.find(b"\0" + needle + b"\0", pos + 1)

    def find(self, name: str, kinds: frozenset[int]) -> int:
        """Type id of the named type of one of `kinds` (a full definition beats a forward)."""
        for off in self._name_offsets(name):
            for tid in self._by_name.get(off, ()):
                t = self._types[tid]
                assert t is not None
                if t.kind in kinds:
                    return tid
        wanted = "/".join(sorted({_KIND_NAMES.get(k, str(k)) for k in kinds}))
        raise BTFError(f"no {wanted} named {name!r} in BTF")

    def _type(self, tid: int) -> _Type:
        if not 0 < tid < len(self._types):
            raise BTFError(f"type id {tid} out of range")
        t = self._types[tid]
        assert t is not None
        return t

    def _strip(self, tid: int) -> int:
        """Follow typedefs and qualifiers down to the type that decides layout."""
        for _ in range(64):
            if tid == 0:
                return 0
            t = self._type(tid)
            if t.kind not in _MODIFIERS:
                return tid
            tid = t.size_or_type
        raise BTFError("typedef/qualifier chain too long (loop?)")

    def size_of(self, tid: int) -> int:
        tid = self._strip(tid)
        if tid == 0:
            raise BTFError("void has no size")
        t = self._type(tid)
        if t.kind in (KIND_INT, KIND_ENUM, KIND_ENUM64, KIND_STRUCT, KIND_UNION, KIND_FLOAT):
            return t.size_or_type
        if t.kind == KIND_PTR:
            return _POINTER_SIZE
        if t.kind == KIND_ARRAY:
            elem, _index_type, nelems = _TRIPLE.unpack_from(self._data, t.trailer)
            return self.size_of(int(elem)) * int(nelems)
        raise BTFError(f"type {tid} of kind {t.kind} has no size")

    def kind_of(self, tid: int) -> int:
        tid = self._strip(tid)
        return 0 if tid == 0 else self._type(tid).kind

    def pointee(self, tid: int) -> int:
        """The type a pointer type points to (after stripping typedefs around the pointer)."""
        tid = self._strip(tid)
        t = self._type(tid)
        if t.kind != KIND_PTR:
            raise BTFError(f"type {tid} is not a pointer")
        return t.size_or_type

    # -- structs -------------------------------------------------------------------------

    def _members(self, tid: int) -> Iterator[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of each direct member."""
        t = self._type(tid)
        for i in range(t.vlen):
            name_off, mtype, raw = _TRIPLE.unpack_from(self._data, t.trailer + 12 * i)
            if t.kind_flag:
                bits, bitfield = raw & 0xFFFFFF, raw >> 24
            else:
                bits, bitfield = raw, 0
            yield self._str(name_off), mtype, bits, bitfield

    def _find_member(self, tid: int, name: str) -> tuple[int, int, int] | None:
        """(type id, bit offset, bitfield size) of `name`, searching anonymous members too."""
        for mname, mtype, bits, bitfield in self._members(tid):
            if mname == name:
                return mtype, bits, bitfield
            if not mname:
                inner = self._strip(mtype)
                if inner and self._type(inner).kind in _COMPOSITE:
                    found = self._find_member(inner, name)
                    if found is not None:
                        return found[0], bits + found[1], found[2]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Locate `path` (dotted: `css.cgroup`) inside `struct struct_name`.

        Dots step into embedded structs/unions (not through pointers); anonymous
        structs/unions are searched transparently, as C does.
        """
        tid = self.find(struct_name, _COMPOSITE)
        offset_bits = 0
        mtype = tid
        where = f"struct {struct_name}"
        for part in path.split("."):
            container = self._strip(mtype)
            if container == 0 or self._type(container).kind not in _COMPOSITE:
                raise BTFError(f"{where} is not a struct or union, cannot find {part!r} in it")
            found = self._find_member(container, part)
            if found is None:
                raise BTFError(f"{where} has no member {part!r}")
            mtype, bits, bitfield = found
            if bitfield:
                raise BTFError(f"{where}.{part} is a bitfield, not addressable")
            offset_bits += bits
            where = f"{where}.{part}"
        if offset_bits % 8:
            raise BTFError(f"{where} is not byte-aligned")
        return Member(offset_bits // 8, self.size_of(mtype), mtype, self.kind_of(mtype))

    def has_member(self, struct_name: str, path: str) -> bool:
        try:
            self.member(struct_name, path)
        except BTFError:
            return False
        return True

    # -- enums and tracepoints -----------------------------------------------------------

    def enum_value(self, enum_name: str, enumerator: str) -> int:
        tid = self.find(enum_name, frozenset({KIND_ENUM, KIND_ENUM64}))
        t = self._type(tid)
        bits = 32 if t.kind == KIND_ENUM else 64
        for i in range(t.vlen):
            if t.kind == KIND_ENUM:
                name_off, value = _PAIR.unpack_from(self._data, t.trailer + 8 * i)
            else:
                name_off, lo, hi = _TRIPLE.unpack_from(self._data, t.trailer + 12 * i)
                value = (hi << 32) | lo
            if t.kind_flag and value >> (bits - 1):  # kind_flag marks a signed enum
                value -= 1 << bits
            if self._str(name_off) == enumerator:
                return int(value)
        raise BTFError(f"enum {enum_name} has no {enumerator}")

    def has_enumerator(self, enum_name: str, enumerator: str) -> bool:
        try:
            self.enum_value(enum_name, enumerator)
        except BTFError:
            return False
        return True

    def raw_tracepoint_args(self, tracepoint: str) -> list[str]:
        """Argument types of a raw tracepoint, e.g. `["struct request *"]`.

        The kernel declares `typedef void (*btf_trace_<tp>)(void *__data, <TP_PROTO args>)`
        for every tracepoint; raw tracepoint programs see the TP_PROTO args in ctx->args.
        """
        tid = self.find(f"btf_trace_{tracepoint}", frozenset({KIND_TYPEDEF}))
        proto = self._strip(self.pointee(tid))
        t = self._type(proto)
        if t.kind != KIND_FUNC_PROTO:
            raise BTFError(f"btf_trace_{tracepoint} is not a function pointer")
        args = []
        for i in range(t.vlen):
            _name_off, ptype = _PAIR.unpack_from(self._data, t.trailer + 8 * i)
            args.append(self._describe(ptype))
        return args[1:]  # drop `void *__data`

    def _describe(self, tid: int) -> str:
        tid = self._strip(tid)
        if tid == 0:
            return "void"
        t = self._type(tid)
        if t.kind == KIND_PTR:
            return self._describe(t.size_or_type) + " *"
        kind = _KIND_NAMES.get(t.kind)
        name = self._str(t.name_off)
        return f"{kind} {name}" if kind in ("struct", "union", "enum") else name
