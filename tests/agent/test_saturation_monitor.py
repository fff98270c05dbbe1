"""The saturation monitor over synthetic passes (pure: counters in, saturation and Events
out): windowed rates, bio-level counts beside a request-counting sampler, seconds at the
limit that never go back."""

from __future__ import annotations

from pathlib import Path

from diskguard.agent.saturation import WINDOW, SaturationMonitor
from diskguard.kube.events import EventRequest
from diskguard.model import (
    ContainerRef,
    Counters,
    Device,
    Direction,
    IOLimits,
    PodInfo,
    QoSClass,
    Rates,
    Runtime,
)
from diskguard.node.applier import ApplyResult
from diskguard.policy.saturation import SaturationEvents
from diskguard.sampler.base import Target

DISK = Device(259, 0, "nvme0n1")
REF = ContainerRef("shop", "db-0", "uid-1", "db", "c1", Runtime.CONTAINERD, QoSClass.BURSTABLE)
TARGET = Target(1234, Path("/sys/fs/cgroup/kubepods/pod-uid-1/c1"))
POD = PodInfo("uid-1", "shop", "db-0", "node-1", QoSClass.BURSTABLE)
HELD = ApplyResult(REF, TARGET.path, kernel=((DISK, IOLimits(wiops=200)),))


class FakeBioReader:
    """Stands in for the cgroup reader: what the cgroup's own (bio) counters say."""

    def __init__(self) -> None:
        self.wios = 0
        self.asked: list[list[Target]] = []

    def read(self, targets: list[Target]) -> dict[Target, dict[Device, Counters]]:
        self.asked.append(list(targets))
        return {t: {DISK: Counters(wios=self.wios)} for t in targets}


class Passes:
    """One-second sampling passes of a container writing `per_second` bios/s; the
    request-counting sampler sees a tenth of them (merged)."""

    def __init__(self, monitor: SaturationMonitor, reader: FakeBioReader | None) -> None:
        self.monitor, self.reader, self.now = monitor, reader, 0.0

    def run(self, passes: int, per_second: int) -> None:
        for _ in range(passes):
            self.now += 1
            bios = int(self.now * per_second)
            if self.reader is not None:
                self.reader.wios = bios
                sampled = {TARGET: {DISK: Counters(wios=bios // 10)}}
            else:
                sampled = {TARGET: {DISK: Counters(wios=bios)}}
            bio = self.monitor.read(self.monitor.bio_targets())
            self.monitor.update(
                self.now,
                self.now,
                1.0,
                {REF.key: TARGET},
                sampled,
                {TARGET: {DISK: Rates(wiops=per_second / 10)}},
                bio,
                {REF.key: HELD},
                lambda: None,
            )


def monitor(
    reader: FakeBioReader | None,
    events: list[EventRequest],
    cooldown: float = 3600.0,
    intervals: int = 3,
) -> SaturationMonitor:
    return SaturationMonitor(
        reader,  # type: ignore[arg-type]
        SaturationEvents(intervals=intervals, cooldown=cooldown),
        events.append,
        {"uid-1": POD},
    )


def test_bio_counts_read_beside_a_request_sampler_see_the_limit() -> None:
    reader, events = FakeBioReader(), list[EventRequest]()
    mon = monitor(reader, events)
    Passes(mon, reader).run(int(WINDOW) + 4, per_second=200)
    # The sampler's requests say 10 % of the limit; the bios say 100 %.
    sat = mon.state[REF.key][DISK][Direction.WRITE]
    assert 0.99 <= sat.ratio <= 1.01
    # Read from the second pass on: listed once the sampler saw it do IO.
    assert reader.asked == [[TARGET]] * (int(WINDOW) + 3)
    [event] = events
    assert event.reason == "IOLimitSaturated" and event.name == "db-0"
    assert "100% of its write IOPS limit (200 IOPS) on nvme0n1" in event.message
    assert "device latency unavailable" in event.message


def test_saturated_seconds_only_grow_and_a_calm_container_is_not_saturated() -> None:
    events: list[EventRequest] = []
    mon = monitor(None, events)  # the cgroup sampler: its counters are bio level
    passes = Passes(mon, None)
    passes.run(10, per_second=200)
    first = mon.state[REF.key][DISK][Direction.WRITE].saturated_seconds
    assert first >= 7  # every full-rate interval counts (not the first, without a baseline)
    passes.run(10, per_second=200)
    assert mon.state[REF.key][DISK][Direction.WRITE].saturated_seconds == first + 10
    assert len(events) == 1
    calm_events: list[EventRequest] = []
    calm = monitor(None, calm_events)
    Passes(calm, None).run(10, per_second=40)
    assert calm.state[REF.key][DISK][Direction.WRITE].ratio < 0.25
    assert calm.state[REF.key][DISK][Direction.WRITE].saturated_seconds == 0
    assert not calm_events


def test_an_idle_spell_ends_the_episode_even_off_the_bio_list() -> None:
    """Beside the eBPF sampler an idle container drops off the bio-counter list after a few
    passes and has no rates at all: that counts as below the limit, so its episode ends and
    the next saturation is told again."""
    # More intervals to end an episode than passes on the list after the last IO (10).
    reader, events = FakeBioReader(), list[EventRequest]()
    mon = monitor(reader, events, cooldown=30.0, intervals=20)
    passes = Passes(mon, reader)
    passes.run(25, per_second=200)
    assert len(events) == 1
    passes.run(40, per_second=0)  # idle: off the list after 10 passes, no rates after
    assert mon.bio_targets() == []
    passes.run(25, per_second=200)
    assert len(events) == 2
