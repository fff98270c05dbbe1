"""The BTF reader: on the running kernel's BTF (checked against bpftool) and on crafted blobs."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import attrs
import pytest

from diskguard.sampler.bpf import blkcg_layout, latency_layout
from diskguard.sampler.btf import (
    BTF,
    KIND_INT,
    KIND_PTR,
    VMLINUX_BTF,
    BTFError,
)

# (struct, member path) pairs the sampler relies on, plus members inside anonymous unions.
MEMBERS = [
    ("request", "q"),
    ("request", "bio"),
    ("request", "cmd_flags"),
    ("request", "__data_len"),
    ("bio", "bi_blkg"),
    ("blkcg_gq", "blkcg"),
    ("blkcg", "css"),
    ("cgroup_subsys_state", "cgroup"),
    ("cgroup", "kn"),
    ("kernfs_node", "id"),
    ("gendisk", "major"),
    ("gendisk", "first_minor"),
    ("request", "queuelist"),  # anonymous union member
    ("request", "hash"),  # anonymous union member
    ("task_struct", "pid"),
]


@pytest.fixture(scope="module")
def vmlinux() -> BTF:
    if not VMLINUX_BTF.exists():
        pytest.skip(f"needs {VMLINUX_BTF}")
    return BTF.from_file()


# ---------------------------------------------------------------- against bpftool


@attrs.frozen
class _RawType:
    kind: str
    name: str
    ref: int  # type_id= of typedef/ptr/const…
    members: tuple[tuple[str, int, int], ...]  # (name, type id, bit offset)


def _parse_bpftool_raw(text: str) -> dict[int, _RawType]:
    head = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
    member = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)")
    types: dict[int, _RawType] = {}
    current: tuple[int, str, str, int, list[tuple[str, int, int]]] | None = None

    def flush() -> None:
        if current is not None:
            tid, kind, name, ref, members = current
            types[tid] = _RawType(kind, name, ref, tuple(members))

    for line in text.splitlines():
        if m := head.match(line):
            flush()
            ref = re.search(r"\btype_id=(\d+)", m.group(4))
            current = (int(m.group(1)), m.group(2), m.group(3), int(ref.group(1)) if ref else 0, [])
        elif (m := member.match(line)) and current is not None:
            current[4].append((m.group(1), int(m.group(2)), int(m.group(3))))
    flush()
    return types


def _reference_offset(types: dict[int, _RawType], struct_name: str, path: str) -> int:
    """The member's byte offset computed from bpftool's own decoding of the BTF."""

    def strip(tid: int) -> int:
        while types[tid].kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = types[tid].ref
        return tid

    def find(tid: int, name: str) -> tuple[int, int] | None:
        for mname, mtype, bits in types[tid].members:
            if mname == name:
                return mtype, bits
            if mname == "(anon)":
                inner = find(strip(mtype), name)
                if inner is not None:
                    return inner[0], bits + inner[1]
        return None

    tid = next(i for i, t in types.items() if t.kind == "STRUCT" and t.name == struct_name)
    total = 0
    for part in path.split("."):
        found = find(strip(tid), part)
        assert found is not None, f"bpftool: {struct_name} has no {path}"
        tid, bits = found
        total += bits
    return total // 8


@pytest.fixture(scope="module")
def bpftool_types() -> dict[int, _RawType]:
    if shutil.which("bpftool") is None or not VMLINUX_BTF.exists():
        pytest.skip("needs bpftool and kernel BTF")
    raw = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "raw"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return _parse_bpftool_raw(raw)


@pytest.mark.kernel
@pytest.mark.parametrize(("struct_name", "path"), MEMBERS)
def test_offsets_match_bpftool(
    vmlinux: BTF, bpftool_types: dict[int, _RawType], struct_name: str, path: str
) -> None:
    assert vmlinux.member(struct_name, path).offset == _reference_offset(
        bpftool_types, struct_name, path
    )


@pytest.mark.kernel  # the running kernel's BTF
def test_nested_path_through_embedded_struct(
    vmlinux: BTF, bpftool_types: dict[int, _RawType]
) -> None:
    nested = vmlinux.member("blkcg", "css.cgroup")
    css = vmlinux.member("blkcg", "css").offset
    cgroup = vmlinux.member("cgroup_subsys_state", "cgroup").offset
    assert nested.offset == css + cgroup
    assert nested.offset == _reference_offset(bpftool_types, "blkcg", "css.cgroup")
    assert nested.kind == KIND_PTR and nested.size == 8


@pytest.mark.kernel  # the running kernel's BTF
def test_member_sizes_and_kinds(vmlinux: BTF) -> None:
    assert vmlinux.member("request", "bio").kind == KIND_PTR
    assert vmlinux.member("request", "__data_len").size == 4
    kn_id = vmlinux.member("kernfs_node", "id")
    assert (kn_id.kind, kn_id.size) == (KIND_INT, 8)


@pytest.mark.kernel  # the running kernel's BTF
def test_raw_tracepoint_args(vmlinux: BTF) -> None:
    # 5.11+ passes just the request; older kernels pass (request_queue, request).
    assert vmlinux.raw_tracepoint_args("block_rq_issue")[-1] == "struct request *"


@pytest.mark.kernel  # the running kernel's BTF
def test_enum_values(vmlinux: BTF) -> None:
    assert vmlinux.enum_value("req_op", "REQ_OP_READ") == 0
    assert vmlinux.enum_value("req_op", "REQ_OP_WRITE") == 1
    assert vmlinux.has_enumerator("bpf_func_id", "BPF_FUNC_probe_read_kernel")


@pytest.mark.kernel  # the running kernel's BTF
def test_blkcg_layout_covers_every_macro_of_the_program(vmlinux: BTF) -> None:
    layout = blkcg_layout(vmlinux)
    source = (Path(__file__).parents[2] / "bpf" / "diskguard_io.c").read_text()
    used = set(re.findall(r"\b(DG_(?:OFF|ARG|REQ|KN)_\w+)", source))
    # The completion probe's macros come from latency_layout (built only with latency).
    defined = {name for name, _ in (*layout.defines, *latency_layout(vmlinux).defines)}
    # The device is reached through the queue or (old kernels) directly; one of the two.
    alternatives = {"DG_OFF_RQ_DISK", "DG_OFF_RQ_Q", "DG_OFF_Q_DISK"}
    assert used - alternatives <= defined
    assert {"DG_OFF_RQ_Q", "DG_OFF_Q_DISK"} <= defined or "DG_OFF_RQ_DISK" in defined


@pytest.mark.kernel  # the running kernel's BTF
def test_missing_things_raise(vmlinux: BTF) -> None:
    with pytest.raises(BTFError, match="no struct/union named 'no_such_struct'"):
        vmlinux.member("no_such_struct", "x")
    with pytest.raises(BTFError, match="has no member 'no_such_member'"):
        vmlinux.member("request", "no_such_member")
    with pytest.raises(BTFError, match="is not a struct or union"):
        vmlinux.member("request", "bio.bi_blkg")  # bio is a pointer: dots do not follow it
    with pytest.raises(BTFError):
        vmlinux.raw_tracepoint_args("no_such_tracepoint")


# ---------------------------------------------------------------- crafted blobs


class _Builder:
    """Writes a minimal little-endian BTF blob."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.next_id = 1

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(
        self,
        name: str,
        kind: int,
        vlen: int,
        size_or_type: int,
        tail: bytes = b"",
        kind_flag: bool = False,
    ) -> int:
        info = (kind << 24) | vlen | (int(kind_flag) << 31)
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + tail
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self.add(name, 1, 0, size, struct.pack("<I", size * 8))

    def struct(
        self,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        kind: int = 4,
        kind_flag: bool = False,
    ) -> int:
        tail = b"".join(struct.pack("<III", self.s(n), t, off) for n, t, off in members)
        return self.add(name, kind, len(members), size, tail, kind_flag)

    def blob(self, magic: int = 0xEB9F) -> bytes:
        hdr = struct.pack(
            "<HBBIIIII", magic, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return hdr + bytes(self.types) + bytes(self.strings)


def test_typedefs_anonymous_unions_and_bitfields() -> None:
    b = _Builder()
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    u32_t = b.add("u32", 8, 0, u32)  # typedef
    const_u64 = b.add("", 10, 0, u64)  # const
    inner = b.struct("", 8, [("lo", u32_t, 0), ("hi", u32_t, 32)])
    anon = b.struct("", 8, [("whole", const_u64, 0), ("", inner, 0)], kind=5)  # union
    # kind_flag: offsets carry bitfield sizes in their top 8 bits.
    outer = b.struct(
        "outer",
        24,
        [("flag", u32, 1 << 24 | 0), ("", anon, 64), ("tail", u32_t, 128)],
        kind_flag=True,
    )
    b.add("outer_t", 8, 0, outer)
    btf = BTF(b.blob())
    assert btf.member("outer", "whole").offset == 8
    assert btf.member("outer", "hi").offset == 12
    assert btf.member("outer", "hi").size == 4
    assert btf.member("outer", "tail").offset == 16
    with pytest.raises(BTFError, match="bitfield"):
        btf.member("outer", "flag")


def test_bad_blobs_raise() -> None:
    b = _Builder()
    b.int_("int", 4)
    with pytest.raises(BTFError, match="magic"):
        BTF(b.blob(magic=0x9FEB))
    with pytest.raises(BTFError, match="shorter"):
        BTF(b"\x9f\xeb")
    with pytest.raises(BTFError, match="past the end"):
        BTF(b.blob()[:-4])
    b.add("mystery", 31, 0, 0)
    with pytest.raises(BTFError, match="unsupported BTF kind 31"):
        BTF(b.blob())
    with pytest.raises(BTFError, match="cannot read BTF"):
        BTF.from_file(Path("/nonexistent/vmlinux"))
