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
from diskguard.logs import get_logger
from diskguard.model import ContainerKey, Counters, Device, DurationHistogram, Rates
from diskguard.policy.smart import Sample
from diskguard.sampler import RateTracker, Sampler, Target
from diskguard.sampler.base import Snapshot
from diskguard.sampler.latency import DeviceLatency, LatencySnapshot, latency_between

log = get_logger(__name__)

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
        now = trio.current_time()
        self.last_pass_seconds = now - started
        self.pass_durations = self.pass_durations.observe(self.last_pass_seconds)
        self.passes += 1
        rates = self._tracker.update(snapshot)
        self._record_latency(targets, latency)
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
