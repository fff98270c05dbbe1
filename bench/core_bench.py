"""Benchmarks of the core agent on this machine's real cgroups, against the fake API server.

The agent runs as a subprocess (`python -m diskguard run`, configured by env vars) so the
RSS and CPU figures are its own; the fake API server runs in a thread of this process, and
every "done" is decided by reading the kernel's own cgroup files.

  1. annotation edit -> kernel limit latency (one pod alone, then with 100 other pods)
  2. full start-up reconcile of 100 and 500 pods x 2 containers (SAMPLER=auto, the
     default, and for 500 pods also SAMPLER=cgroup, which needs no BPF compile)
  3. agent RSS after start-up with 1,000 containers, and idle CPU over a window with
     RESYNC_INTERVAL=60 (default) and 5, and with SAMPLER=cgroup

Needs root, a cgroup IO hierarchy (v1 blkio or v2 io; CGROUP_ROOT overrides where to look,
default /sys/fs/cgroup) and losetup/mkfs.ext4. Everything
made here (cgroups under a private kubelet --cgroup-root, a loop disk, agent processes) is
uniquely named and removed on exit, also after a failure, Ctrl-C or SIGTERM.

    .venv/bin/python bench/core_bench.py            # full run, a few minutes
    .venv/bin/python bench/core_bench.py --quick    # under a minute
    .venv/bin/python bench/core_bench.py --only idle --idle-seconds 20   # memory, idle CPU
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
from benchlib import cpu_seconds, interpreter, sigterm_as_interrupt

from diskguard.model import (
    UNLIMITED,
    CgroupDriver,
    CgroupVersion,
    ContainerRef,
    Device,
    IOLimits,
    QoSClass,
)
from diskguard.node.cgroups import CgroupHierarchy, detect_cgroup
from diskguard.node.kubepods import parse_container_id
from diskguard.node.limits import LimitBackend, backend_for
from diskguard.testing.fakeapi import FakeAPIServer
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.lab import KubeletRoot, LabError, lab_tools_missing, loop_disk

NODE = "bench-node"
PREFIX = "iops-limit"
DEFAULT_LIMITS = IOLimits(riops=500, wiops=500)  # the agent's defaults (CONTAINER_IOPS_LIMIT)
QOS_CYCLE = (QoSClass.BURSTABLE, QoSClass.BESTEFFORT, QoSClass.GUARANTEED)


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- kernel reads


def read_wiops(cgroup: Path, device: Device, version: CgroupVersion) -> int:
    """The write-IOPS limit the kernel holds for `device` in `cgroup` (0 = none set).

    One file, parsed by hand: this runs every millisecond in the latency loop.
    """
    key = f"{device.major}:{device.minor}"
    if version is CgroupVersion.V1:
        text = (cgroup / "blkio.throttle.write_iops_device").read_text()
        for line in text.splitlines():
            dev, _, value = line.partition(" ")
            if dev == key:
                return int(value)
        return 0
    for line in (cgroup / "io.max").read_text().splitlines():
        dev, *pairs = line.split()
        if dev == key:
            for pair in pairs:
                name, _, value = pair.partition("=")
                if name == "wiops":
                    return 0 if value == "max" else int(value)
    return 0


def wait_wiops(
    cgroup: Path,
    device: Device,
    version: CgroupVersion,
    want: int,
    timeout: float,
    interval: float = 0.001,
) -> float:
    """Poll until the kernel holds `want`; return the perf_counter time it was seen."""
    deadline = time.perf_counter() + timeout
    while True:
        with contextlib.suppress(OSError):
            if read_wiops(cgroup, device, version) == want:
                return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(
                f"{cgroup}: write IOPS limit {want} not in the kernel after {timeout}s "
                f"(holds {read_wiops(cgroup, device, version)})"
            )
        time.sleep(interval)


# ---------------------------------------------------------------- the world


@attrs.define
class Pod:
    name: str
    cgroups: list[Path]
    want: IOLimits


@attrs.define
class World:
    """One fake API server and one private kubelet cgroup root on the shared data disk."""

    api: FakeAPIServer
    kubeconfig: Path
    hierarchy: CgroupHierarchy
    kubelet: KubeletRoot
    backend: LimitBackend
    mount: Path
    device: Device
    workdir: Path
    pods: list[Pod] = attrs.field(factory=list)

    def add_pod(
        self,
        name: str,
        containers: int,
        annotations: dict[str, str] | None,
        want: IOLimits,
        qos: QoSClass = QoSClass.BURSTABLE,
    ) -> Pod:
        obj = make_pod(
            name,
            "default",
            NODE,
            containers=tuple((f"c{i}", "busybox:1.36") for i in range(containers)),
            annotations=annotations,
            qos=qos,
        )
        cgroups = []
        for status in obj["status"]["containerStatuses"]:
            runtime, cid = parse_container_id(status["containerID"])
            ref = ContainerRef(
                namespace="default",
                pod=name,
                pod_uid=obj["metadata"]["uid"],
                container=status["name"],
                container_id=cid,
                runtime=runtime,
                qos=qos,
            )
            cgroups.append(self.kubelet.create(ref, CgroupDriver.CGROUPFS))
        self.api.create("pods", obj)
        pod = Pod(name, cgroups, want)
        self.pods.append(pod)
        return pod

    def containers(self) -> list[tuple[Path, IOLimits]]:
        return [(cg, pod.want) for pod in self.pods for cg in pod.cgroups]

    def kernel(self, cgroup: Path) -> IOLimits:
        held = self.backend.read(cgroup)
        return held.get((self.device.major, self.device.minor), UNLIMITED)

    def reset_kernel(self) -> None:
        """Clear every limit we hold, so the next agent start has everything to do."""
        for cgroup, _ in self.containers():
            self.backend.write(cgroup, self.device, UNLIMITED)

    def preset_kernel(self) -> None:
        """Write every expected limit but the first pod's, as if an agent had run before:
        the next agent has one pod to fix (proof it reconciled) and no Events to post."""
        for i, (cgroup, want) in enumerate(self.containers()):
            self.backend.write(cgroup, self.device, UNLIMITED if i < 2 else want)

    def env(self, **extra: str) -> dict[str, str]:
        h = self.hierarchy.path
        # The agent runs the same diskguard as this process (PYTHONPATH passes through).
        inherited = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
        return {
            **inherited,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NODE_NAME": NODE,
            "DATA_MOUNT": str(self.mount),
            "KUBELET_CGROUP_ROOT": self.kubelet.prefix,
            "KUBECONFIG": str(self.kubeconfig),
            "CGROUP_ROOT": str(h.parent if h.name == "blkio" else h),
            "STATE_DIR": str(self.kubeconfig.parent / "state"),
            "LOG_LEVEL": "warning",
            # Loopback and a free port: never collide with another agent on :2112.
            "HTTP_ADDR": "127.0.0.1:0",
            **extra,
        }


@attrs.frozen
class Disk:
    hierarchy: CgroupHierarchy
    mount: Path
    device: Device
    workdir: Path


@contextlib.contextmanager
def world(disk: Disk, tag: str) -> Iterator[World]:
    """A fresh fake API server and kubelet root; both gone on exit, whatever happened."""
    kubelet = KubeletRoot(disk.hierarchy, f"dgbench-{tag}-{uuid.uuid4().hex[:8]}")
    with contextlib.ExitStack() as undo:
        undo.callback(kubelet.cleanup)
        # Bookmarks about once a minute, as a real API server sends them: the idle figures
        # would otherwise count the fake's default one-per-second bookmarks.
        api = undo.enter_context(FakeAPIServer(bookmark_interval=60.0))
        kubeconfig = disk.workdir / f"kubeconfig-{kubelet.name}"
        api.write_kubeconfig(kubeconfig)
        undo.callback(kubeconfig.unlink, missing_ok=True)
        yield World(
            api=api,
            kubeconfig=kubeconfig,
            hierarchy=disk.hierarchy,
            kubelet=kubelet,
            backend=backend_for(disk.hierarchy.version),
            mount=disk.mount,
            device=disk.device,
            workdir=disk.workdir,
        )


# ---------------------------------------------------------------- the agent process


@attrs.define
class AgentProcess:
    proc: subprocess.Popen[bytes]
    started: float  # perf_counter just before Popen
    started_mono: float  # the same instant on time.monotonic (the fake API's request clock)
    log_path: Path
    # (perf_counter, line) for lines matching `watch_for`, stamped on arrival.
    seen: list[tuple[float, str]] = attrs.field(factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"the agent exited with {self.proc.returncode}; its log:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_kib(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
        return out

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))


def _pump(stream: Any, log: TextIO, seen: list[tuple[float, str]], watch_for: str) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        if watch_for and watch_for in line:
            seen.append((time.perf_counter(), line.strip()))
        log.write(line)
    log.flush()


@contextlib.contextmanager
def agent(w: World, watch_for: str = "", **env: str) -> Iterator[AgentProcess]:
    """`python -m diskguard run` with this env; stopped (SIGTERM, then SIGKILL) on exit."""
    log_path = w.workdir / f"agent-{uuid.uuid4().hex[:8]}.log"
    with contextlib.ExitStack() as undo:
        log = undo.enter_context(log_path.open("w"))
        undo.callback(log_path.unlink, missing_ok=True)
        started, started_mono = time.perf_counter(), time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "diskguard", "run"],
            env=w.env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        undo.callback(_stop, proc)
        running = AgentProcess(proc, started, started_mono, log_path)
        pump = threading.Thread(
            target=_pump, args=(proc.stderr, log, running.seen, watch_for), daemon=True
        )
        pump.start()
        # Exit order: stop the agent, then join the pump (it ends when stderr closes).
        undo.callback(pump.join, 10)
        undo.callback(_stop, proc)
        yield running
        running.check_alive()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@attrs.frozen
class Milestones:
    """Seconds from the agent process's start."""

    listed: float  # the fake API received the agent's pod LIST
    watching: float  # ... and its pod WATCH
    applied: float  # every container's kernel files hold the expected limits


