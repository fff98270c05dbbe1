"""Saturation per container: the fraction of its limit each container uses, seconds spent
at >= 95 %, and the IOLimitSaturated Event (decisions in policy/saturation.py).

blk-throttle counts bios before they merge; the eBPF sampler counts requests at issue,
which merged sequential IO makes far fewer. So the rates here come from the cgroup's own
counters (bio level): the cgroup sampler's are those already; beside the eBPF sampler, the
cgroup files of the limited containers that did IO lately are read in the same pass (a
busy subset of the node, one small file each), with the same reader the cgroup sampler
uses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from diskguard.kube.events import EventRequest, pod_event
from diskguard.logs import get_logger
from diskguard.model import ContainerKey, Counters, Device, Direction, IOLimits, PodInfo, Rates
from diskguard.node.applier import ApplyResult
from diskguard.policy.saturation import (
    SATURATED,
    DirectionSaturation,
    Saturation,
    SaturationEvents,
    busiest_unit,
    saturation,
    unit_words,
)
from diskguard.sampler import Target
from diskguard.sampler.base import Snapshot
from diskguard.sampler.cgroupfs import CgroupSampler
from diskguard.sampler.latency import DeviceLatency
from diskguard.sampler.rates import rates_between

log = get_logger(__name__)

# A container that did IO stays on the bio-counter list this many passes: a pause shorter
# than that does not cost it its baseline.
STICKY_PASSES = 10
# Saturation is the rate over about this many seconds (at least one sampling interval):
# blk-throttle releases bios slice by slice, and over one short interval the count of a
# container held exactly at its limit swings by several per cent around it.
WINDOW = 5.0


class _Windowed:
    """Rates of cumulative counters over the last WINDOW seconds, per target."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._series: dict[Target, deque[tuple[float, Mapping[Device, Counters]]]] = {}

    def update(self, now: float, snapshot: Snapshot) -> dict[Target, dict[Device, Rates]]:
        out: dict[Target, dict[Device, Rates]] = {}
        for target, counters in snapshot.items():
            series = self._series.setdefault(target, deque())
            series.append((now, counters))
            # Keep the newest snapshot at least a window old as the baseline.
            while len(series) > 2 and now - series[1][0] >= self._window:
                series.popleft()
            at, old = series[0]
            if now <= at:
                continue
            out[target] = {
                device: rates_between(old[device], current, now - at)
                for device, current in counters.items()
                if device in old
            }
        for gone in self._series.keys() - snapshot.keys():
            del self._series[gone]
        return out


