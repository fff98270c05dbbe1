"""Sampler figures: accuracy, IO overhead (with the completion probe), map memory, cost per
sampling pass, completion-probe cost, compile time, RSS, BTF parse.

Needs root, BCC, kernel headers, fio and a cgroup IO hierarchy. Prints a small report;
creates its own loop disk and cgroups (unique names) and removes them again.

    .venv/bin/python bench/sampler_bench.py [--rounds 16] [--seconds 1] [--cgroups 1000]
        [--only btf compile accuracy maps pass overhead probecost]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The test suite's kernel fixtures, by their one import path (tests/ is a package).
sys.path.insert(0, str(REPO))

from diskguard.model import CgroupVersion, Device  # noqa: E402
from diskguard.node.cgroups import CgroupHierarchy, detect_cgroup  # noqa: E402
from diskguard.sampler.base import Target  # noqa: E402

# In process (not the agent's loader path): the benchmarks toggle BCC's attachments.
from diskguard.sampler.bpf import (  # noqa: E402
    BpfOptions,
    BpfSampler,
    open_bpf_sampler_in_process,
)
from diskguard.sampler.btf import BTF, VMLINUX_BTF  # noqa: E402
from diskguard.sampler.cgroupfs import CgroupSampler  # noqa: E402
from diskguard.sampler.latency import latency_between  # noqa: E402
from diskguard.testing.lab import FioResult, fio_result, start_fio  # noqa: E402
from tests.kernel_fixtures import (  # noqa: E402
    loop_disk_ctx,
    prepare_fio_file,
    remove_cgroup_tree,
)


class QuietLog:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        print(f"  warning: {event} {kw}")


def fio(
    cgroup: Path,
    directory: Path,
    rw: str,
    *,
    seconds: float = 0,
    ios: int = 0,
    extra: tuple[str, ...] = (),
) -> FioResult:
    """One 4k psync O_DIRECT job in the cgroup: for `seconds`, or `ios` IOs (lab's fio)."""
    proc = start_fio(
        cgroup, directory, rw, runtime=seconds or None, number_ios=ios or None, extra=extra
    )
    return fio_result(proc, timeout=(seconds or 600) + 60)


@contextlib.contextmanager
def bench_cgroup(hier: CgroupHierarchy) -> Iterator[Path]:
    top = hier.path / f"dgbench_{uuid.uuid4().hex[:10]}"
    top.mkdir()
    if hier.version is CgroupVersion.V2:
        (top / "cgroup.subtree_control").write_text("+io")
    try:
        yield top
    finally:
        remove_cgroup_tree(top)


def accuracy(hier: CgroupHierarchy, top: Path, disk: Device, mnt: Path, bpf: BpfSampler) -> None:
    print("\n== accuracy: 4k O_DIRECT, 5000 IOs per direction, one cgroup")
    cg = top / "accuracy"
    cg.mkdir()
    target = Target.of(cg)
    kernel = CgroupSampler([disk], hier.path, hier.version, QuietLog())
    for rw, side, field in (("randread", "read", "rios"), ("randwrite", "write", "wios")):
        k0, b0 = kernel.read([target])[target][disk], bpf.read([target])[target][disk]
        res = fio(cg, mnt, rw, ios=5000)
        k1, b1 = kernel.read([target])[target][disk], bpf.read([target])[target][disk]
        f = getattr(res, f"{side}_ios")
        b = getattr(b1, field) - getattr(b0, field)
        k = getattr(k1, field) - getattr(k0, field)
        print(f"  {rw:9}: fio {f}  bpf {b}  kernel {k}  bpf/fio {b / f:.4f}  ", end="")
        print(f"bpf/kernel {b / k:.4f}")


PROG = b"raw_tracepoint__block_rq_issue"
# The completion probe (latency histograms), attached with the issue probe when available.
PROGS = {b"block_rq_issue": PROG, b"block_rq_complete": b"raw_tracepoint__block_rq_complete"}


def _attach(s: BpfSampler, on: bool) -> None:
    # Bench-only reach into the BCC object: toggling the attachment keeps the programs
    # loaded, so no compile burns CPU next to an "on" round.
    bpf = s._bpf
    for tp, prog in PROGS.items():
        if prog not in bpf.funcs and tp != b"block_rq_issue":
            continue  # built without latency
        attached = tp in bpf.raw_tracepoint_fds
        if on and not attached:
            bpf.attach_raw_tracepoint(tp=tp, fn_name=prog)
        elif attached and not on:
            bpf.detach_raw_tracepoint(tp)


def maps_memory(bpf: BpfSampler) -> None:
    """Kernel memory of each map (the kernel's memlock figure; maps are preallocated)."""
    print("\n== BPF maps (max entries, kernel memory from fdinfo memlock)")
    total = 0
    for name in (b"dg_counts", b"dg_devices", b"dg_lat", b"dg_start"):
        try:
            table = bpf._bpf[name]
        except KeyError:
            continue
        info = dict(
            line.split(":", 1)
            for line in Path(f"/proc/self/fdinfo/{table.map_fd}").read_text().splitlines()
        )
        memlock = int(info.get("memlock", "0"))
        total += memlock
        entries, ksize, vsize = (
            int(info.get(k, "0")) for k in ("max_entries", "key_size", "value_size")
        )
        print(
            f"  {name.decode():10} max_entries {entries:>6}  key {ksize:>3} B  "
            f"value {vsize:>3} B  memlock {memlock / 2**20:6.2f} MiB"
        )
    print(f"  total {total / 2**20:.2f} MiB")


def overhead(
    hier: CgroupHierarchy,
    top: Path,
    disk: Device,
    mnt: Path,
    bpf: BpfSampler,
    rounds: int,
    seconds: float,
) -> None:
    probes = "issue + completion probes" if bpf.latency_problem is None else "issue probe"
    print(
        f"\n== overhead: fio 4k psync QD1 on the loop disk, {rounds} pairs of {seconds:g}s runs "
        f"in random order, sampler ({probes}) attached vs detached"
    )
    cg = top / "overhead"
    cg.mkdir()
    rng = random.Random(1)
    for rw, side in (("randread", "read"), ("randwrite", "write")):
        ratios, on_all, off_all = [], [], []
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            # Random order per pair: background load on a shared machine comes in bursts
            # that a fixed order would turn into a bias.
            order = [False, True]
            rng.shuffle(order)
            got: dict[bool, float] = {}
            for on in order:
                _attach(bpf, on)
                res = fio(cg, mnt, rw, seconds=seconds)
                got[on] = getattr(res, f"{side}_iops")
                cpu[on].append(res.cpu_us_per_io)
            ratios.append(got[True] / got[False])
            on_all.append(got[True])
            off_all.append(got[False])
        _attach(bpf, True)
        quart = statistics.quantiles(ratios, n=4)
        print(
            f"  {rw:9}: detached {statistics.median(off_all):,.0f} IOPS, attached "
            f"{statistics.median(on_all):,.0f} IOPS (medians); attached/detached geometric mean "
            f"{statistics.geometric_mean(ratios):.3f}, median {statistics.median(ratios):.3f}, "
            f"quartiles {quart[0]:.3f}..{quart[2]:.3f}; fio CPU per IO "
            f"{statistics.median(cpu[False]):.2f} us detached, "
            f"{statistics.median(cpu[True]):.2f} us attached"
        )
    # The program's own cost, from the kernel's BPF run-time statistics (switched on only
    # here: they add two clock reads to every run of every BPF program on the host).
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats.read_text().strip()
    fds = {
        tp.decode(): bpf._bpf.funcs[prog].fd for tp, prog in PROGS.items() if prog in bpf._bpf.funcs
    }
    stats.write_text("1")
    try:
        before = {tp: _prog_stats(fd) for tp, fd in fds.items()}
        fio(cg, mnt, "randrw", seconds=seconds * 2)
        after = {tp: _prog_stats(fd) for tp, fd in fds.items()}
    finally:
        stats.write_text(old_stats)
    issued = max(after["block_rq_issue"][1] - before["block_rq_issue"][1], 1)
    total_ns = 0
    for tp in fds:
        runs = after[tp][1] - before[tp][1]
        spent = after[tp][0] - before[tp][0]
        total_ns += spent
        print(
            f"  program run time {tp}: {spent / max(runs, 1):.0f} ns per run over {runs:,} runs "
            "(bpf_stats)"
        )
    print(f"  per request, all probes: {total_ns / issued:.0f} ns over {issued:,} requests")


def probe_cost(
    hier: CgroupHierarchy,
    top: Path,
    disk: Device,
    mnt: Path,
    full: BpfSampler,
    opts: BpfOptions,
    rounds: int,
    seconds: float,
) -> None:
    """Marginal cost of latency: the program built with and without the completion probe,
    attached in turn (random order per round) under the same fio load, timed by bpf_stats."""
    import attrs

    print(
        f"\n== completion probe cost: {rounds} rounds of {seconds:g}s fio randrw, program with "
        "latency vs without, attached in turn"
    )
    lean = open_bpf_sampler_in_process(
        [disk], hier.path, hier.version, QuietLog(), attrs.evolve(opts, latency=False)
    )
    cg = top / "probecost"
    cg.mkdir()
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats.read_text().strip()
    per: dict[str, list[float]] = {"with latency": [], "without": []}
    parts: dict[str, list[float]] = {"issue": [], "complete": []}
    rng = random.Random(2)
    stats.write_text("1")
    try:
        for _ in range(rounds):
            order = [("with latency", full), ("without", lean)]
            rng.shuffle(order)
            for name, sampler in order:
                other = lean if sampler is full else full
                _attach(other, False)
                _attach(sampler, True)
                fds = [sampler._bpf.funcs[p].fd for p in PROGS.values() if p in sampler._bpf.funcs]
                before = [_prog_stats(fd) for fd in fds]
                fio(cg, mnt, "randrw", seconds=seconds)
                after = [_prog_stats(fd) for fd in fds]
                spent = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                issued = after[0][1] - before[0][1]
                per[name].append(spent / max(issued, 1))
                if sampler is full and len(fds) == 2:
                    for part, a, b in zip(parts, after, before, strict=True):
                        parts[part].append((a[0] - b[0]) / max(a[1] - b[1], 1))
    finally:
        stats.write_text(old_stats)
        _attach(lean, False)
        lean.close()
        _attach(full, True)
    w, wo = statistics.median(per["with latency"]), statistics.median(per["without"])
    print(
        f"  ns per request (all probes, medians): with latency {w:.0f}, without {wo:.0f}; "
        f"completion probe and start-time bookkeeping add {w - wo:.0f} ns"
    )
    if parts["issue"]:
        print(
            f"  with latency, per run: issue probe {statistics.median(parts['issue']):.0f} ns, "
            f"completion probe {statistics.median(parts['complete']):.0f} ns"
        )


def _prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) the kernel keeps for a program while bpf_stats are on."""
    info = dict(
        line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    )
    return int(info.get("run_time_ns", "0")), int(info.get("run_cnt", "0"))


def pass_cost(
    hier: CgroupHierarchy, top: Path, disk: Device, mnt: Path, bpf: BpfSampler, n: int
) -> None:
    print(f"\n== one sampling pass over {n} cgroups (each did 1 read + 1 write on the disk)")
    parent = top / "many"
    parent.mkdir()
    if hier.version is CgroupVersion.V2:
        (parent / "cgroup.subtree_control").write_text("+io")
    path = prepare_fio_file(mnt, 64)
    script = (
        'for d in "$@"; do (echo $BASHPID > "$d/cgroup.procs"; '
        # Offsets stay inside the 64 MiB file: past its end a read does no IO and a write
        # would grow it.
        f"dd if={path} of=/dev/null bs=4k count=1 skip=$((RANDOM % 16000)) iflag=direct "
        "status=none; "
        f"dd if=/dev/zero of={path} bs=4k count=1 seek=$((RANDOM % 16000)) oflag=direct "
        "conv=notrunc "
        "status=none); done"
    )
    dirs = []
    for i in range(n):
        d = parent / f"c{i}"
        d.mkdir()
        dirs.append(d)
    started = time.monotonic()
    subprocess.run(["bash", "-c", script, "bash", *map(str, dirs)], check=True)
    print(f"  (generated IO in {n} cgroups in {time.monotonic() - started:.1f}s)")
    targets = [Target.of(d) for d in dirs]
    kernel = CgroupSampler([disk], hier.path, hier.version, QuietLog())
    kernel.read(targets)  # arm (v1) outside the measurement

    def cpu_ms(fn: Any, reps: int = 5) -> float:
        samples = []
        for _ in range(reps):
            t = time.process_time()
            fn()
            samples.append((time.process_time() - t) * 1000)
        return statistics.median(samples)

    snap = bpf.read(targets)
    seen = sum(1 for t in targets if snap[t][disk].rios and snap[t][disk].wios)
    b = cpu_ms(lambda: bpf.read(targets))
    raw = cpu_ms(lambda: list(bpf._entries()))  # map read alone, without per-target work
    k = cpu_ms(lambda: kernel.read(targets))
    lat = bpf.read_latency(targets)
    lat_ms = window_ms = None
    if lat is not None:  # None: the completion probe is not attached
        lat_ms = cpu_ms(lambda: bpf.read_latency(targets))
        window_ms = cpu_ms(lambda: latency_between(lat, bpf.read_latency(targets) or {})) - lat_ms
    timed = sum(1 for t in (lat or {}) if lat and lat[t][disk].read.count)
    print(
        f"  bpf read():     {b:7.1f} ms CPU  ({seen}/{n} cgroups with both directions counted;"
        f" map walk alone {raw:.1f} ms)"
    )
    if lat_ms is not None:
        print(
            f"  bpf read_latency(): {lat_ms:7.1f} ms CPU  ({timed}/{n} cgroups with a read timed;"
            " histograms of both directions); interval deltas for /status and top "
            f"{window_ms:.1f} ms more"
        )
    files = "io.stat" if hier.version is CgroupVersion.V2 else "2 blkio.throttle files"
    print(f"  cgroup read():  {k:7.1f} ms CPU  ({files} per cgroup)")
    print(f"  ratio cgroup/bpf: {k / b:.2f}")
    saturation_cost(hier, disk, targets, cpu_ms)


def saturation_cost(
    hier: CgroupHierarchy, disk: Device, targets: list[Target], cpu_ms: Any
) -> None:
    """The saturation monitor's share of a pass beside the eBPF sampler: with every
    container limited and none doing IO (the common case), and with all of them busy (the
    worst: each one's cgroup counters are read as well)."""
    from diskguard.agent.saturation import SaturationMonitor
    from diskguard.model import ContainerKey, ContainerRef, IOLimits, QoSClass, Rates, Runtime
    from diskguard.node.applier import ApplyResult
    from diskguard.policy.saturation import SaturationEvents

    reader = CgroupSampler([disk], hier.path, hier.version, QuietLog(), arm=False)
    monitor = SaturationMonitor(reader, SaturationEvents(60, 3600.0), lambda _: None, {})
    keys = {ContainerKey(f"uid-{i}", "c"): t for i, t in enumerate(targets)}
    results = {
        key: ApplyResult(
            ContainerRef("ns", f"p{i}", key.pod_uid, "c", f"id{i}", Runtime.CONTAINERD,
                         QoSClass.BURSTABLE),
            t.path,
            kernel=((disk, IOLimits(500, 500)),),
        )
        for i, (key, t) in enumerate(keys.items())
    }  # fmt: skip
    clock = [0.0]

    def one_pass(per_target: dict[Target, dict[Device, Rates]]) -> None:
        clock[0] += 1.0
        bio = monitor.read(monitor.bio_targets())
        monitor.update(clock[0], clock[0], 1.0, keys, {}, per_target, bio, results, lambda: None)

    idle = {t: {disk: Rates()} for t in targets}
    busy = {t: {disk: Rates(wiops=1.0)} for t in targets}
    idle_ms = cpu_ms(lambda: one_pass(idle))
    for _ in range(3):  # onto the bio list, and a baseline
        one_pass(busy)
    busy_ms = cpu_ms(lambda: one_pass(busy))
    print(
        f"  saturation (bpf sampler beside), {len(targets)} limited containers: "
        f"{idle_ms:.1f} ms CPU per pass none busy, {busy_ms:.1f} ms all busy "
        "(their cgroup counters read too)"
    )


def compile_and_rss(hier: CgroupHierarchy, disk: Device, opts: BpfOptions) -> None:
    print("\n== BCC compile + load time, RSS (fresh process each)")
    child = (
        "import sys, json, time, resource\n"
        "from pathlib import Path\n"
        "from diskguard.model import Device, CgroupVersion\n"
        "from diskguard.sampler.bpf import open_bpf_sampler_in_process, BpfOptions\n"
        "def rss():\n"
        "    f = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "    return '/'.join(str(int(f[k].split()[0]) // 1024) for k in"
        " ('VmRSS', 'RssAnon', 'RssFile'))\n"
        "class L:\n"
        "    def info(self, *a, **k): pass\n"
        "    def warning(self, *a, **k): pass\n"
        "import bcc\n"
        "before = rss()\n"
        "t = time.monotonic()\n"
        f"s = open_bpf_sampler_in_process([Device({disk.major}, {disk.minor})], "
        f"Path('{hier.path}'), "
        f"CgroupVersion('{hier.version.value}'), L(),"
        f" BpfOptions(cache_dir=Path('{opts.cache_dir}')))\n"
        "total = time.monotonic() - t\n"
        "after = rss()\n"
        "s.close()\n"
        "print(json.dumps({'compile': float(s.info['compile_seconds']), 'open': total,"
        " 'rss_before': before, 'rss_loaded': after, 'rss_closed': rss()}))\n"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        runs.append(json.loads(out))
    for r in runs:
        print(
            f"  compile+load {r['compile']:.2f}s (open_bpf_sampler total {r['open']:.2f}s); "
            f"RSS total/anon/file: python+bcc imported {r['rss_before']} MiB, program loaded "
            f"{r['rss_loaded']} MiB, after close {r['rss_closed']} MiB"
        )


def btf_parse() -> None:
    print("\n== BTF: our reader vs bpftool JSON")
    size = VMLINUX_BTF.stat().st_size
    t = time.perf_counter()
    btf = BTF.from_file()
    btf.member("blkcg", "css.cgroup")
    ours = time.perf_counter() - t
    t = time.perf_counter()
    dump = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(VMLINUX_BTF)], capture_output=True, check=True
    ).stdout
    dumped = time.perf_counter() - t
    t = time.perf_counter()
    json.loads(dump)
    parsed = time.perf_counter() - t
    print(
        f"  vmlinux BTF {size / 2**20:.1f} MiB; our parse + lookup {ours * 1000:.0f} ms; "
        f"bpftool JSON {len(dump) / 2**20:.1f} MiB: dump {dumped * 1000:.0f} ms + "
        f"json.loads {parsed * 1000:.0f} ms"
    )


SECTIONS = ["btf", "compile", "accuracy", "maps", "pass", "overhead", "probecost"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1)
    ap.add_argument("--cgroups", type=int, default=1000)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS)
    args = ap.parse_args()
    only = set(args.only)
    if os.geteuid() != 0:
        sys.exit("needs root")
    hier = detect_cgroup("/sys/fs/cgroup", None)
    print(
        f"kernel {os.uname().release}, cgroup {hier.version.value} at {hier.path}, "
        f"{os.cpu_count()} CPUs"
    )
    if "btf" in only:
        btf_parse()
    with tempfile.TemporaryDirectory(prefix="dgbench") as tmp:
        opts = BpfOptions(cache_dir=Path(tmp) / "cache")
        with loop_disk_ctx(Path(tmp) / "disk", size_mib=256) as ld, bench_cgroup(hier) as top:
            assert ld.mount is not None
            prepare_fio_file(ld.mount, 64)
            if "compile" in only:
                compile_and_rss(hier, ld.device, opts)
            bpf = open_bpf_sampler_in_process(
                [ld.device], hier.path, hier.version, QuietLog(), opts
            )
            try:
                print(f"  headers used: {bpf.info['headers']}")
                print(f"  latency: {bpf.info['latency']}")
                if "accuracy" in only:
                    accuracy(hier, top, ld.device, ld.mount, bpf)
                if "maps" in only:
                    maps_memory(bpf)
                if "pass" in only:
                    pass_cost(hier, top, ld.device, ld.mount, bpf, args.cgroups)
                if "overhead" in only:
                    overhead(hier, top, ld.device, ld.mount, bpf, args.rounds, args.seconds)
                if "probecost" in only:
                    probe_cost(hier, top, ld.device, ld.mount, bpf, opts, 8, args.seconds)
            finally:
                bpf.close()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"\nbench process max RSS {max_rss} MiB")


if __name__ == "__main__":
    main()
