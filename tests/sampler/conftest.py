"""Fixtures for the sampler tests: one loop disk and one compiled BPF program per module."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from diskguard.model import Device
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.devices import whole_disk
from diskguard.sampler.bpf import BpfOptions, BpfSampler, open_bpf_sampler
from diskguard.sampler.btf import VMLINUX_BTF
from diskguard.sampler.headers import HeadersError, find_kernel_headers
from diskguard.testing import lab
from diskguard.testing.lab import fio_result
from tests.kernel_fixtures import LoopDisk, RunInCgroup, loop_disk_ctx, prepare_fio_file

__all__ = ["RecordingLog", "fio_result", "start_fio"]

FIO_MIB = 64


@attrs.define
class RecordingLog:
    """A Logger that keeps what was logged, so tests can check reasons are reported."""

    events: list[tuple[str, str, dict[str, Any]]] = attrs.field(factory=list)

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, name, kw in self.events if name == event]


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture(scope="session")
def header_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("header-cache")


def bpf_missing(cache: Path) -> str | None:
    """Why BPF tests cannot run here (a missing precondition), or None.

    Only preconditions are checked, so a sampler that fails where it should work fails
    the test instead of skipping it.
    """
    if os.geteuid() != 0:
        return "needs root"
    if importlib.util.find_spec("bcc") is None:
        return "needs BCC (python3-bpfcc) importable from this interpreter"
    if not VMLINUX_BTF.exists():
        return f"needs kernel BTF at {VMLINUX_BTF}"
    try:
        find_kernel_headers(os.uname().release, cache)
    except HeadersError as e:
        return f"needs kernel headers for BCC: {e}"
    return None


@pytest.fixture(scope="session")
def bpf_options(header_cache: Path) -> BpfOptions:
    reason = bpf_missing(header_cache)
    if reason:
        pytest.skip(reason)
    return BpfOptions(cache_dir=header_cache)


@pytest.fixture(scope="module")
def disk(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopDisk]:
    """A loop disk with ext4 and a laid-out fio file, shared by a module's tests."""
    with loop_disk_ctx(tmp_path_factory.mktemp("sampler-disk")) as d:
        assert d.mount is not None
        prepare_fio_file(d.mount, FIO_MIB)
        yield d


@pytest.fixture(scope="module")
def backing_disk(disk: LoopDisk) -> Device | None:
    """The whole disk holding the loop device's backing file (where its loop worker's IO
    goes), or None when the file lives on tmpfs or similar."""
    dev = os.stat(disk.backing).st_dev
    if os.major(dev) == 0:
        return None
    return whole_disk(os.major(dev), os.minor(dev))


@pytest.fixture(scope="module")
def bpf_sampler(
    bpf_options: BpfOptions,
    cgroup_hierarchy: CgroupHierarchy,
    disk: LoopDisk,
    backing_disk: Device | None,
) -> Iterator[BpfSampler]:
    """Compiled and attached once per module (BCC compiles take a while)."""
    devices = [disk.device] + ([backing_disk] if backing_disk else [])
    sampler = open_bpf_sampler(
        devices, cgroup_hierarchy.path, cgroup_hierarchy.version, RecordingLog(), bpf_options
    )
    try:
        yield sampler
    finally:
        sampler.close()


def start_fio(
    run_in_cgroup: RunInCgroup,
    cgroup: Path,
    directory: Path,
    rw: str,
    *,
    runtime: float | None = None,
    number_ios: int | None = None,
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """lab's `start_fio` (4k, synchronous) through run_in_cgroup; collect with `fio_result`."""
    return lab.start_fio(
        cgroup,
        directory,
        rw,
        runtime=runtime,
        size_mib=FIO_MIB,
        number_ios=number_ios,
        extra=extra,
        prefix=prefix,
        spawn=run_in_cgroup,
    )
