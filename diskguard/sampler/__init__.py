"""Per-container IO measurement: eBPF (blkcg attribution) or the kernel's cgroup counters."""

from diskguard.sampler.base import Logger, Sampler, SamplerUnavailable, Snapshot, Target
from diskguard.sampler.bpf import BpfOptions
from diskguard.sampler.factory import open_sampler
from diskguard.sampler.latency import DeviceLatency, LatencyHistogram, LatencySnapshot
from diskguard.sampler.rates import RateSample, RateTracker

__all__ = [
    "BpfOptions",
    "DeviceLatency",
    "LatencyHistogram",
    "LatencySnapshot",
    "Logger",
    "RateSample",
    "RateTracker",
    "Sampler",
    "SamplerUnavailable",
    "Snapshot",
    "Target",
    "open_sampler",
]
