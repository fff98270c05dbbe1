"""Soak benchmark: the agent under a steady stream of pod churn on real cgroups.

N pods x 2 containers in a private kubelet --cgroup-root on a loop-device data disk, the
agent as a subprocess (`python -m diskguard run`) against an in-process fake API server,
and R pod events per second for D seconds: pods created and deleted (with their cgroups),
containers restarted under new IDs in new cgroups (some pod statuses arriving before the
cgroup), and annotation edits. Reported:

  * missed / wrong limits: every live container's kernel files against what its pod's
    annotations ask for (an independent oracle of the README's priority table), at a
    checkpoint every 30 s and at the end, each after the churn pauses and the agent gets
    `--settle` seconds. Both must be 0.
  * reconcile lag (annotation edit returned by the API -> the kernel file shows it),
    sampled on a subset of "probe" pods that only the probe edits: p50 / p99 / max.
  * agent RSS at start (after the initial reconcile) and at the end (drift), from /proc.
  * agent CPU (utime + stime) over the churn, as a share of one core.
  * the agent's cost to the API server, from the fake server's traffic meter, by kind of
    call: the start (initial lists and watches), a quiet hour (projected from a `--quiet`
    window with no pod events) and per 1,000 pod events of churn. The fake sends a watch
    bookmark every 60 s, as kube-apiserver's watch cache does.

Needs root, a cgroup IO hierarchy (v1 blkio or v2 io; CGROUP_ROOT overrides where to look)
and losetup/mkfs.ext4. Everything made here (cgroups, the loop disk, the agent) is uniquely
named and removed on exit, also after a failure, Ctrl-C or SIGTERM.

    .venv/bin/python bench/soak.py                 # 500 pods, 20 events/s, 5 minutes
    .venv/bin/python bench/soak.py --quick         # 100 pods, 60 s: what CI can afford
    .venv/bin/python bench/soak.py --pods 200 --duration 120
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
from benchlib import cpu_seconds, interpreter, sigterm_as_interrupt
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import (
    UNLIMITED,
    CgroupDriver,
    ContainerRef,
    Device,
    IOLimits,
    QoSClass,
)
from diskguard.node.cgroups import CgroupHierarchy, detect_cgroup
from diskguard.node.kubepods import parse_container_id
from diskguard.node.limits import LimitBackend, backend_for
from diskguard.testing.fakeapi import FakeAPIServer
from diskguard.testing.fakeapi.control import Traffic
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.lab import KubeletRoot, LabError, lab_tools_missing, loop_disk
from diskguard.testing.oracle import expected_limits

NODE = "soak-node"
PREFIX = "iops-limit"
QOS = (QoSClass.BURSTABLE, QoSClass.BESTEFFORT, QoSClass.GUARANTEED)
PROBE_TIMEOUT = 10.0


class SoakError(RuntimeError):
    pass


# ---------------------------------------------------------------- the node's pods


@attrs.define
class Container:
    name: str
    ref: ContainerRef
    cgroup: Path | None  # None: the status names it, the runtime has not made it yet


@attrs.define
class SoakPod:
    name: str
    uid: str
    qos: QoSClass
    driver: CgroupDriver
    containers: list[Container]
    annotations: dict[str, str]
    probe: bool = False


@attrs.define
class Counts:
    creates: int = 0
    deletes: int = 0
    restarts: int = 0
    restarts_status_first: int = 0
    edits: int = 0
    probes: int = 0


@attrs.define
class Node:
    """The fake API server's pods and the kubelet-layout cgroups that go with them."""

    api: FakeAPIServer
    hierarchy: CgroupHierarchy
    kubelet: KubeletRoot
    backend: LimitBackend
    device: Device
    rng: random.Random
    pods: dict[str, SoakPod] = attrs.field(factory=dict)
    # (due, pod name, container index): statuses that arrived before their cgroup
    pending: list[tuple[float, str, int]] = attrs.field(factory=list)
    counts: Counts = attrs.field(factory=Counts)
    serial: int = 0
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def create(
        self, annotations: dict[str, str | None] | None = None, probe: bool = False
    ) -> SoakPod:
        self.serial += 1
        name = f"{'probe' if probe else 'pod'}-{self.serial:06d}"
        qos = QOS[self.serial % 3]
        driver = CgroupDriver.SYSTEMD if self.serial % 4 == 0 else CgroupDriver.CGROUPFS
        ann = {k: v for k, v in (annotations or {}).items() if v is not None}
        obj = make_pod(
            name,
            "default",
            NODE,
            containers=(("c0", "img"), ("c1", "img")),
            annotations=ann or None,
            qos=qos,
        )
        containers = []
        for status in obj["status"]["containerStatuses"]:
            runtime, cid = parse_container_id(status["containerID"])
            ref = ContainerRef(
                "default", name, obj["metadata"]["uid"], status["name"], cid, runtime, qos
            )
            containers.append(Container(status["name"], ref, self.kubelet.create(ref, driver)))
        self.api.create("pods", obj)
        pod = SoakPod(name, obj["metadata"]["uid"], qos, driver, containers, ann, probe)
        with self.lock:
            self.pods[name] = pod
        self.counts.creates += 1
        return pod

    def delete(self, name: str) -> None:
        with self.lock:
            pod = self.pods.pop(name)
        self.api.delete("pods", "default", name)
        self.pending = [p for p in self.pending if p[1] != name]
        for c in pod.containers:  # the kubelet removes the containers' and the pod's cgroups
            if c.cgroup is not None:
                _rmdir(c.cgroup)
        for c in pod.containers:
            if c.cgroup is not None:
                _rmdir(c.cgroup.parent)
        self.counts.deletes += 1

    def restart(self, name: str, index: int, status_first: bool) -> None:
        pod = self.pods[name]
        old = pod.containers[index]
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        ref = attrs.evolve(old.ref, container_id=cid)
        new = Container(old.name, ref, None)
        if not status_first:
            new.cgroup = self.kubelet.create(ref, pod.driver)

        def point(obj: dict[str, object]) -> None:
            status = obj["status"]["containerStatuses"][index]  # type: ignore[index]
            status["containerID"] = f"containerd://{cid}"
            status["restartCount"] = status.get("restartCount", 0) + 1

        self.api.update("pods", "default", name, point)
        if status_first:
            self.pending.append((time.monotonic() + 0.2, name, index))
            self.counts.restarts_status_first += 1
        pod.containers[index] = new
        if old.cgroup is not None:
            _rmdir(old.cgroup)
        self.counts.restarts += 1

    def make_pending_cgroups(self, now: float) -> None:
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, name, index in due:
            pod = self.pods.get(name)
            if pod is not None and pod.containers[index].cgroup is None:
                c = pod.containers[index]
                c.cgroup = self.kubelet.create(c.ref, pod.driver)

    def edit(self, name: str, changes: dict[str, str | None]) -> None:
        self.api.patch_annotations("pods", "default", name, changes)
        pod = self.pods[name]
        for key, value in changes.items():
            if value is None:
                pod.annotations.pop(key, None)
            else:
                pod.annotations[key] = value

    def kernel(self, cgroup: Path) -> IOLimits:
        held = self.backend.read(cgroup)
        return held.get((self.device.major, self.device.minor), UNLIMITED)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        path.rmdir()