class SaturationMonitor:
    """Fed by the sampling task each pass. `bio_reader` reads the cgroups' own counters
    (None when the sampler's counts are bio level already: the cgroup sampler)."""

    def __init__(
        self,
        bio_reader: CgroupSampler | None,
        events: SaturationEvents,
        emit: Callable[[EventRequest], None],
        pods: Mapping[str, PodInfo],
    ) -> None:
        self._bio_reader = bio_reader
        self._events = events
        self._emit = emit
        self._pods = pods
        self._windowed = _Windowed(WINDOW)
        self._candidates: dict[Target, int] = {}  # target -> passes left on the list
        self.state: Saturation = {}
        # Seconds at >= SATURATED, kept while the container lives (a counter: it must not
        # start over when a pass has no rates for the container).
        self._seconds: dict[tuple[ContainerKey, Device, Direction], float] = {}

    def bio_targets(self) -> list[Target]:
        """The cgroups whose own counters the next pass reads (none without a reader)."""
        return list(self._candidates) if self._bio_reader is not None else []

    def read(self, targets: list[Target]) -> Snapshot:
        """In the sampling pass's worker thread."""
        if self._bio_reader is None or not targets:
            return {}
        return self._bio_reader.read(targets)

    def update(
        self,
        now: float,
        bio_at: float,
        interval: float,
        targets: Mapping[ContainerKey, Target],
        sampled: Snapshot,
        sampler_rates: Mapping[Target, Mapping[Device, Rates]],
        bio: Snapshot,
        results: Mapping[ContainerKey, ApplyResult],
        latency: Callable[[], Mapping[ContainerKey, Mapping[Device, DeviceLatency]] | None],
    ) -> None:
        """One sampling pass, `interval` seconds after the last: the sampler's counters
        (`sampled`, read at `now`) and rates, the cgroups' own counters read for saturation
        (`bio`, read at `bio_at`).
        `latency` builds the per-container latency view, only when an Event needs it."""
        if self._bio_reader is None:  # the sampler's counters are bio level: of the limited
            limited = {t for k, t in targets.items() if _limited(results.get(k))}
            bio, bio_at = {t: c for t, c in sampled.items() if t in limited}, now
        else:
            self._refresh_candidates(targets, sampler_rates, results)
        rates = self._windowed.update(bio_at, bio)
        state: dict[ContainerKey, dict[Device, dict[Direction, DirectionSaturation]]] = {}
        for key, target in targets.items():
            try:
                worst = self._one(key, results.get(key), rates.get(target), interval, state)
                # A container without rates this pass (idle, off the bio list) counts as
                # below the limit: its episode can end.
                saturated = worst is not None and worst[0] >= SATURATED
                if self._events.update(key, saturated, now) and worst is not None:
                    self._announce(key, worst, latency)
            except Exception:
                # One container's surprise must not stop measuring (or enforcement).
                log.exception("saturation failed for one container", container=str(key))
        self.state = state
        self._events.forget(targets)
        self._seconds = {k: v for k, v in self._seconds.items() if k[0] in targets}

    def _one(
        self,
        key: ContainerKey,
        result: ApplyResult | None,
        per_device: Mapping[Device, Rates] | None,
        interval: float,
        state: dict[ContainerKey, dict[Device, dict[Direction, DirectionSaturation]]],
    ) -> tuple[float, Device, Direction, IOLimits, Rates] | None:
        """One container's saturation into `state`; its most saturated (device, direction)."""
        if result is None or not per_device:
            return None
        mine: dict[Device, dict[Direction, DirectionSaturation]] = {}
        worst: tuple[float, Device, Direction, IOLimits, Rates] | None = None
        for device, held in result.kernel:
            observed = per_device.get(device)
            if observed is None:
                continue
            ratios = saturation(observed, held)
            if not ratios:
                continue
            mine[device] = {}
            for direction, ratio in ratios.items():
                seconds = self._seconds.get((key, device, direction), 0.0)
                if ratio >= SATURATED:
                    seconds += interval
                    self._seconds[key, device, direction] = seconds
                mine[device][direction] = DirectionSaturation(ratio, seconds)
                if worst is None or ratio > worst[0]:
                    worst = (ratio, device, direction, held, observed)
        if mine:
            state[key] = mine
        return worst

    def _refresh_candidates(
        self,
        targets: Mapping[ContainerKey, Target],
        sampler_rates: Mapping[Target, Mapping[Device, Rates]],
        results: Mapping[ContainerKey, ApplyResult],
    ) -> None:
        """Limited containers that did IO this pass go on (or stay on) the list."""
        left = {t: n - 1 for t, n in self._candidates.items() if n > 1}
        for key, target in targets.items():
            if not _limited(results.get(key)):
                continue
            if any(
                r.riops or r.wiops or r.rbps or r.wbps
                for r in sampler_rates.get(target, {}).values()
            ):
                left[target] = STICKY_PASSES
        alive = set(targets.values())
        self._candidates = {t: n for t, n in left.items() if t in alive}

    def _announce(
        self,
        key: ContainerKey,
        worst: tuple[float, Device, Direction, IOLimits, Rates],
        latency: Callable[[], Mapping[ContainerKey, Mapping[Device, DeviceLatency]] | None],
    ) -> None:
        pod = self._pods.get(key.pod_uid)
        if pod is None:
            return
        ratio, device, direction, held, observed = worst
        field = busiest_unit(observed, held, direction)
        if field is None:
            return
        lat = (latency() or {}).get(key, {}).get(device)
        hist = None if lat is None else lat.get(direction)
        p99 = None if hist is None else hist.quantile(0.99)
        disk = device.name or str(device)
        said = (
            f"device p99 {p99 * 1000:,.1f} ms: the limit, not the disk, holds it back"
            if p99 is not None
            else "device latency unavailable"
        )
        self._emit(
            pod_event(
                pod,
                "IOLimitSaturated",
                f"container {key.container} has been at {ratio:.0%} of its {field.words} "
                f"limit ({unit_words(field, held.get(field))}) on {disk} for "
                f"{self._events.intervals} sampling intervals: "
                f"{unit_words(field, observed.get(field))} over the last {WINDOW:g} s, {said}",
                warning=True,
            )
        )


def _limited(result: ApplyResult | None) -> bool:
    return result is not None and any(not held.is_unlimited() for _, held in result.kernel)