def wait_all_applied(w: World, ag: AgentProcess, timeout: float) -> Milestones:
    """Wait until every container's kernel files hold its expected limits.

    The agent never takes a limit back, so a polling pass stops at the first container
    still pending and the next pass resumes there: each file is read about once, and this
    process (which also serves the API) stays out of the agent's way. A full read of all
    four limit files of every container follows.
    """
    version, device = w.hierarchy.version, w.device
    containers = w.containers()
    next_pending = 0
    deadline = ag.started + timeout
    while True:
        while next_pending < len(containers):
            cgroup, want = containers[next_pending]
            if read_wiops(cgroup, device, version) != want.wiops:
                break
            next_pending += 1
        if next_pending == len(containers):
            break
        ag.check_alive()
        if time.perf_counter() > deadline:
            raise BenchError(
                f"{len(containers) - next_pending} of {len(containers)} containers not "
                f"limited after {timeout}s; agent log:\n{ag.log_tail()}"
            )
        time.sleep(0.002)
    done = time.perf_counter()
    wrong = [(cg, want, got) for cg, want in containers if (got := w.kernel(cg)) != want]
    if wrong:
        cg, want, got = wrong[0]
        raise BenchError(
            f"{len(wrong)} containers hold the wrong limits, e.g. {cg}: {got} != {want}"
        )
    listed, watching = pod_requests(w, ag)
    return Milestones(listed, watching, done - ag.started)


