"""Pick a sampler: eBPF when it can run here, else the kernel's cgroup counters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diskguard.model import CgroupVersion, Device, SamplerKind
from diskguard.sampler.base import Logger, Sampler, SamplerUnavailable
from diskguard.sampler.bpf import BpfOptions, open_bpf_sampler
from diskguard.sampler.cgroupfs import V1_IOS, CgroupSampler


def _check_cgroup_counters(root: Path, version: CgroupVersion) -> None:
    if version is CgroupVersion.V1:
        if not (root / V1_IOS).is_file():
            raise SamplerUnavailable(f"{root / V1_IOS} missing: no v1 blkio throttle counters")
        return
    try:
        controllers = (root / "cgroup.controllers").read_text().split()
    except OSError as e:
        raise SamplerUnavailable(f"{root} is not a cgroup v2 hierarchy: {e}") from e
    if "io" not in controllers:
        raise SamplerUnavailable(f"the io controller is not available in {root}")


def open_sampler(
    kind: SamplerKind,
    devices: Sequence[Device],
    cgroup_hierarchy_path: Path,
    version: CgroupVersion,
    log: Logger,
    *,
    bpf_options: BpfOptions | None = None,
) -> Sampler:
    """Open the requested sampler.

    BPF raises SamplerUnavailable with the reason when eBPF cannot run; AUTO falls back
    to the cgroup sampler, logs the reason once and exposes it as `degraded`.
    """
    if not devices:
        raise SamplerUnavailable("no data devices to measure")
    bpf_reason: str | None = None
    if kind is not SamplerKind.CGROUP:
        try:
            return open_bpf_sampler(devices, cgroup_hierarchy_path, version, log, bpf_options)
        except SamplerUnavailable as e:
            if kind is SamplerKind.BPF:
                raise
            bpf_reason = str(e)
    try:
        _check_cgroup_counters(cgroup_hierarchy_path, version)
    except SamplerUnavailable as e:
        if bpf_reason is None:
            raise
        raise SamplerUnavailable(f"eBPF sampler: {bpf_reason}; cgroup counters: {e}") from e
    degraded = None
    if bpf_reason is not None:
        degraded = f"eBPF sampler unavailable ({bpf_reason}); using the kernel's cgroup IO counters"
        log.warning("BPF sampler unavailable", reason=bpf_reason, fallback="cgroup")
    return CgroupSampler(devices, cgroup_hierarchy_path, version, log, degraded)
