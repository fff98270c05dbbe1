"""cAdvisor's per-container filesystem IO counters (kubelet `/metrics/cadvisor`) → Rates.

Pure: `parse_cadvisor` turns the Prometheus text exposition into cumulative `Counters` per
container (parsed by prometheus_client, not by hand); `CadvisorRateTracker` turns successive
snapshots into `Rates`. The text is large (every metric of every container), so callers run
`parse_cadvisor` in a worker thread.

Which series count:
- only those naming a namespace, a pod and a container; `container=""` is the pod-level
  cgroup (the sum of its containers: counting it would count everything twice) and
  `container="POD"` the sandbox (pause) container, both skipped;
- summed over devices; with a device filter, only the devices named (`/dev/vdb` or `vdb`);
  a series without a `device` label cannot be placed on a disk, so a filter drops it (and
  without a filter it is counted, as the container's IO on some disk).

cAdvisor refreshes its numbers every housekeeping interval (10-15 s on a kubelet), not on
every scrape, and stamps each sample with its collection time. Rates therefore use those
timestamps when present: a scrape that brings no new collection yields no new rate instead
of a zero followed by a burst.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping

import attrs
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import Counters, Rates
from diskguard.sampler.rates import RateSample, rates_between

Clock = Callable[[], float]

_FIELDS = {
    "container_fs_reads_total": "rios",
    "container_fs_writes_total": "wios",
    "container_fs_reads_bytes_total": "rbytes",
    "container_fs_writes_bytes_total": "wbytes",
}
_SKIPPED_CONTAINERS = frozenset({"", "POD"})
# Only lines of these metrics (and their HELP/TYPE comments) are handed to the parser:
# the payload holds dozens of other metrics per container and parsing is pure Python.
_PREFIXES = ("container_fs_reads", "container_fs_writes")


class CadvisorParseError(ValueError):
    pass


@attrs.frozen(order=True)
class PodContainer:
    """A container as cAdvisor names it (it carries no pod UID label)."""

    namespace: str
    pod: str
    container: str

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@attrs.frozen
class ContainerIO:
    """Cumulative IO counters of one container, summed over the chosen devices."""

    counters: Counters
    # cAdvisor's collection time (s since the epoch), newest of the summed samples; None
    # when the exposition carried no timestamps.
    collected_at: float | None = None


def _device_name(device: str) -> str:
    return device.removeprefix("/dev/")


def _relevant_lines(text: str) -> str:
    kept = []
    for line in text.splitlines():
        body = line[2:] if line.startswith("# ") else line
        if body.startswith(("HELP ", "TYPE ")):
            body = body[5:]
        if body.startswith(_PREFIXES):
            kept.append(line)
    kept.append("")
    return "\n".join(kept)


def parse_cadvisor(
    text: str, devices: Collection[str] | None = None
) -> dict[PodContainer, ContainerIO]:
    """Per-container cumulative filesystem IO counters from a `/metrics/cadvisor` payload.

    `devices`: device node names to count (`/dev/vdb` or `vdb`); None counts every device.
    Raises CadvisorParseError on a payload the Prometheus parser refuses.
    """
    wanted = None if devices is None else {_device_name(d) for d in devices}
    sums: dict[PodContainer, dict[str, int]] = {}
    stamps: dict[PodContainer, float] = {}
    try:
        families = list(text_string_to_metric_families(_relevant_lines(text)))
    except (ValueError, TypeError, IndexError) as exc:
        raise CadvisorParseError(f"cAdvisor metrics are not valid Prometheus text: {exc}") from None
    for family in families:
        for sample in family.samples:
            field = _FIELDS.get(sample.name)
            if field is None:
                continue
            labels = sample.labels
            namespace, pod = labels.get("namespace", ""), labels.get("pod", "")
            container = labels.get("container", "")
            if not namespace or not pod or container in _SKIPPED_CONTAINERS:
                continue
            if wanted is not None and _device_name(labels.get("device", "")) not in wanted:
                continue
            value = sample.value
            if not math.isfinite(value) or value < 0:
                continue  # a counter cannot be that; better no number than a wrong one
            key = PodContainer(namespace, pod, container)
            per_field = sums.setdefault(key, {f: 0 for f in _FIELDS.values()})
            per_field[field] += int(value)
            if sample.timestamp is not None:
                at = float(sample.timestamp)
                stamps[key] = max(at, stamps.get(key, at))
    return {key: ContainerIO(Counters(**fields), stamps.get(key)) for key, fields in sums.items()}


@attrs.define
class _Baseline:
    counters: Counters
    collected_at: float | None
    seen_at: float  # tracker clock


class CadvisorRateTracker:
    """Turns successive `parse_cadvisor` snapshots into per-container Rates.

    A container seen for the first time only sets a baseline; one missing from a snapshot
    is forgotten (if it comes back it starts over). The interval is cAdvisor's own
    collection-time difference when both snapshots carry one, else the tracker's clock.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._baselines: dict[PodContainer, _Baseline] = {}
        self._latest: dict[PodContainer, RateSample] = {}

    def update(self, snapshot: Mapping[PodContainer, ContainerIO]) -> dict[PodContainer, Rates]:
        """Record a snapshot; return the rates of containers that have a new interval."""
        now = self._clock()
        out: dict[PodContainer, Rates] = {}
        for key, io in snapshot.items():
            old = self._baselines.get(key)
            if old is None:
                self._baselines[key] = _Baseline(io.counters, io.collected_at, now)
                continue
            if io.collected_at is not None and old.collected_at is not None:
                interval = io.collected_at - old.collected_at
                if interval < 0:  # cAdvisor's clock went back (restart): start over
                    self._baselines[key] = _Baseline(io.counters, io.collected_at, now)
                    continue
            else:
                interval = now - old.seen_at
            if interval <= 0:
                continue  # no new collection yet: keep the baseline, measure a longer interval
            # A counter that went backwards restarted (container or cAdvisor restarted, a
            # device series left the sum): rates_between counts from zero, never negative.
            rates = rates_between(old.counters, io.counters, interval)
            self._baselines[key] = _Baseline(io.counters, io.collected_at, now)
            self._latest[key] = RateSample(at=now, interval=interval, rates=rates)
            out[key] = rates
        for gone in self._baselines.keys() - snapshot.keys():
            del self._baselines[gone]
            self._latest.pop(gone, None)
        return out

    def latest(self) -> dict[PodContainer, RateSample]:
        """The most recent rates of every container still present."""
        return dict(self._latest)

    @property
    def containers(self) -> frozenset[PodContainer]:
        return frozenset(self._baselines)