def pod_requests(w: World, ag: AgentProcess, timeout: float = 30) -> tuple[float, float]:
    """When the fake API received this agent's first pod LIST and WATCH (s from start)."""

    def at(watch: bool) -> float:
        entry = w.api.wait_for_request(
            lambda r: (
                r.method == "GET"
                and r.path.endswith("/pods")
                and r.time >= ag.started_mono
                and (r.query.get("watch") in ("true", "1")) == watch
            ),
            timeout,
        )
        return entry.time - ag.started_mono

    return at(False), at(True)


# ---------------------------------------------------------------- 1. edit latency


@attrs.frozen
class Latency:
    label: str
    samples: tuple[float, ...]  # seconds from the API edit returning to the kernel showing it
    edit_call: tuple[float, ...]  # seconds the API edit call itself took

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_latency(disk: Disk, edits: int, others: int, gap: float) -> Latency:
    with world(disk, "lat") as w:
        target = w.add_pod("edited", 1, None, DEFAULT_LIMITS)
        for i in range(others):
            w.add_pod(f"other-{i:04d}", 2, None, DEFAULT_LIMITS, QOS_CYCLE[i % 3])
        with agent(w) as ag:
            wait_all_applied(w, ag, timeout=60)
            w.api.clear_requests()  # the log would only grow with each edit's Event
            cgroup = target.cgroups[0]
            samples, calls = [], []
            for k in range(edits):
                value = 1000 + k  # distinct each time, never the default
                t0 = time.perf_counter()
                w.api.patch_annotations(
                    "pods", "default", "edited", {f"{PREFIX}/write-iops": str(value)}
                )
                returned = time.perf_counter()
                seen = wait_wiops(cgroup, w.device, w.hierarchy.version, value, timeout=10)
                samples.append(seen - returned)
                calls.append(returned - t0)
                if k % 50 == 49:
                    ag.check_alive()
                time.sleep(gap)
    label = "1 pod" if not others else f"1 pod + {others} others ({others * 2} containers)"
    return Latency(label, tuple(samples), tuple(calls))


