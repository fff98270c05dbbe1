"""The metric model, pure: histograms per container or per pod, durations as histograms."""

from __future__ import annotations

from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import ContainerKey, Device, DurationHistogram, LatencyMetrics
from diskguard.sampler.latency import SLOTS, DeviceLatency, LatencyHistogram
from diskguard.web.metrics import AgentCollector
from diskguard.web.view import SamplerState, SamplingState

DISK = Device(259, 1, "nvme0n1")
A, B = ContainerKey("uid-1", "app"), ContainerKey("uid-1", "sidecar")
NAMES = {A: ("shop", "web-0", "app"), B: ("shop", "web-0", "sidecar")}


def _hist(slot: int, n: int, sum_ns: int) -> LatencyHistogram:
    slots = [0] * SLOTS
    slots[slot] = n
    return LatencyHistogram(tuple(slots), sum_ns)


def _state() -> SamplingState:
    empty = LatencyHistogram()
    latency = {
        A: {DISK: DeviceLatency(empty, _hist(10, 3, 3_000_000))},
        B: {DISK: DeviceLatency(empty, _hist(12, 1, 4_000_000))},
    }
    return SamplingState(
        SamplerState(
            kind="bpf",
            degraded=None,
            latency_problem=None,
            interval=1.0,
            passes=3,
            last_pass_seconds=0.002,
            errors=0,
            pass_durations=DurationHistogram().observe(0.002).observe(0.3),
            latency=latency,
        )
    )


def _families(per: LatencyMetrics) -> dict[str, Any]:
    collector = AgentCollector(cast(Any, None))
    registry = CollectorRegistry(auto_describe=False)

    class Only:
        def collect(self) -> Any:
            yield from collector._latency(_state(), NAMES, per)
            yield from collector._sampling(_state(), NAMES)

    registry.register(Only())
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_latency_per_container_names_the_disk_by_name_and_numbers() -> None:
    family = _families(LatencyMetrics.CONTAINER)["diskguard_container_io_latency_seconds"]
    counts = {s.labels["container"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {"app": 3, "sidecar": 1}
    sample = family.samples[0]
    assert (sample.labels["device"], sample.labels["major"], sample.labels["minor"]) == (
        "nvme0n1",
        "259",
        "1",
    )
    assert not any(s.labels.get("direction") == "read" for s in family.samples)  # none yet


def test_latency_per_pod_sums_the_containers_and_off_leaves_it_out() -> None:
    families = _families(LatencyMetrics.POD)
    assert "diskguard_container_io_latency_seconds" not in families
    family = families["diskguard_pod_io_latency_seconds"]
    assert all("container" not in s.labels for s in family.samples)
    [count] = [s.value for s in family.samples if s.name.endswith("_count")]
    [total] = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert (count, total) == (4, pytest.approx(0.007))
    off = _families(LatencyMetrics.OFF)
    assert not any("latency" in name for name in off)


def test_sampler_pass_durations_are_a_histogram_and_degraded_is_a_boolean() -> None:
    families = _families(LatencyMetrics.OFF)
    passes = families["diskguard_sampler_pass_duration_seconds"]
    by_le = {s.labels["le"]: s.value for s in passes.samples if s.name.endswith("_bucket")}
    assert by_le["0.0025"] == 1 and by_le["0.25"] == 1 and by_le["0.5"] == 2
    assert by_le["+Inf"] == 2
    [info] = families["diskguard_sampler_info"].samples
    assert info.labels == {"kind": "bpf", "degraded": "false"}
    assert "diskguard_container_iops" not in families  # rates: rate() over the counters


def test_duration_histogram_buckets() -> None:
    h = DurationHistogram(bounds=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 5.0):
        h = h.observe(seconds)
    assert h.counts == (2, 1, 1)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert h.sum_seconds == pytest.approx(5.65)
