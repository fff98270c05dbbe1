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
from diskguard.model import ContainerKey, Counters, Device, Rates
from diskguard.policy.smart import Sample
from diskguard.sampler import RateTracker, Sampler, Target
from diskguard.sampler.base import Snapshot
from diskguard.sampler.latency import DeviceLatency, LatencySnapshot, latency_between

log = get_logger(__name__)

Listener = Callable[[dict[ContainerKey, Sample]], None]


def combine(per_device: dict[Device, Rates]) -> Rates:
    """A container's rates as smart limit judges them: per metric, its busiest data device
    (limits apply per device, so the busiest one is the one that hits its limit)."""
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
        # Device service-time histograms: cumulative (for metrics) and added over the last
        # interval (for /status). None while the sampler cannot measure latency.
        self.latency: dict[ContainerKey, dict[Device, DeviceLatency]] | None = None
        self.latency_window: dict[ContainerKey, dict[Device, DeviceLatency]] | None = None
        self._last_latency: LatencySnapshot | None = None
        self.passes = 0
        self.last_pass_seconds = 0.0
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
        if latency is None:
            self.latency = self.latency_window = self._last_latency = None
            return
        window = latency_between(self._last_latency, latency)
        self._last_latency = latency
        self.latency = {k: latency[t] for k, t in targets.items() if t in latency}
        self.latency_window = {k: window[t] for k, t in targets.items() if t in window}

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
                latest = self._tracker.latest(target)
                interval = max((s.interval for s in latest.values()), default=self.interval)
                samples[key] = Sample.of(now, interval, combine(per_device))
        for listener in self._listeners:
            listener(samples)
