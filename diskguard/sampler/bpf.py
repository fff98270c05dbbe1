"""eBPF sampler: counts IO per (cgroup the block layer charges, data device, direction).

The program (bpf/diskguard_io.c) runs on the `block_rq_issue` raw tracepoint and follows
rq->bio->bi_blkg->blkcg->css.cgroup->kn->id with offsets read from the running kernel's
BTF, so IO that kernel threads issue on a container's behalf (loop workers, writeback,
bios released after throttling) is still charged to the container. Without BTF it degrades
to the classic tracepoint and the issuing task's cgroup, which misattributes that IO and
only names unified-hierarchy (cgroup v2) cgroups.

With BTF it also attaches to `block_rq_complete` and keeps, per (cgroup, device,
direction), a log2 histogram of each request's service time (issue -> completion) in the
kernel; user space reads the histograms when it samples, never per request.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.resources
import importlib.util
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import attrs

from diskguard.model import CgroupVersion, Counters, Device
from diskguard.sampler.base import (
    Liveness,
    Logger,
    SamplerUnavailable,
    Snapshot,
    Target,
    under_root,
    zero_counters,
)
from diskguard.sampler.bpfsys import NO_BATCH, BpfError, BpfMap
from diskguard.sampler.btf import (
    BTF,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_UNION,
    VMLINUX_BTF,
    BTFError,
)
from diskguard.sampler.headers import DEFAULT_SEARCH, HeadersError, find_kernel_headers
from diskguard.sampler.latency import SLOTS, DeviceLatency, LatencyHistogram, LatencySnapshot
from diskguard.sampler.maplayout import DEV, DEVICE_VALUE, KEY, LAT, VAL, expected_sizes
from diskguard.sampler.tracefs import DEFAULT_TRACEFS, TracefsError, ensure_tracefs

TRACEPOINT = "block_rq_issue"
COMPLETE_TRACEPOINT = "block_rq_complete"
# REQ_OP_BITS has been 8 since the op/flags split (4.10); it is a #define, absent from BTF.
REQ_OP_MASK = 0xFF
_DIR_READ, _DIR_WRITE = 0, 1


def default_source() -> Traversable:
    """The program's C source, shipped as package data of `diskguard.bpf` (the top-level
    bpf/ folder, mapped into the package by pyproject.toml): found the same way in a
    checkout, an editable install and a wheel."""
    return importlib.resources.files("diskguard.bpf").joinpath("diskguard_io.c")


@attrs.frozen
class BpfOptions:
    """Where the BPF sampler looks for its inputs; overridable for tests and `doctor`."""

    btf_path: Path = VMLINUX_BTF
    header_search: tuple[Path, ...] = DEFAULT_SEARCH
    cache_dir: Path = Path("/var/cache/diskguard")
    tracefs: tuple[Path, ...] = DEFAULT_TRACEFS
    source: Traversable = attrs.field(factory=default_source)
    max_entries: int = 32768
    # Latency histogram entries (one per cgroup, device and direction that did IO) and
    # requests in flight on the data devices at once; both maps are preallocated.
    latency_entries: int = 8192
    max_inflight: int = 10240
    # False builds the program without the completion probe and its maps (benchmarks).
    latency: bool = True
    release: str = attrs.field(factory=lambda: os.uname().release)
    # How long the loader process may take (compile, load, attach, hand-over) before it is
    # killed and the agent goes on without BPF; a compile takes ~25 s under emulation.
    loader_timeout: float = 300.0


@attrs.frozen
class Layout:
    """Kernel-specific numbers for the blkcg program, all taken from BTF."""

    defines: tuple[tuple[str, int | str], ...]

    def cflags(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in self.defines]

    def get(self, name: str) -> int | str:
        return dict(self.defines)[name]


def _pointer(btf: BTF, struct_name: str, path: str) -> int:
    m = btf.member(struct_name, path)
    if m.kind != KIND_PTR:
        raise BTFError(f"struct {struct_name}.{path} is not a pointer")
    return m.offset


def _integer(btf: BTF, struct_name: str, path: str, sizes: tuple[int, ...] = (4,)) -> int:
    m = btf.member(struct_name, path)
    if m.kind != KIND_INT or m.size not in sizes:
        raise BTFError(f"struct {struct_name}.{path} is not a {sizes}-byte integer")
    return m.offset


def blkcg_layout(btf: BTF) -> Layout:
    """Offsets and constants for DG_MODE_BLKCG; raises BTFError naming what is missing."""
    args = btf.raw_tracepoint_args(TRACEPOINT)
    if "struct request *" not in args:
        raise BTFError(f"{TRACEPOINT} has no struct request * argument: {args}")
    d: dict[str, int | str] = {"DG_ARG_RQ": args.index("struct request *")}
    d["DG_OFF_RQ_BIO"] = _pointer(btf, "request", "bio")
    d["DG_OFF_BIO_BLKG"] = _pointer(btf, "bio", "bi_blkg")
    d["DG_OFF_BLKG_BLKCG"] = _pointer(btf, "blkcg_gq", "blkcg")
    d["DG_OFF_BLKCG_CGROUP"] = _pointer(btf, "blkcg", "css.cgroup")
    d["DG_OFF_CGROUP_KN"] = _pointer(btf, "cgroup", "kn")
    kn_id = btf.member("kernfs_node", "id")
    if kn_id.kind in (KIND_STRUCT, KIND_UNION):
        # Before 5.5 the id was `union kernfs_node_id { struct { u32 ino, generation; }; u64 }`.
        kn_id = btf.member("kernfs_node", "id.ino")
    if kn_id.kind != KIND_INT or kn_id.size not in (4, 8):
        raise BTFError("struct kernfs_node.id is not an integer")
    d["DG_OFF_KN_ID"] = kn_id.offset
    d["DG_KN_ID_SIZE"] = kn_id.size
    # Little-endian: reading the low 4 bytes of an 8-byte field is fine for the op bits.
    d["DG_OFF_RQ_CMD_FLAGS"] = _integer(btf, "request", "cmd_flags", (4, 8))
    d["DG_OFF_RQ_DATA_LEN"] = _integer(btf, "request", "__data_len")
    if btf.has_member("request", "q") and btf.has_member("request_queue", "disk"):
        d["DG_OFF_RQ_Q"] = _pointer(btf, "request", "q")
        d["DG_OFF_Q_DISK"] = _pointer(btf, "request_queue", "disk")
    else:  # before 5.17 the request pointed at its disk directly
        d["DG_OFF_RQ_DISK"] = _pointer(btf, "request", "rq_disk")
    d["DG_OFF_DISK_MAJOR"] = _integer(btf, "gendisk", "major")
    d["DG_OFF_DISK_FIRST_MINOR"] = _integer(btf, "gendisk", "first_minor")
    for enum in ("req_op", "req_opf"):
        if btf.has_enumerator(enum, "REQ_OP_WRITE"):
            d["DG_REQ_OP_READ"] = btf.enum_value(enum, "REQ_OP_READ")
            d["DG_REQ_OP_WRITE"] = btf.enum_value(enum, "REQ_OP_WRITE")
            break
    else:
        d["DG_REQ_OP_READ"], d["DG_REQ_OP_WRITE"] = 0, 1
    d["DG_REQ_OP_MASK"] = REQ_OP_MASK
    d["DG_PROBE_READ"] = probe_read_helper(btf)
    return Layout(tuple(d.items()))


def latency_layout(btf: BTF) -> Layout:
    """What the completion probe needs beyond blkcg_layout; raises BTFError if absent."""
    args = btf.raw_tracepoint_args(COMPLETE_TRACEPOINT)
    if "struct request *" not in args:
        raise BTFError(f"{COMPLETE_TRACEPOINT} has no struct request * argument: {args}")
    # TP_PROTO(struct request *rq, blk_status_t error, unsigned int nr_bytes) since 4.x.
    if len(args) < 3 or args[2] != "unsigned int":
        raise BTFError(f"{COMPLETE_TRACEPOINT} has no nr_bytes argument: {args}")
    return Layout((("DG_ARG_RQ_COMPLETE", args.index("struct request *")), ("DG_ARG_NR_BYTES", 2)))


def probe_read_helper(btf: BTF | None) -> str:
    if btf is not None and btf.has_enumerator("bpf_func_id", "BPF_FUNC_probe_read_kernel"):
        return "bpf_probe_read_kernel"
    return "bpf_probe_read"


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what libbcc/clang print on fd 2 (compile errors, verifier logs).

    fd 2 is process-wide: whatever other threads write meanwhile is captured too, so all
    of it is written back to the real stderr afterwards rather than lost.
    """
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            with contextlib.suppress(OSError):
                os.write(2, data)
            out.append(data.decode(errors="replace"))


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _release_compiler_heap() -> None:
    """Hand clang's freed heap back to the OS (~26 MiB of anonymous RSS, measured)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)  # glibc only


# Libraries only the compiler needs: once the program is loaded, their pages are dead
# weight in the agent's RSS (about 100 MiB of LLVM, measured).
_COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc")
_MADV_DONTNEED = 4


def _release_compiler_code() -> int:
    """Drop the resident pages of the compiler's clean, read-only library mappings; returns
    the bytes of the mappings advised.

    Only mappings that are not writable *and* hold no anonymous pages are touched: such a
    private file mapping holds nothing but clean file pages, which MADV_DONTNEED forgets and
    which fault back in from the file if ever used again. Read-only mappings with anonymous
    pages (RELRO: relocated, then mprotected) are left alone, since dropping those would
    revert their relocations."""
    released = 0
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for start, end, perms, name, anonymous_kb in _mappings():
            if "w" in perms or anonymous_kb != 0:
                continue
            if not name.rsplit("/", 1)[-1].startswith(_COMPILER_LIBRARIES):
                continue
            if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
                released += end - start
    return released


def _mappings() -> Iterator[tuple[int, int, str, str, int]]:
    """(start, end, perms, path, Anonymous kB) of each mapping, from /proc/self/smaps."""
    current: list[Any] | None = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                if current is not None and current[4] is not None:
                    yield tuple(current)
                start, end = (int(x, 16) for x in head[0].split("-"))
                name = head[5].strip() if len(head) == 6 else ""
                current = [start, end, head[1], name, None]
            elif line.startswith("Anonymous:") and current is not None:
                current[4] = int(line.split()[1])
    if current is not None and current[4] is not None:
        yield tuple(current)


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)


@attrs.frozen
class Maps:
    """The maps the agent reads (counts, latency) and writes (the device filter)."""

    counts: BpfMap
    devices: BpfMap
    latency: BpfMap | None = None

    def all(self) -> tuple[BpfMap, ...]:
        return (self.counts, self.devices) + ((self.latency,) if self.latency else ())

    def check_layout(self) -> None:
        """Each map's key/value sizes, as the kernel reports them for the descriptor, are
        the ones maplayout reads; raises ValueError naming the map otherwise."""
        for m in self.all():
            want = expected_sizes(m.name)
            if (m.key_size, m.value_size) != want:
                raise ValueError(
                    f"map {m.name}: key/value {m.key_size}/{m.value_size} bytes in the kernel, "
                    f"{want[0]}/{want[1]} in diskguard.sampler.maplayout"
                )

    def close(self) -> None:
        for m in self.all():
            m.close()


class BpfSampler:
    """Reads the counters the loaded program keeps, with plain bpf() calls on map
    descriptors this object owns; create with `open_bpf_sampler` (the loader process) or
    `open_bpf_sampler_in_process`.

    `keep` holds whatever keeps the program attached (the handed-over attachment and
    program descriptors, or the in-process BCC object); `release` lets go of it.
    """

    kind = "bpf"

    def __init__(
        self,
        maps: Maps,
        devices: Sequence[Device],
        root: Path,
        log: Logger,
        degraded: str | None,
        info: dict[str, str],
        release: Callable[[], None],
        latency_problem: str | None = "not compiled in",
        keep: Any = None,
    ) -> None:
        maps.check_layout()
        self._maps: Maps | None = maps
        self._bpf: Any = keep
        self._release = release
        self._devices: tuple[Device, ...] = ()
        self._by_number: dict[tuple[int, int], Device] = {}
        self._root = root
        self._log = log
        self._outside: set[Target] = set()
        self._alive = Liveness()
        self._degraded = degraded
        self.info = info
        counts = maps.counts
        self._keys = ctypes.create_string_buffer(KEY.size * counts.max_entries)
        self._vals = ctypes.create_string_buffer(VAL.size * counts.max_entries)
        # The latency map, when the completion probe is attached (None: latency unavailable).
        self.latency_problem: str | None = latency_problem
        self._lat_keys = self._lat_vals = ctypes.create_string_buffer(0)
        if maps.latency is None and latency_problem is None:
            raise ValueError("latency is available but no latency map was given")
        if maps.latency is not None and latency_problem is None:
            n = maps.latency.max_entries
            self._lat_keys = ctypes.create_string_buffer(KEY.size * n)
            self._lat_vals = ctypes.create_string_buffer(LAT.size * n)
        self._batch_ok = True
        # read() runs in worker threads; the batch buffers and the maps are shared.
        self._lock = threading.Lock()
        self.set_devices(devices)

    @property
    def degraded(self) -> str | None:
        return self._degraded

    @property
    def devices(self) -> Sequence[Device]:
        return self._devices

    def _open_maps(self) -> Maps:
        if self._maps is None:
            raise RuntimeError("sampler is closed")
        return self._maps

    def set_devices(self, devices: Sequence[Device]) -> None:
        """Count IO on these disks from now on (the data disks changed): the program's
        device filter map is updated in place, the program stays attached."""
        new = tuple(dict.fromkeys(devices))
        with self._lock:
            table = self._open_maps().devices
            wanted = {(d.major, d.minor) for d in new}
            for major, minor in set(self._by_number) - wanted:
                table.delete(DEV.pack(major, minor))
            for major, minor in wanted - set(self._by_number):
                table.update(DEV.pack(major, minor), bytes(DEVICE_VALUE(1)))
            self._devices = new
            self._by_number = {(d.major, d.minor): d for d in new}

    def filtered_devices(self) -> set[tuple[int, int]]:
        """(major, minor) pairs in the kernel's device filter map, read back."""
        with self._lock:
            return {DEV.unpack(k) for k in self._open_maps().devices.walk_keys()}

    def _raw(
        self,
        table: BpfMap,
        keys: ctypes.Array[ctypes.c_char],
        vals: ctypes.Array[ctypes.c_char],
        val: struct.Struct,
    ) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Every (key, value) of a map, unpacked: one BPF_MAP_LOOKUP_BATCH walk, or
        get-next-key plus a lookup per entry where the kernel lacks batches (< 5.6)."""
        if self._batch_ok:
            try:
                n = table.lookup_batch(keys, vals)
            except BpfError as e:
                if e.errno not in NO_BATCH:
                    raise
                self._batch_ok = False
            else:
                yield from zip(
                    KEY.iter_unpack(memoryview(keys)[: n * KEY.size]),
                    val.iter_unpack(memoryview(vals)[: n * val.size]),
                    strict=True,
                )
                return
        for k, v in table.items_walk():
            yield KEY.unpack(k), val.unpack(v)

    def _entries(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        """(cgroup id, major, minor, dir, ios, bytes) for every map entry."""
        counts = self._open_maps().counts
        for (cg, major, minor, direction, _), (ios, nbytes) in self._raw(
            counts, self._keys, self._vals, VAL
        ):
            yield cg, major, minor, direction, ios, nbytes

    def _totals(self, wanted: set[int] | None) -> dict[int, dict[Device, list[int]]]:
        found: dict[int, dict[Device, list[int]]] = {}
        for cg, major, minor, direction, ios, nbytes in self._entries():
            if wanted is not None and cg not in wanted:
                continue
            dev = self._by_number.get((major, minor))
            if dev is None:
                continue
            # In Counters field order: rios, wios, rbytes, wbytes.
            acc = found.setdefault(cg, {}).setdefault(dev, [0, 0, 0, 0])
            if direction == _DIR_READ:
                acc[0] += ios
                acc[2] += nbytes
            elif direction == _DIR_WRITE:
                acc[1] += ios
                acc[3] += nbytes
        return found

    def _locked_totals(self, wanted: set[int] | None) -> dict[int, dict[Device, list[int]]]:
        with self._lock:
            return self._totals(wanted)

    def totals_by_cgroup(self) -> dict[int, dict[Device, Counters]]:
        """Counters of every cgroup id seen on the data devices, targets or not.

        Id 0 collects requests the block layer charged to no cgroup. For diagnostics
        (where does IO go?) and metrics of IO outside any container.
        """
        return {
            cg: {dev: Counters(*acc) for dev, acc in devs.items()}
            for cg, devs in self._locked_totals(None).items()
        }

    def _latency_entries(
        self, wanted: set[int]
    ) -> Iterator[tuple[int, int, int, int, LatencyHistogram]]:
        """(cgroup id, major, minor, dir, histogram) for the map entries of wanted cgroups
        (histogram objects are built only for those)."""
        table = self._open_maps().latency
        assert table is not None
        for (cg, major, minor, direction, _), val in self._raw(
            table, self._lat_keys, self._lat_vals, LAT
        ):
            if cg in wanted:
                yield cg, major, minor, direction, LatencyHistogram(val[:SLOTS], val[SLOTS])

    def read_latency(self, targets: Sequence[Target]) -> LatencySnapshot | None:
        """Cumulative service-time histograms per target and data device, or None when the
        completion probe is not attached. Like `read`, leaves out targets that are gone."""
        if self.latency_problem is not None:
            return None
        wanted = {t.cgroup_id for t in targets}
        # One map entry per (cgroup, device, direction): no summing needed.
        found: dict[int, dict[Device, dict[int, LatencyHistogram]]] = {}
        with self._lock:
            for cg, major, minor, direction, hist in self._latency_entries(wanted):
                dev = self._by_number.get((major, minor))
                if dev is not None:
                    found.setdefault(cg, {}).setdefault(dev, {})[direction] = hist
        empty = LatencyHistogram()
        nothing_yet = DeviceLatency(empty, empty)  # shared: most targets, most passes
        out: LatencySnapshot = {}
        for target in targets:
            if not under_root(self._root, target.path) or not self._alive(target):
                continue
            per_dev = found.get(target.cgroup_id, {})
            out[target] = {
                dev: DeviceLatency(
                    per_dev[dev].get(_DIR_READ, empty), per_dev[dev].get(_DIR_WRITE, empty)
                )
                if dev in per_dev
                else nothing_yet
                for dev in self._devices
            }
        return out

    def read(self, targets: Sequence[Target]) -> Snapshot:
        found = self._locked_totals({t.cgroup_id for t in targets})
        out: Snapshot = {}
        for target in targets:
            if not under_root(self._root, target.path):
                if target not in self._outside:
                    self._outside.add(target)
                    self._log.warning(
                        "cgroup outside the hierarchy; not sampled",
                        cgroup=str(target.path),
                        root=str(self._root),
                    )
                continue
            if not self._alive(target):
                continue
            counters = zero_counters(self._devices)
            for dev, acc in found.get(target.cgroup_id, {}).items():
                counters[dev] = Counters(*acc)
            out[target] = counters
        self._alive.keep_only(targets)
        return out

    def close(self) -> None:
        """Close the maps and let go of the attachment: the kernel detaches the program
        once no descriptor of it is left (also when this process dies, SIGKILL included)."""
        with self._lock:
            maps, self._maps = self._maps, None
            self._bpf = None
        if maps is not None:
            maps.close()
            self._release()


# ---------------------------------------------------------------- compiling (BCC)


@attrs.frozen
class Loaded:
    """A compiled, loaded and attached program, still held by the BCC object `bpf`."""

    bpf: Any
    info: dict[str, str]
    degraded: str | None
    latency_problem: str | None


def _compile(bcc: Any, source: str, cflags: list[str], headers: Path, described: str) -> Any:
    """Compile, load and attach; SamplerUnavailable with the compiler's/verifier's words."""
    err: list[str] = []
    try:
        with _env("BCC_KERNEL_SOURCE", str(headers)), _captured_stderr() as captured:
            err = captured
            return bcc.BPF(text=source.encode(), cflags=cflags)
    except Exception as e:  # BCC raises bare Exception for compile/load/attach failures
        detail = _tail(err[0]) if err else ""
        raise SamplerUnavailable(
            f"BPF compile/load failed with headers {described}: {e}"
            + (f": {detail}" if detail else "")
        ) from e


def preflight(devices: Sequence[Device]) -> None:
    """The cheap reasons BPF cannot run here, checked before anything is compiled (and
    without importing bcc)."""
    if not devices:
        raise SamplerUnavailable("no data devices to measure")
    if os.geteuid() != 0:
        raise SamplerUnavailable("not root: loading BPF programs needs CAP_BPF/CAP_SYS_ADMIN")
    try:
        found = importlib.util.find_spec("bcc")
    except (ImportError, ValueError) as e:
        found, why = None, str(e)
    else:
        why = "no module named 'bcc'"
    if found is None:
        raise SamplerUnavailable(f"BCC missing (python3-bpfcc not importable: {why})")


def load_program(version: CgroupVersion, log: Logger, opts: BpfOptions) -> Loaded:
    """Compile, load and attach the program with BCC (imported here, in whichever process
    calls this: the loader, or a benchmark); raises SamplerUnavailable with the reason."""
    if os.geteuid() != 0:
        raise SamplerUnavailable("not root: loading BPF programs needs CAP_BPF/CAP_SYS_ADMIN")
    try:
        import bcc
    except ImportError as e:
        raise SamplerUnavailable(f"BCC missing (python3-bpfcc not importable: {e})") from e
    try:
        source = opts.source.read_text()
    except OSError as e:
        raise SamplerUnavailable(f"BPF program source unreadable: {e}") from e
    try:
        headers = find_kernel_headers(opts.release, opts.cache_dir, opts.header_search)
    except HeadersError as e:
        raise SamplerUnavailable(str(e)) from e

    degraded: str | None = None
    btf: BTF | None = None
    latency_problem: str | None = None
    try:
        btf = BTF.from_file(opts.btf_path)
        cflags = blkcg_layout(btf).cflags()
        attach = f"raw tracepoint {TRACEPOINT}"
        try:
            if not opts.latency:
                latency_problem = "latency switched off"
            else:
                cflags += latency_layout(btf).cflags()
                attach += f", raw tracepoint {COMPLETE_TRACEPOINT}"
        except BTFError as le:
            latency_problem = f"completion probe unavailable: {le}"
        if latency_problem is not None:
            cflags.append("-DDG_NO_LATENCY=1")
    except BTFError as e:
        degraded = (
            f"no usable BTF ({e}): counting by the issuing task's cgroup, which misattributes "
            "IO issued by kernel threads (loop workers, writeback)"
        )
        if version is CgroupVersion.V1:
            raise SamplerUnavailable(
                f"no usable BTF ({e}), and the task-cgroup fallback cannot name "
                "cgroup v1 blkio cgroups"
            ) from e
        try:
            ensure_tracefs(opts.tracefs)
        except TracefsError as te:
            raise SamplerUnavailable(f"no usable BTF ({e}) and {te}") from te
        cflags = [
            "-DDG_MODE_TASK=1",
            "-DDG_NO_LATENCY=1",
            f"-DDG_PROBE_READ={probe_read_helper(btf)}",
        ]
        attach = f"tracepoint block:{TRACEPOINT}"
        latency_problem = "no latency without BTF: completions cannot be matched to requests"
    cflags.append(f"-DDG_MAX_ENTRIES={opts.max_entries}")
    cflags.append(f"-DDG_LAT_ENTRIES={opts.latency_entries}")
    cflags.append(f"-DDG_MAX_INFLIGHT={opts.max_inflight}")

    started = time.monotonic()
    try:
        bpf = _compile(bcc, source, cflags, headers.path, headers.describe())
    except SamplerUnavailable as e:
        if latency_problem is not None:
            raise
        # Latency is an extra: a kernel whose verifier refuses the completion probe still
        # gets the IO counts, and says why latency is missing.
        log.warning("BPF latency probe refused", reason=str(e))
        latency_problem = f"completion probe refused by the kernel: {str(e)[-400:]}"
        cflags = [f for f in cflags if not f.startswith(("-DDG_ARG_RQ_COMPLETE", "-DDG_ARG_NR"))]
        cflags.append("-DDG_NO_LATENCY=1")
        attach = attach.split(",")[0]
        bpf = _compile(bcc, source, cflags, headers.path, headers.describe())
    compile_s = time.monotonic() - started
    info = {
        "headers": headers.describe(),
        "headers_path": str(headers.path),
        "attach": attach,
        "compile_seconds": f"{compile_s:.2f}",
        "btf": str(opts.btf_path) if btf is not None else "unavailable",
        "latency": latency_problem or "issue -> completion histograms",
    }
    return Loaded(bpf, info, degraded, latency_problem)


def bcc_maps(bpf: Any, latency: bool) -> dict[str, int]:
    """Map name -> descriptor (BCC's own) of the maps the agent uses."""
    names = ["dg_counts", "dg_devices"] + (["dg_lat"] if latency else [])
    return {name: bpf[name.encode()].map_fd for name in names}


def bcc_map_sizes(bpf: Any, latency: bool) -> dict[str, tuple[int, int]]:
    """Map name -> (key size, value size) as BCC derived them from the C source."""
    names = ["dg_counts", "dg_devices"] + (["dg_lat"] if latency else [])
    out = {}
    for name in names:
        table = bpf[name.encode()]
        out[name] = (ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf))
    return out


