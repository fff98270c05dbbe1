"""Per-container IO measurement: eBPF (blkcg attribution) or the kernel's cgroup counters."""

from diskguard.sampler.base import Sampler, SamplerUnavailable, Target
from diskguard.sampler.factory import open_sampler
from diskguard.sampler.rates import RateTracker

__all__ = [
    "RateTracker",
    "Sampler",
    "SamplerUnavailable",
    "Target",
    "open_sampler",
]
