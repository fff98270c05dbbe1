"""The sampler task: every SAMPLE_INTERVAL, read each known container's IO counters (BPF map
or cgroup files, in a worker thread) and turn them into rates.

Containers are the ones the reconciler has found a cgroup for; their cgroup id is the
inode of that directory, which is what the block layer charges IO to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from diskguard.agent.reconciler import Reconciler
from diskguard.agent.saturation import SaturationMonitor
from diskguard.logs import get_logger
from diskguard.model import ContainerKey, Counters, Device, DurationHistogram, Rates
from diskguard.node.diskstats import DiskStatError, read_block_stat
from diskguard.policy.peaks import SustainedPeaks
from diskguard.policy.smart import Sample
from diskguard.sampler import RateTracker, Sampler, Target
from diskguard.sampler.base import Snapshot
from diskguard.sampler.latency import DeviceLatency, LatencySnapshot, latency_between
from diskguard.sampler.pressure import Pressure, read_io_pressure
from diskguard.sampler.rates import rates_between

log = get_logger(__name__)

PRESSURE_STICKY = 10  # passes a container's io.pressure is read after its last IO

Listener = Callable[[dict[ContainerKey, Sample]], None]


def combine(per_device: dict[Device, Rates]) -> Rates:
    """A container's rates as smart limit judges them: per metric, its busiest data device
    (limits apply per device, so the busiest one is the one that hits its limit)."""
    if len(per_device) == 1:  # one data disk, the common case: nothing to combine
        return next(iter(per_device.values()))
    return Rates(
        riops=max((r.riops for r in per_device.values()), default=0.0),
        wiops=max((r.wiops for r in per_device.values()), default=0.0),
        rbps=max((r.rbps for r in per_device.values()), default=0.0),
        wbps=max((r.wbps for r in per_device.values()), default=0.0),
    )


def _busy(rates: Rates) -> bool:
    """Any IO at all (cheaper than comparing with a zero Rates, per container per pass)."""
    return bool(rates.riops or rates.wiops or rates.rbps or rates.wbps)


class SamplingTask:
    """`kernel_lock` is the one the reconciler's apply batches hold (the agent hands both
    the same lock): arming v1 counters writes throttle files, which must not interleave with
    an apply batch. `listeners` get every pass's samples."""

    def __init__(
        self,
        sampler: Sampler,
        reconciler: Reconciler,
        interval: float,
        *,
        kernel_lock: trio.Lock,
        listeners: Sequence[Listener] = (),
        disks: Callable[[], Sequence[Device]] = tuple,
        observed_window: float = 60.0,
        saturation: SaturationMonitor | None = None,
        pressure: bool = False,
    ) -> None:
        self.sampler = sampler
        self._reconciler = reconciler
        self.interval = interval
        self._tracker = RateTracker(history=2, clock=trio.current_time)
        self._targets: dict[Path, Target] = {}
        self._listeners = tuple(listeners)
        self._kernel_lock = kernel_lock
        # For metrics, /status and top: the latest rates and cumulative counters.
        self.rates: dict[ContainerKey, dict[Device, Rates]] = {}
        self.counters: dict[ContainerKey, dict[Device, Counters]] = {}
        # Device service-time histograms, as the last two passes read them; the views by
        # container (`latency`, `latency_window`) are built when a scrape or /status asks,
        # not every pass: at 1,000 containers building them was a quarter of the idle
        # agent's CPU (py-spy).
        self._latency_targets: dict[ContainerKey, Target] = {}
        self._last_latency: LatencySnapshot | None = None
        self._previous_latency: LatencySnapshot | None = None
        self._latency_view: dict[ContainerKey, dict[Device, DeviceLatency]] | None = None
        self._window_view: dict[ContainerKey, dict[Device, DeviceLatency]] | None = None
        # Each data disk's own counters (all IO it served), for its observed capacity.
        self._disks = disks
        self._disk_counters: dict[Device, tuple[float, Counters]] = {}
        self.disk_peaks = SustainedPeaks(observed_window)
        self.saturation = saturation
        # IO pressure (PSI, cgroup v2): read for the containers that did IO in the last
        # PRESSURE_STICKY passes only (a stall needs IO pending); the counters are kept.
        self._pressure = pressure
        self._active: dict[Target, int] = {}
        self.pressure: dict[ContainerKey, Pressure] = {}
        self._last_at: float | None = None
        self.passes = 0
        self.last_pass_seconds = 0.0
        self.pass_durations = DurationHistogram()
        self.errors = 0

    def _current_targets(self) -> dict[ContainerKey, Target]:
        wanted: dict[ContainerKey, Target] = {}
        live: dict[Path, Target] = {}
        for key, result in self._reconciler.results.items():
            if result.cgroup is None:
                continue
            target = self._targets.get(result.cgroup)
            if target is None:
                try:
                    target = Target.of(result.cgroup)
                except OSError:
                    continue  # gone between apply and now
            live[result.cgroup] = target
            wanted[key] = target
        self._targets = live
        return wanted

    async def run(self) -> None:
        deadline = trio.current_time()
        while True:
            await self.sample_once()
            deadline += self.interval
            now = trio.current_time()
            if deadline < now:  # fell behind (slow pass): skip, don't burst
                deadline = now + self.interval
            await trio.sleep_until(deadline)

    def _read(self, targets: list[Target]) -> tuple[Snapshot, LatencySnapshot | None]:
        return self.sampler.read(targets), self.sampler.read_latency(targets)

    def _read_extras(
        self, disks: Sequence[Device], bio_targets: list[Target], pressure_targets: list[Target]
    ) -> tuple[dict[Device, Counters], Snapshot, dict[Target, Pressure]]:
        """What the pass reads besides the sampler's counters, outside the kernel lock (no
        file here is written): the data disks' own counters, the cgroups' own (bio-level)
        counters for saturation, io.pressure. Each contained: a failure costs its part."""
        totals: dict[Device, Counters] = {}
        for disk in disks:
            try:
                totals[disk] = read_block_stat(disk)
            except DiskStatError:
                continue  # a disk going away: the data-disk watch will say so
        bio: Snapshot = {}
        try:
            if self.saturation is not None:
                bio = self.saturation.read(bio_targets)
        except Exception as exc:
            log.warning("reading the cgroups' own IO counters failed", error=str(exc))
        pressure = {t: p for t in pressure_targets if (p := read_io_pressure(t.path))}
        return totals, bio, pressure

    def _record_pressure(
        self,
        targets: dict[ContainerKey, Target],
        rates: dict[Target, dict[Device, Rates]],
        read: dict[Target, Pressure],
    ) -> None:
        if not self._pressure:
            return
        left = {t: n - 1 for t, n in self._active.items() if n > 1}
        for target, per_device in rates.items():
            if any(_busy(r) for r in per_device.values()):
                left[target] = PRESSURE_STICKY
        alive = set(targets.values())
        self._active = {t: n for t, n in left.items() if t in alive}
        kept = {k: v for k, v in self.pressure.items() if k in targets}
        for key, target in targets.items():
            if target in read:
                kept[key] = read[target]
        self.pressure = kept

    def _observe_disks(self, now: float, totals: dict[Device, Counters]) -> None:
        for disk, counters in totals.items():
            before = self._disk_counters.get(disk)
            self._disk_counters[disk] = (now, counters)
            if before is not None and now > before[0]:
                interval = now - before[0]
                rates = rates_between(before[1], counters, interval)
                self.disk_peaks.add(disk, now, interval, rates)
        # Forgotten only when no longer a data disk (a failed read keeps the peak).
        data_disks = set(self._disks())
        for gone in set(self._disk_counters) - data_disks:
            del self._disk_counters[gone]
        self.disk_peaks.forget(data_disks)

    def _record_latency(
        self, targets: dict[ContainerKey, Target], latency: LatencySnapshot | None
    ) -> None:
        self._previous_latency = None if latency is None else self._last_latency
        self._last_latency = latency
        self._latency_targets = targets
        self._latency_view = self._window_view = None

    @property
    def latency(self) -> dict[ContainerKey, dict[Device, DeviceLatency]] | None:
        """Cumulative histograms per container (for metrics); None while the sampler
        cannot measure latency."""
        latest = self._last_latency
        if latest is None:
            return None
        if self._latency_view is None:
            targets = self._latency_targets
            self._latency_view = {k: latest[t] for k, t in targets.items() if t in latest}
        return self._latency_view

    @property
    def latency_window(self) -> dict[ContainerKey, dict[Device, DeviceLatency]] | None:
        """What each container's histograms gained over the last interval (for /status)."""
        latest = self._last_latency
        if latest is None:
            return None
        if self._window_view is None:
            window = latency_between(self._previous_latency, latest)
            targets = self._latency_targets
            self._window_view = {k: window[t] for k, t in targets.items() if t in window}
        return self._window_view

    async def sample_once(self) -> None:
        targets = self._current_targets()
        bio_targets = self.saturation.bio_targets() if self.saturation is not None else []
        pressure_targets = list(self._active) if self._pressure else []
        started = trio.current_time()
        try:
            async with self._kernel_lock:  # v1 arming writes throttle files
                snapshot, latency = await trio.to_thread.run_sync(
                    self._read, list(targets.values())
                )
        except Exception as exc:  # a sampler failure must not stop enforcement
            self.errors += 1
            log.warning("sampling failed", error=str(exc))
            return
        # The sampler's counters are timed as soon as they are read (the rates' clock).
        now = trio.current_time()
        rates = self._tracker.update(snapshot)
        self._record_latency(targets, latency)
        elapsed = self.interval if self._last_at is None else now - self._last_at
        self._last_at = now
        try:
            totals, bio, pressure = await trio.to_thread.run_sync(
                self._read_extras, tuple(self._disks()), bio_targets, pressure_targets
            )
        except Exception as exc:  # only the extras are lost, not the pass
            log.warning("reading disk counters or pressure failed", error=str(exc))
            totals, bio, pressure = {}, {}, {}
        extras_at = trio.current_time()  # the clock of the counters read just now
        self.last_pass_seconds = extras_at - started
        self.pass_durations = self.pass_durations.observe(self.last_pass_seconds)
        self.passes += 1
        # What the counters feed besides rates: each contained, so that a surprise in one
        # costs that part of this pass, never the sampling task (and with it the agent).
        try:
            self._observe_disks(extras_at, totals)
            self._record_pressure(targets, rates, pressure)
            if self.saturation is not None:
                self.saturation.update(
                    now,
                    extras_at,
                    elapsed,
                    targets,
                    snapshot,
                    rates,
                    bio,
                    self._reconciler.results,
                    lambda: self.latency_window,
                )
        except Exception:
            self.errors += 1
            log.exception("deriving capacity, pressure or saturation failed")
        samples: dict[ContainerKey, Sample] = {}
        self.rates = {}
        self.counters = {}
        for key, target in targets.items():
            if target in snapshot:
                self.counters[key] = snapshot[target]
            per_device = rates.get(target)
            if per_device:
                self.rates[key] = per_device
                interval = self._tracker.interval(target) or self.interval
                samples[key] = Sample.of(now, interval, combine(per_device))
        for listener in self._listeners:
            listener(samples)