# ---------------------------------------------------------------- 2. start-up


@attrs.frozen
class Startup:
    pods: int
    containers: int
    sampler: str
    runs: tuple[Milestones, ...]
    cpu: tuple[float, ...]  # agent CPU seconds used by then
    rss_kib: tuple[int, ...]  # agent VmRSS by then
    synced_logged: float | None  # one extra LOG_LEVEL=info run: "initial reconcile done"
    done_info: float | None  # all limited, in that info run


def populate(w: World, pods: int) -> None:
    """pods x 2 containers; every other pod annotated, with distinct values."""
    for i in range(pods):
        if i % 2:
            value = 100 + i
            ann = {f"{PREFIX}/write-iops": str(value), f"{PREFIX}/read-bps": "10Mi"}
            want = IOLimits(riops=500, wiops=value, rbps=10 * 2**20)
        else:
            ann, want = None, DEFAULT_LIMITS
        w.add_pod(f"pod-{i:04d}", 2, ann, want, QOS_CYCLE[i % 3])


def bench_startup(disk: Disk, pods: int, repeats: int, sampler: str, with_log_run: bool) -> Startup:
    with world(disk, f"start{pods}") as w:
        populate(w, pods)
        runs, cpus, rss = [], [], []
        for _ in range(repeats):
            w.reset_kernel()
            w.api.clear_requests()
            with agent(w, SAMPLER=sampler) as ag:
                runs.append(wait_all_applied(w, ag, timeout=120))
                cpus.append(ag.cpu_seconds())
                rss.append(ag.memory_kib()["VmRSS"])
        synced = done_info = None
        if with_log_run:
            w.reset_kernel()
            marker = "initial reconcile done"
            with agent(w, watch_for=marker, LOG_LEVEL="info", SAMPLER=sampler) as ag:
                done_info = wait_all_applied(w, ag, timeout=120).applied
                deadline = time.perf_counter() + 10
                while not ag.seen and time.perf_counter() < deadline:
                    time.sleep(0.01)
                if ag.seen:
                    synced = ag.seen[0][0] - ag.started
    return Startup(pods, pods * 2, sampler, tuple(runs), tuple(cpus), tuple(rss), synced, done_info)


# ---------------------------------------------------------------- 3. memory and idle CPU


@attrs.frozen
class Idle:
    containers: int
    sampler: str
    resync: float
    window: float
    rss_start_kib: int  # VmRSS once start-up is done
    rss_kib: int  # VmRSS after the idle window
    anon_kib: int  # ... of which anonymous (heap)
    file_kib: int  # ... and file-backed (mapped libraries: shared, reclaimable)
    hwm_kib: int
    cpu_s: float
    threads: int

    @property
    def core_pct(self) -> float:
        return 100 * self.cpu_s / self.window


def measure_idle(
    ag: AgentProcess, containers: int, sampler: str, resync: float, window: float
) -> Idle:
    rss_start = ag.memory_kib()["VmRSS"]
    before, t0 = ag.cpu_seconds(), time.perf_counter()
    time.sleep(window)
    cpu, elapsed, mem = ag.cpu_seconds() - before, time.perf_counter() - t0, ag.memory_kib()
    ag.check_alive()
    return Idle(
        containers,
        sampler,
        resync,
        elapsed,
        rss_start,
        mem["VmRSS"],
        mem["RssAnon"],
        mem["RssFile"],
        mem["VmHWM"],
        cpu,
        ag.threads(),
    )


def bench_idle(
    disk: Disk,
    pods: int,
    window: float,
    configs: Sequence[tuple[str, float]],
    baseline_window: float,
) -> list[Idle]:
    """RSS and idle CPU per (SAMPLER, RESYNC_INTERVAL), after a baseline without pods.

    The kernel already holds the limits of all pods but one (an agent restart on a
    configured node): no start-up Events are queued, so the window is really idle.
    """
    out = []
    for sampler in dict.fromkeys(s for s, _ in configs):
        with world(disk, "empty") as w, agent(w, SAMPLER=sampler) as ag:
            # Baseline: no pods, so RSS minus this is what the containers cost.
            pod_requests(w, ag)
            time.sleep(2.0)
            out.append(measure_idle(ag, 0, sampler, 60.0, baseline_window))
    with world(disk, "idle") as w:
        populate(w, pods)
        for sampler, resync in configs:
            w.preset_kernel()
            with agent(w, SAMPLER=sampler, RESYNC_INTERVAL=f"{resync:g}") as ag:
                wait_all_applied(w, ag, timeout=120)
                time.sleep(2.0)  # the rest of the initial reconcile
                out.append(measure_idle(ag, pods * 2, sampler, resync, window))
                # Still correct after idling (resyncs must not have disturbed anything).
                wait_all_applied(w, ag, timeout=5)
    return out