def random_edit(rng: random.Random) -> dict[str, str | None]:
    k = rng.randrange(7)
    if k == 0:
        return {f"{PREFIX}/write-iops": str(rng.randrange(50, 5000))}
    if k == 1:
        return {f"{PREFIX}/read-iops": str(rng.randrange(50, 5000))}
    if k == 2:
        return {f"{PREFIX}/iops": str(rng.randrange(50, 5000))}
    if k == 3:
        return {f"{PREFIX}/write-bps": f"{rng.randrange(1, 200)}Mi"}
    if k == 4:
        return {f"{PREFIX}/read-iops": "0"}  # unlimited in that direction
    if k == 5:
        return {f"{PREFIX}/bps": f"{rng.randrange(1, 200)}Mi"}
    key = rng.choice(["write-iops", "read-iops", "iops", "write-bps", "bps"])
    return {f"{PREFIX}/{key}": None}


# ---------------------------------------------------------------- the agent


@attrs.define
class Agent:
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float  # time.monotonic() just before the process was started
    base_url: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SoakError(f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise SoakError("no VmRSS in /proc")

    def wait_serving(self, timeout: float = 60) -> None:
        pattern = re.compile(
            r"serving /healthz /readyz /metrics /status [^\n]*?addresses='?(http://[\d.:]+)"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                m = pattern.search(self.log_path.read_text(errors="replace"))
                if m:
                    self.base_url = m.group(1)
                    return
            time.sleep(0.05)
        raise SoakError(f"the agent does not serve HTTP after {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out


@contextlib.contextmanager
def run_agent(env: dict[str, str], log_path: Path) -> Iterator[Agent]:
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "diskguard", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Agent(proc, log_path, started)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- measuring


@attrs.frozen
class Check:
    at: float  # seconds into the churn
    containers: int
    missed: int  # the kernel holds no limit where one is asked for
    wrong: int  # the kernel holds another limit
    waiting: int  # statuses whose cgroup the runtime has not made yet (not checked)
    rss_kib: int
    example: str = ""


def check_kernel(node: Node, at: float, agent: Agent) -> Check:
    missed = wrong = waiting = total = 0
    example = ""
    with node.lock:
        pods = list(node.pods.values())
    for pod in pods:
        want = expected_limits(pod.annotations)
        for c in pod.containers:
            if c.cgroup is None:
                waiting += 1
                continue
            total += 1
            try:
                got = node.kernel(c.cgroup)
            except OSError as exc:
                got, example = UNLIMITED, example or f"{c.cgroup}: {exc}"
            if got == want:
                continue
            if got == UNLIMITED:
                missed += 1
            else:
                wrong += 1
            example = example or f"{pod.name}/{c.name} {c.cgroup}: kernel {got}, want {want}"
    return Check(at, total, missed, wrong, waiting, agent.rss_kib(), example)


@attrs.define
class Probe:
    """Edits probe pods' write-iops and times the kernel showing it, one at a time."""

    node: Node
    pods: list[SoakPod]
    interval: float
    lags: list[float] = attrs.field(factory=list)
    late: int = 0
    paused: threading.Event = attrs.field(factory=threading.Event)
    stop: threading.Event = attrs.field(factory=threading.Event)
    idle: threading.Lock = attrs.field(factory=threading.Lock)
    value: int = 1000
    error: BaseException | None = None

    def run(self) -> None:
        try:
            k = 0
            next_at = time.monotonic()
            while not self.stop.is_set():
                next_at += self.interval
                with self.idle:
                    if not self.paused.is_set():
                        self._one(self.pods[k % len(self.pods)])
                        k += 1
                time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc

    def _one(self, pod: SoakPod) -> None:
        self.value += 1
        self.node.edit(pod.name, {f"{PREFIX}/write-iops": str(self.value)})
        returned = time.perf_counter()
        cgroup = pod.containers[0].cgroup
        assert cgroup is not None
        deadline = returned + PROBE_TIMEOUT
        while time.perf_counter() < deadline:
            with contextlib.suppress(OSError):
                if self.node.kernel(cgroup).wiops == self.value:
                    self.lags.append(time.perf_counter() - returned)
                    self.node.counts.probes += 1
                    return
            time.sleep(0.002)
        self.late += 1

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self.paused.set()
        with self.idle:  # the probe in flight, if any, has finished
            pass
        try:
            yield
        finally:
            self.paused.clear()


def pct(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------- the run


@attrs.frozen
class Settings:
    pods: int
    duration: float
    rate: float
    checkpoint: float
    settle: float
    probe_rate: float
    seed: int
    quiet: float = 60.0


@attrs.frozen
class Result:
    settings: Settings
    checks: tuple[Check, ...]
    counts: Counts
    lags: tuple[float, ...]
    late_probes: int
    initial_s: float
    rss_start_kib: int
    rss_end_kib: int
    cpu_s: float
    churn_s: float
    agent_containers: dict[str, float]
    events_dropped: float
    exit_code: int | None
    # API traffic by kind of call: the start, the quiet window, the churn (deltas)
    traffic_start: dict[str, Traffic] = attrs.field(factory=dict)
    traffic_quiet: dict[str, Traffic] = attrs.field(factory=dict)
    traffic_churn: dict[str, Traffic] = attrs.field(factory=dict)
    quiet_s: float = 0.0


def wait_converged(node: Node, agent: Agent, timeout: float) -> float:
    """Seconds from the agent process's start until every container holds its limits."""
    while True:
        check = check_kernel(node, 0.0, agent)
        if check.missed == check.wrong == 0:
            return time.monotonic() - agent.started
        agent.check_alive()
        if time.monotonic() - agent.started > timeout:
            raise SoakError(f"initial reconcile incomplete after {timeout}s: {check}")
        time.sleep(0.1)


def soak(s: Settings, node: Node, env: dict[str, str], log_path: Path) -> Result:
    rng = node.rng
    probes_n = max(2, s.pods // 25)
    for i in range(s.pods - probes_n):
        node.create(random_edit(rng) if i % 2 else None)
    probe_pods = [node.create(probe=True) for _ in range(probes_n)]
    with run_agent(env, log_path) as agent:
        agent.wait_serving()
        initial = wait_converged(node, agent, timeout=180)
        time.sleep(1.0)
        traffic_start = node.api.traffic()
        # The quiet window: no pod events at all, what a node costs the API server between
        # changes (watches held open, bookmarks, resyncs that find nothing to do).
        quiet_started = time.monotonic()
        while time.monotonic() - quiet_started < s.quiet:
            agent.check_alive()
            time.sleep(min(1.0, s.quiet))
        quiet_s = time.monotonic() - quiet_started
        traffic_quiet_end = node.api.traffic()
        rss_start, cpu_start = agent.rss_kib(), agent.cpu_seconds()
        print(
            f"initial reconcile of {2 * s.pods} containers: {initial:.2f} s; churn begins",
            flush=True,
        )
        probe = Probe(node, probe_pods, 1.0 / s.probe_rate)
        thread = threading.Thread(target=probe.run, name="probe", daemon=True)
        thread.start()
        checks: list[Check] = []
        churn_rate = s.rate - s.probe_rate
        started = time.monotonic()
        paused = 0.0
        next_check = s.checkpoint
        next_event = started
        while True:
            now = time.monotonic()
            elapsed = now - started - paused
            if elapsed >= s.duration or elapsed >= next_check:
                t0 = time.monotonic()
                with probe.pause():
                    node.make_pending_cgroups(float("inf"))
                    time.sleep(s.settle)
                    agent.check_alive()
                    check = check_kernel(node, min(elapsed, s.duration), agent)
                checks.append(check)
                print(
                    f"  t={check.at:6.1f}s  containers {check.containers:5d}  missed "
                    f"{check.missed}  wrong {check.wrong}  RSS {check.rss_kib / 1024:.1f} MiB"
                    + (f"  e.g. {check.example}" if check.example else ""),
                    flush=True,
                )
                paused += time.monotonic() - t0
                next_event = time.monotonic()
                if elapsed >= s.duration:
                    break
                next_check += s.checkpoint
                continue
            node.make_pending_cgroups(now)
            if now < next_event:
                time.sleep(min(next_event - now, 0.05))
                continue
            next_event += 1.0 / churn_rate
            one_event(node, rng, s.pods)
            if probe.error is not None:
                raise SoakError(f"the probe failed: {probe.error!r}")
        churn_s = time.monotonic() - started - paused
        probe.stop.set()
        thread.join(timeout=PROBE_TIMEOUT + 5)
        cpu = agent.cpu_seconds() - cpu_start
        rss_end = agent.rss_kib()
        metrics = agent.metrics()
        states = {dict(k)["state"]: v for k, v in metrics.get("diskguard_containers", {}).items()}
        dropped = sum(metrics.get("diskguard_events_dropped_total", {}).values())
        traffic_end = node.api.traffic()
    return Result(
        s,
        tuple(checks),
        node.counts,
        tuple(probe.lags),
        probe.late,
        initial,
        rss_start,
        rss_end,
        cpu,
        churn_s,
        states,
        dropped,
        agent.proc.returncode,
        traffic_start=traffic_start,
        traffic_quiet=traffic_delta(traffic_quiet_end, traffic_start),
        traffic_churn=traffic_delta(traffic_end, traffic_quiet_end),
        quiet_s=quiet_s,
    )


def traffic_delta(later: dict[str, Traffic], earlier: dict[str, Traffic]) -> dict[str, Traffic]:
    return {k: v - earlier.get(k, Traffic()) for k, v in later.items()}


def one_event(node: Node, rng: random.Random, target: int) -> None:
    live = [p for p in node.pods.values() if not p.probe]
    r = rng.random()
    if r < 0.2 and len(node.pods) < 1.1 * target:
        node.create(random_edit(rng) if rng.random() < 0.5 else None)
    elif r < 0.4 and len(node.pods) > 0.9 * target and live:
        node.delete(rng.choice(live).name)
    elif r < 0.65 and live:
        node.restart(rng.choice(live).name, rng.randrange(2), status_first=rng.random() < 0.2)
    elif live:
        node.edit(rng.choice(live).name, random_edit(rng))
        node.counts.edits += 1


# ---------------------------------------------------------------- report


def print_report(r: Result, command: str, load: tuple[float, float, float]) -> None:
    s = r.settings
    missed = sum(c.missed for c in r.checks)
    wrong = sum(c.wrong for c in r.checks)
    final = r.checks[-1]
    c = r.counts
    print()
    print("=" * 78)
    print(f"command: {command}")
    print(
        f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, python "
        f"{sys.version.split()[0]}; load average at the end {load[0]:.2f}/{load[1]:.2f}/"
        f"{load[2]:.2f}"
    )
    print(
        "agent: python -m diskguard run, LOG_LEVEL=info, SAMPLER=cgroup, RESYNC_INTERVAL="
        "60 (defaults otherwise)"
    )
    print(
        f"load: {s.pods} pods x 2 containers, {s.rate:g} pod events/s for {r.churn_s:.0f} s "
        f"(seed {s.seed})"
    )
    print(
        f"      creates {c.creates - s.pods}, deletes {c.deletes}, container restarts "
        f"{c.restarts} ({c.restarts_status_first} status before cgroup), edits {c.edits}, "
        f"probe edits {c.probes + r.late_probes}"
    )
    print()
    print(f"  {'metric':<44}{'value':>14}")
    print(f"  {'missed limits (all checkpoints)':<44}{missed:>14}")
    print(f"  {'wrong limits (all checkpoints)':<44}{wrong:>14}")
    print(f"  {'checkpoints':<44}{len(r.checks):>14}")
    print(f"  {'containers checked at the end':<44}{final.containers:>14}")
    print(f"  {'agent start -> all initial limits (s)':<44}{r.initial_s:>14.2f}")
    if r.lags:
        print(f"  {'reconcile lag p50 (ms)':<44}{pct(r.lags, 50) * 1000:>14.1f}")
        print(f"  {'reconcile lag p99 (ms)':<44}{pct(r.lags, 99) * 1000:>14.1f}")
        print(f"  {'reconcile lag max (ms)':<44}{max(r.lags) * 1000:>14.1f}")
        print(f"  {'reconcile lag mean (ms)':<44}{statistics.mean(r.lags) * 1000:>14.1f}")
    print(f"  {'lag samples / late (> 10 s)':<44}{f'{len(r.lags)} / {r.late_probes}':>14}")
    print(f"  {'agent RSS start (MiB)':<44}{r.rss_start_kib / 1024:>14.1f}")
    print(f"  {'agent RSS end (MiB)':<44}{r.rss_end_kib / 1024:>14.1f}")
    print(f"  {'agent RSS drift (MiB)':<44}{(r.rss_end_kib - r.rss_start_kib) / 1024:>+14.1f}")
    print(f"  {'agent CPU over the churn (s)':<44}{r.cpu_s:>14.1f}")
    print(f"  {'agent CPU (% of one core)':<44}{100 * r.cpu_s / r.churn_s:>14.1f}")
    states = ", ".join(f"{k}={v:g}" for k, v in sorted(r.agent_containers.items()))
    print(f"  agent's own container count at the end: {states}")
    print(f"  Events dropped by the agent (queue full): {r.events_dropped:g}")
    print(
        "  (lag: from the API edit call returning to the container's write_iops/io.max showing it;"
    )
    print(
        "   checkpoints pause the churn and let the agent settle before reading every container's"
    )
    print("   kernel files; RSS start is after the initial reconcile)")
    print_traffic(r)
    print("=" * 78)


def pod_events(r: Result) -> int:
    c = r.counts
    return (c.creates - r.settings.pods) + c.deletes + c.restarts + c.edits + c.probes


def print_traffic(r: Result) -> None:
    """The agent's API-server cost by kind of call (bodies only, no headers or TLS)."""
    events = max(1, pod_events(r))
    hour = 3600 / max(r.quiet_s, 1e-9)
    kinds = sorted(set(r.traffic_start) | set(r.traffic_quiet) | set(r.traffic_churn))
    print()
    print(
        f"  API-server cost ({r.settings.pods} pods x 2 containers; {r.quiet_s:.0f} s quiet "
        f"window projected to an hour; churn: {events} pod events)"
    )
    print(f"  {'call':<36}{'start':>16}{'quiet, per hour':>20}{'per 1,000 events':>20}")
    print(f"  {'':<36}{'req   KiB':>16}{'req     KiB':>20}{'req     KiB':>20}")
    total = [Traffic(), Traffic(), Traffic()]
    for kind in kinds:
        st = r.traffic_start.get(kind, Traffic())
        qu = r.traffic_quiet.get(kind, Traffic())
        ch = r.traffic_churn.get(kind, Traffic())
        total = [total[0] + st, total[1] + qu, total[2] + ch]
        print(
            f"  {kind[:35]:<36}{st.requests:>6}{kib(st):>10.1f}"
            f"{qu.requests * hour:>10.0f}{kib(qu) * hour:>10.1f}"
            f"{ch.requests * 1000 / events:>10.0f}{kib(ch) * 1000 / events:>10.1f}"
        )
    st, qu, ch = total
    print(
        f"  {'all':<36}{st.requests:>6}{kib(st):>10.1f}"
        f"{qu.requests * hour:>10.0f}{kib(qu) * hour:>10.1f}"
        f"{ch.requests * 1000 / events:>10.0f}{kib(ch) * 1000 / events:>10.1f}"
    )
    print("  (KiB = request + response bodies; a watch's KiB are its events and bookmarks)")


def kib(t: Traffic) -> float:
    return (t.bytes_in + t.bytes_out) / 1024


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="100 pods for 60 s (CI-sized)")
    p.add_argument("--pods", type=int, help="pods of 2 containers (default 500; quick 100)")
    p.add_argument("--duration", type=float, help="seconds of churn (default 300; quick 60)")
    p.add_argument("--rate", type=float, default=20.0, help="pod events per second (20)")
    p.add_argument(
        "--quiet",
        type=float,
        help="seconds without events before the churn, for "
        "the API cost of a quiet node (default 60; quick 20)",
    )
    p.add_argument("--checkpoint", type=float, default=30.0, help="seconds between checks")
    p.add_argument("--settle", type=float, default=1.5, help="seconds the agent gets per check")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    pods = args.pods or (100 if args.quick else 500)
    duration = args.duration or (60.0 if args.quick else 300.0)
    if pods < 10 or duration <= 0 or args.rate <= 2:
        print("soak: need --pods >= 10, --duration > 0, --rate > 2", file=sys.stderr)
        return 2
    quiet = args.quiet if args.quiet is not None else (20.0 if args.quick else 60.0)
    settings = Settings(
        pods,
        duration,
        args.rate,
        args.checkpoint,
        args.settle,
        probe_rate=min(2.0, args.rate / 10),
        seed=args.seed,
        quiet=quiet,
    )
    command = shlex.join([interpreter(), "bench/soak.py", *argv])
    if os.geteuid() != 0:
        print("soak: needs root (cgroups, loop device)", file=sys.stderr)
        return 2
    missing = lab_tools_missing()
    if missing:
        print(f"soak: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    hierarchy = detect_cgroup(os.environ.get("CGROUP_ROOT", "/sys/fs/cgroup"), None)
    print(f"command: {command}", flush=True)
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as undo:
            workdir = Path(undo.enter_context(tempfile.TemporaryDirectory(prefix="dgsoak-")))
            disk = undo.enter_context(loop_disk(workdir / "disk", size_mib=64))
            assert disk.mount is not None
            # no "-" in the name: the systemd driver would escape it
            kubelet = KubeletRoot(hierarchy, f"dgsoak{uuid.uuid4().hex[:8]}")
            undo.callback(kubelet.cleanup)
            api = undo.enter_context(FakeAPIServer(bookmark_interval=60.0, history_limit=200_000))
            kubeconfig = workdir / "kubeconfig"
            api.write_kubeconfig(kubeconfig)
            print(
                f"cgroup {hierarchy.version.value} at {hierarchy.path}, data disk {disk.node} "
                f"({disk.device}) on {disk.mount}",
                flush=True,
            )
            node = Node(
                api,
                hierarchy,
                kubelet,
                backend_for(hierarchy.version),
                disk.device,
                random.Random(args.seed),
            )
            h = hierarchy.path
            env = {
                **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ},
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "NODE_NAME": NODE,
                "DATA_MOUNT": str(disk.mount),
                "KUBELET_CGROUP_ROOT": kubelet.prefix,
                "KUBECONFIG": str(kubeconfig),
                "CGROUP_ROOT": str(h.parent if h.name == "blkio" else h),
                "STATE_DIR": str(kubeconfig.parent / "state"),
                "HTTP_ADDR": "127.0.0.1:0",
                "LOG_LEVEL": "info",
                "SAMPLER": "cgroup",
            }
            result = soak(settings, node, env, workdir / "agent.log")
    except KeyboardInterrupt:
        print("soak: interrupted; everything created was removed", file=sys.stderr)
        return 130
    except (SoakError, LabError) as exc:
        print(f"soak: failed: {exc}", file=sys.stderr)
        return 1
    print_report(result, command, os.getloadavg())
    bad = sum(c.missed + c.wrong for c in result.checks)
    return 1 if bad or result.late_probes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