def maps_from(fds: dict[str, int], latency: bool) -> Maps:
    """Maps over descriptors now owned by the Maps (closed with it)."""
    opened = {name: BpfMap.from_fd(name, fd) for name, fd in fds.items()}
    return Maps(opened["dg_counts"], opened["dg_devices"], opened["dg_lat"] if latency else None)


def open_bpf_sampler_in_process(
    devices: Sequence[Device],
    cgroup_root: Path,
    version: CgroupVersion,
    log: Logger,
    options: BpfOptions | None = None,
) -> BpfSampler:
    """Compile and attach in this process (BCC and LLVM stay mapped here): for benchmarks
    that reach into the BCC object. The agent uses `open_bpf_sampler`."""
    opts = options or BpfOptions()
    preflight(devices)
    loaded = load_program(version, log, opts)
    bpf = loaded.bpf
    _release_compiler_heap()
    _release_compiler_code()
    latency = loaded.latency_problem is None
    fds: dict[str, int] = {}
    try:
        for name, fd in bcc_maps(bpf, latency).items():
            fds[name] = os.dup(fd)  # the sampler's own, closed with it
        sampler = BpfSampler(
            maps_from(fds, latency),
            devices,
            cgroup_root,
            log,
            loaded.degraded,
            loaded.info,
            bpf.cleanup,
            loaded.latency_problem,
            keep=bpf,
        )
    except Exception as e:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        bpf.cleanup()
        raise SamplerUnavailable(f"cannot use the BPF maps: {e}") from e
    if loaded.degraded:
        log.warning("BPF sampler degraded", reason=loaded.degraded)
    log.info("BPF sampler loaded", **loaded.info)
    return sampler


def open_bpf_sampler(
    devices: Sequence[Device],
    cgroup_root: Path,
    version: CgroupVersion,
    log: Logger,
    options: BpfOptions | None = None,
) -> BpfSampler:
    """Compile, load and attach the program in a short-lived loader process, which hands
    the attachment and the maps over (diskguard.sampler.handoff): BCC, LLVM and clang never
    enter this process. Raises SamplerUnavailable with the reason."""
    from diskguard.sampler.handoff import open_via_loader

    return open_via_loader(devices, cgroup_root, version, log, options or BpfOptions())