# ---------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_report(
    command: str,
    lat: list[Latency],
    starts: list[Startup],
    idle: list[Idle],
    load: tuple[tuple[float, ...], tuple[float, ...]],
    out: Callable[[str], None] = print,
) -> None:
    out("")
    out("=" * 78)
    out(f"command: {command}")
    out(
        f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, python "
        f"{sys.version.split()[0]}"
    )
    start, end = ("/".join(f"{v:.2f}" for v in avg) for avg in load)
    out(f"load average (1/5/15 min) at start {start}, at end {end}")
    out("agent: python -m diskguard run, LOG_LEVEL=warning, defaults otherwise (SAMPLER=auto)")
    out("")
    out(
        "1. annotation edit -> kernel limit (ms from the API edit returning to "
        "write_iops showing it)"
    )
    out(f"   {'scenario':<40}{'n':>5}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for r in lat:
        out(
            f"   {r.label:<40}{len(r.samples):>5}{ms(r.pct(50)):>8}{ms(r.pct(90)):>8}"
            f"{ms(r.pct(99)):>8}{ms(max(r.samples)):>8}"
        )
    out("")
    out("2. start-up reconcile: agent process start -> every container's kernel files as expected")
    out(
        f"   {'pods':>5}{'ctrs':>6}{'SAMPLER':>8}{'LIST at':>9}{'all at':>8}{'ctrs/s':>8}"
        f"{'after LIST':>11}{'CPU s':>7}{'RSS MiB':>8}  all at, per run"
    )
    for s in starts:
        listed = statistics.median(r.listed for r in s.runs)
        done = statistics.median(r.applied for r in s.runs)
        after = statistics.median(r.applied - r.listed for r in s.runs)
        runs = " ".join(f"{r.applied:.2f}" for r in s.runs)
        out(
            f"   {s.pods:>5}{s.containers:>6}{s.sampler:>8}{listed:>8.2f}s{done:>7.2f}s"
            f"{s.containers / done:>8.0f}{after:>10.2f}s{statistics.median(s.cpu):>7.2f}"
            f"{statistics.median(s.rss_kib) / 1024:>8.1f}  {runs}"
        )
    for s in starts:
        if s.done_info is not None:
            synced = "not seen" if s.synced_logged is None else f"{s.synced_logged:.2f} s"
            out(
                f"   {s.containers} ctrs, SAMPLER={s.sampler}, LOG_LEVEL=info: 'initial "
                f"reconcile done' logged at {synced},"
            )
            out(f"   all limited at {s.done_info:.2f} s")
    out(
        "   (medians over the runs. LIST at: process start to the agent's pod LIST reaching "
        "the API:"
    )
    out(
        "   interpreter, imports, config, node checks, sampler set-up. after LIST: list, "
        "plan, apply."
    )
    out("   ctrs/s: containers / 'all at', end to end. CPU s, RSS: the agent's, at 'all at')")
    out("")
    out("3. agent memory and idle CPU")
    out(
        f"   {'ctrs':>6}{'SAMPLER':>8}{'RESYNC':>7}{'RSS start':>10}{'RSS end':>8}"
        f"{'anon':>6}{'file':>6}{'VmHWM':>7}{'window':>7}{'CPU s':>6}{'% core':>7}"
        f"{'thr':>4}"
    )
    for i in idle:
        out(
            f"   {i.containers:>6}{i.sampler:>8}{i.resync:>6g}s{i.rss_start_kib / 1024:>10.1f}"
            f"{i.rss_kib / 1024:>8.1f}{i.anon_kib / 1024:>6.1f}{i.file_kib / 1024:>6.1f}"
            f"{i.hwm_kib / 1024:>7.1f}{i.window:>6.1f}s{i.cpu_s:>6.2f}{i.core_pct:>6.2f}%"
            f"{i.threads:>4}"
        )
    out("   (MiB. RSS end = anon (heap) + file (mapped libraries, shared with other processes).")
    out("   0 ctrs: the baseline, no pods. Windows begin ~2 s after start-up,")
    out("   on a node whose kernel already held the limits: no start-up Events pending)")
    out("=" * 78)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small version: 50 pods, 50 edits, one run each, 5 s idle windows",
    )
    p.add_argument("--edits", type=int, help="annotation edits per latency scenario")
    p.add_argument("--repeats", type=int, help="start-up runs per size")
    p.add_argument("--idle-seconds", type=float, help="idle CPU window")
    p.add_argument("--idle-pods", type=int, help="pods (x 2 containers) in the idle section")
    p.add_argument(
        "--only",
        choices=("latency", "startup", "idle"),
        help="run one section (e.g. the memory figures alone: --only idle)",
    )
    return p.parse_args(argv)


