"""The loader process hand-over: BCC compiles in a child, this process reads with bpf().

The module's `bpf_sampler` (conftest) already comes through the loader, so every count test
in test_sampler_kernel.py and test_latency_kernel.py runs against the handed-over maps;
here: the layouts, the device filter, what a failing loader leaves, and SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from diskguard.model import CgroupVersion, SamplerKind
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.sampler.base import SamplerUnavailable, Target
from diskguard.sampler.bpf import BpfOptions, BpfSampler
from diskguard.sampler.bpfsys import fdinfo
from diskguard.sampler.cgroupfs import CgroupSampler
from diskguard.sampler.factory import open_sampler
from diskguard.sampler.handoff import open_via_loader, run_loader
from diskguard.sampler.maplayout import expected_sizes
from tests.kernel_fixtures import KubeletRoot, LoopDisk, RunInCgroup

from .conftest import RecordingLog, fio_result, start_fio

pytestmark = [pytest.mark.kernel, pytest.mark.bpf, pytest.mark.slow]

SLOW = 8.0 if os.environ.get("DISKGUARD_LANE") == "v2" else 1.0  # as tests/conftest.py


def scaled(seconds: float) -> float:
    return seconds * SLOW


def program_ids(pid: int | str = "self") -> set[int]:
    """Ids of the BPF programs a process holds (`prog_id:` in its fds' fdinfo)."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:  # closed meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def loaded_programs() -> set[int]:
    """Ids of every BPF program in the kernel, as bpftool lists them."""
    if shutil.which("bpftool") is None:
        pytest.skip("needs bpftool")
    out = subprocess.run(
        ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def wait_gone(ids: set[int], seconds: float = 10) -> set[int]:
    """The ids still loaded after a bounded wait: the kernel frees a detached program from
    a work queue after an RCU grace period, so it may be listed a little while longer."""
    deadline = time.monotonic() + scaled(seconds)
    while (left := ids & loaded_programs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_loader_reports_the_layouts_maplayout_reads(bpf_options: BpfOptions) -> None:
    """Key/value sizes as BCC derived them from the C source = the ctypes twins = what
    the kernel says the handed-over map descriptors hold."""
    handoff = run_loader(bpf_options, CgroupVersion.V1)
    try:
        maps = handoff.message["maps"]
        assert set(maps) == {"dg_counts", "dg_devices", "dg_lat"}, maps
        for name, desc in maps.items():
            want = expected_sizes(name)
            assert (desc["key_size"], desc["value_size"]) == want, (name, desc)
            info = fdinfo(handoff.fds[desc["fd"]])
            assert (int(info["key_size"]), int(info["value_size"])) == want, (name, info)
        kinds = {(a["kind"], a["target"]) for a in handoff.message["attachments"]}
        assert kinds == {
            ("raw_tracepoint", "block_rq_issue"),
            ("raw_tracepoint", "block_rq_complete"),
        }
        # Each attachment descriptor holds one of the handed-over programs.
        progs = {
            int(fdinfo(handoff.fds[i])["prog_id"]) for i in handoff.message["programs"].values()
        }
        for a in handoff.message["attachments"]:
            assert int(fdinfo(handoff.fds[a["fd"]])["prog_id"]) in progs, a
        assert handoff.message["peak_kib"] > 0
        # The split the README's memory figures quote: both parts there, within the peak.
        parts = handoff.message["anon_kib"] + handoff.message["file_kib"]
        assert handoff.message["anon_kib"] > 0 and 0 < parts <= handoff.message["peak_kib"]
    finally:
        handoff.close_all()


def test_the_agent_side_never_loads_bcc(bpf_sampler: BpfSampler) -> None:
    """Reading and updating the maps goes through bpf() directly: neither the bcc module
    nor libbcc/LLVM are in this process (the loader had them)."""
    assert "bcc" not in sys.modules
    mapped = Path("/proc/self/maps").read_text()
    assert "libbcc" not in mapped and "libLLVM" not in mapped and "libclang" not in mapped
    assert int(bpf_sampler.info["loader_peak_kib"]) > 0
    assert float(bpf_sampler.info["loader_seconds"]) > 0


def test_the_device_filter_follows_the_data_disks(
    bpf_sampler: BpfSampler, kubelet_root: KubeletRoot, disk: LoopDisk, run_in_cgroup: RunInCgroup
) -> None:
    """The agent updates the program's device filter map itself (data disks change): IO on
    a disk taken out is no longer counted, and is again once it is put back."""
    assert disk.mount is not None
    devices = list(bpf_sampler.devices)
    others = [d for d in devices if d != disk.device]
    cg = kubelet_root.leaf("filtered")
    target = Target.of(cg)
    try:
        bpf_sampler.set_devices(others)
        assert bpf_sampler.filtered_devices() == {(d.major, d.minor) for d in others}
        fio_result(start_fio(run_in_cgroup, cg, disk.mount, "randwrite", number_ios=100))
        bpf_sampler.set_devices(devices)
        assert bpf_sampler.filtered_devices() == {(d.major, d.minor) for d in devices}
        filtered_out = bpf_sampler.read([target])[target][disk.device]
        assert filtered_out.wios == 0, filtered_out  # 100 writes while the disk was out
        fio_result(start_fio(run_in_cgroup, cg, disk.mount, "randwrite", number_ios=100))
        assert bpf_sampler.read([target])[target][disk.device].wios == 100
    finally:
        bpf_sampler.set_devices(devices)


@pytest.fixture
def broken_source(bpf_options: BpfOptions, tmp_path: Path) -> BpfOptions:
    """The program with a C syntax error: the loader's compile fails."""
    broken = tmp_path / "diskguard_io.c"
    broken.write_text(bpf_options.source.read_text() + "\nthis is not C;\n")
    return attrs.evolve(bpf_options, source=broken)


def test_a_failing_loader_falls_back_to_the_cgroup_counters(
    broken_source: BpfOptions, cgroup_hierarchy: CgroupHierarchy, disk: LoopDisk
) -> None:
    log = RecordingLog()
    before = program_ids()
    sampler = open_sampler(
        SamplerKind.AUTO,
        [disk.device],
        cgroup_hierarchy.path,
        cgroup_hierarchy.version,
        log,
        bpf_options=broken_source,
    )
    try:
        assert isinstance(sampler, CgroupSampler)
        assert sampler.degraded is not None
        assert "BPF compile/load failed" in sampler.degraded, sampler.degraded
        assert "this is not C" in sampler.degraded or "error" in sampler.degraded
        [warned] = log.named("BPF sampler unavailable")
        assert "BPF compile/load failed" in warned["reason"]
    finally:
        sampler.close()
    assert program_ids() == before  # nothing handed over, nothing held
    # SAMPLER=bpf: the same failure stops start-up, with the reason.
    with pytest.raises(SamplerUnavailable, match="BPF compile/load failed"):
        open_sampler(
            SamplerKind.BPF,
            [disk.device],
            cgroup_hierarchy.path,
            cgroup_hierarchy.version,
            RecordingLog(),
            bpf_options=broken_source,
        )


def test_a_loader_over_its_time_is_killed(
    bpf_options: BpfOptions, cgroup_hierarchy: CgroupHierarchy, disk: LoopDisk
) -> None:
    started = time.monotonic()
    with pytest.raises(SamplerUnavailable, match=r"did not finish within 0\.2s"):
        open_via_loader(
            [disk.device],
            cgroup_hierarchy.path,
            cgroup_hierarchy.version,
            RecordingLog(),
            attrs.evolve(bpf_options, loader_timeout=0.2),
        )
    assert time.monotonic() - started < scaled(5)  # not the compile's time
    # No loader left running (it was killed and reaped).
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"diskguard.sampler.loader" not in cmdline, pid


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9"),
        (
            "import sys; print('boom', file=sys.stderr); sys.exit(3)",
            "exited with code 3 without handing anything over: boom",
        ),
    ],
)
def test_a_crashing_loader_says_how_it_died(
    bpf_options: BpfOptions,
    cgroup_hierarchy: CgroupHierarchy,
    disk: LoopDisk,
    script: str,
    reason: str,
) -> None:
    with pytest.raises(SamplerUnavailable, match=reason):
        open_via_loader(
            [disk.device],
            cgroup_hierarchy.path,
            cgroup_hierarchy.version,
            RecordingLog(),
            bpf_options,
            command=(sys.executable, "-c", script),
        )


HOLDER = """
import sys, time
from pathlib import Path
from diskguard.model import CgroupVersion, Device
from diskguard.sampler.bpf import BpfOptions, open_bpf_sampler
class Log:
    def info(self, *a, **k): pass
    def warning(self, *a, **k): pass
major, minor, root, version, cache = sys.argv[1:]
s = open_bpf_sampler([Device(int(major), int(minor))], Path(root), CgroupVersion(version), Log(),
                     BpfOptions(cache_dir=Path(cache)))
print("ready", flush=True)
time.sleep(3600)
"""


@pytest.fixture
def holder(
    bpf_options: BpfOptions, cgroup_hierarchy: CgroupHierarchy, disk: LoopDisk
) -> Iterator[subprocess.Popen[str]]:
    """A process that took the hand-over (as the agent does) and holds it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            str(disk.device.major),
            str(disk.device.minor),
            str(cgroup_hierarchy.path),
            cgroup_hierarchy.version.value,
            str(bpf_options.cache_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigkill_of_the_holder_leaves_no_program_attached(
    holder: subprocess.Popen[str],
) -> None:
    assert holder.stdout is not None
    line = holder.stdout.readline()  # bounded by the test's timeout
    assert line.strip() == "ready", holder.communicate()[1][-2000:]
    mine = program_ids(holder.pid)
    assert len(mine) == 2, mine  # the issue and completion probes
    assert mine <= loaded_programs()
    # The loader has left (it exits right after sending): only the holder has them.
    mapped = Path(f"/proc/{holder.pid}/maps").read_text()
    assert "libbcc" not in mapped and "libLLVM" not in mapped
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=scaled(10))
    left = wait_gone(mine)
    assert not left, f"BPF programs {left} still loaded after SIGKILL of their only holder"