@attrs.frozen
class Plan:
    edits: int
    others: int  # pods beside the edited one in the second latency scenario
    startups: tuple[tuple[int, str, bool], ...]  # (pods, SAMPLER, also a LOG_LEVEL=info run)
    repeats: int
    idle_pods: int
    idle: tuple[tuple[str, float], ...]  # (SAMPLER, RESYNC_INTERVAL)
    window: float
    baseline_window: float


FULL = Plan(
    edits=200,
    others=100,
    startups=((100, "auto", False), (500, "auto", True), (500, "cgroup", False)),
    repeats=3,
    idle_pods=500,
    idle=(("auto", 60.0), ("auto", 5.0), ("cgroup", 60.0)),
    window=30.0,
    baseline_window=10.0,
)
QUICK = Plan(
    edits=50,
    others=50,
    startups=((50, "auto", True),),
    repeats=1,
    idle_pods=50,
    idle=(("auto", 60.0), ("auto", 5.0)),
    window=5.0,
    baseline_window=5.0,
)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = attrs.evolve(
        plan,
        edits=args.edits or plan.edits,
        repeats=args.repeats or plan.repeats,
        window=args.idle_seconds or plan.window,
        idle_pods=args.idle_pods or plan.idle_pods,
    )
    wanted = {args.only} if args.only else {"latency", "startup", "idle"}
    command = shlex.join([interpreter(), "bench/core_bench.py", *argv])

    if os.geteuid() != 0:
        print("core_bench: needs root (cgroups, loop device)", file=sys.stderr)
        return 2
    missing = lab_tools_missing()
    if missing:
        print(f"core_bench: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    hierarchy = detect_cgroup(os.environ.get("CGROUP_ROOT", "/sys/fs/cgroup"), None)

    print(f"command: {command}")
    log = print
    load_start = os.getloadavg()
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as undo:
            workdir = Path(undo.enter_context(tempfile.TemporaryDirectory(prefix="dgbench-")))
            ld = undo.enter_context(loop_disk(workdir / "disk", size_mib=64))
            assert ld.mount is not None
            disk = Disk(hierarchy, ld.mount, ld.device, workdir)
            log(
                f"cgroup {hierarchy.version.value} at {hierarchy.path}, data disk "
                f"{ld.node} ({ld.device}) on {ld.mount}"
            )

            lat: list[Latency] = []
            for others in (0, plan.others) if "latency" in wanted else ():
                log(f"1. edit latency: {plan.edits} edits, {others} other pods ...")
                lat.append(bench_latency(disk, plan.edits, others, gap=0.01))
            starts: list[Startup] = []
            for pods, sampler, log_run in plan.startups if "startup" in wanted else ():
                log(
                    f"2. start-up: {pods} pods x 2 containers, SAMPLER={sampler}, "
                    f"{plan.repeats} run(s) ..."
                )
                starts.append(bench_startup(disk, pods, plan.repeats, sampler, log_run))
            idle: list[Idle] = []
            if "idle" in wanted:
                log(
                    f"3. memory and idle CPU: {plan.idle_pods * 2} containers, "
                    f"{plan.window:g} s windows ..."
                )
                idle = bench_idle(
                    disk, plan.idle_pods, plan.window, plan.idle, plan.baseline_window
                )
    except KeyboardInterrupt:
        print("core_bench: interrupted; everything created was removed", file=sys.stderr)
        return 130
    except (BenchError, LabError) as exc:
        print(f"core_bench: failed: {exc}", file=sys.stderr)
        return 1
    print_report(command, lat, starts, idle, (load_start, os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
