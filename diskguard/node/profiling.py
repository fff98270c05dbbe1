"""Measuring what a data disk can do, with fio: the jobs, their arguments, fio's answer,
and the checks before (free space, a disk quiet enough that the figures are its own).

Each of the four limit fields gets one short time-based fio run on a temporary file inside
the data mount, with O_DIRECT (the page cache would measure memory) and libaio at a queue
depth that saturates a local NVMe disk: 4k random reads and writes for IOPS, 1M sequential
reads and writes for bytes/s — the shapes the kernel's blk-throttle limits count. Never
the raw device: a filesystem in use sits on it.

Pure except `run_fio`, `disk_stat` and `space`, which read the system.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs

from diskguard.model import Counters, Device, Direction, LimitField, LimitUnit
from diskguard.node.diskstats import SYS_DEV_BLOCK, DiskStatError, read_block_stat

# Other IO above either of these while `profile` looks at the disk: the figures would be
# shared with it (and the measurement would slow it down). --force measures anyway.
BUSY_IOPS = 100.0
BUSY_BPS = 10 * 2**20
# Room to leave on the filesystem beyond the test file: this much of it, at least
# FREE_MARGIN_MIN (the disk holds the node's workloads; profile must never fill it).
FREE_MARGIN_FRACTION = 0.05
FREE_MARGIN_MIN = 16 * 2**20
MAX_FIO_OUTPUT = 16 * 2**20


class ProfileError(Exception):
    """A disk that cannot be measured (said why), or fio failing."""


@attrs.frozen
class Job:
    """One fio run: the limit field it measures and how."""

    field: LimitField
    block_size: str
    sequential: bool
    iodepth: int

    @property
    def name(self) -> str:
        pattern = "seq" if self.sequential else "rand"
        return f"{pattern}{self.field.direction}-{self.block_size}"

    @property
    def rw(self) -> str:
        """fio's rw=: read, write, randread or randwrite."""
        return ("" if self.sequential else "rand") + str(self.field.direction)


JOBS: tuple[Job, ...] = (
    Job(LimitField.RIOPS, "4k", sequential=False, iodepth=32),
    Job(LimitField.WIOPS, "4k", sequential=False, iodepth=32),
    Job(LimitField.RBPS, "1M", sequential=True, iodepth=8),
    Job(LimitField.WBPS, "1M", sequential=True, iodepth=8),
)


def fio_args(
    job: Job, path: Path, *, size: int, seconds: float, numjobs: int, fio: str = "fio"
) -> list[str]:
    return [
        fio,
        f"--name={job.name}",
        # fio splits --filename at ':' (several files): escape it in the path.
        "--filename=" + str(path).replace(":", "\\:"),
        f"--size={size}",
        f"--rw={job.rw}",
        f"--bs={job.block_size}",
        f"--iodepth={job.iodepth}",
        # Sequential jobs are one stream (several would read the same offsets); random
        # ones saturate the queue with every job.
        f"--numjobs={1 if job.sequential else numjobs}",
        "--group_reporting",
        "--thread",  # one process: a kill on timeout or Ctrl-C stops every job
        "--direct=1",
        "--ioengine=libaio",
        "--time_based",
        f"--runtime={max(1, round(seconds))}s",
        "--ramp_time=1s",  # queues fill and the disk's write cache settles first
        "--norandommap",
        "--randrepeat=0",
        "--output-format=json",
    ]


def parse_fio(output: bytes, job: Job) -> float:
    """The job's IOPS or bytes/s from fio's JSON output (every job of the group summed)."""
    # fio may print warnings before the JSON document.
    start = output.find(b"{")
    try:
        doc = json.loads(output[start:] if start >= 0 else output)
        side = "read" if job.field.direction is Direction.READ else "write"
        key = "iops" if job.field.unit is LimitUnit.IOPS else "bw_bytes"
        value = sum(float(j[side][key]) for j in doc["jobs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"fio's output for {job.name} is not what was expected: {exc}") from None
    if value <= 0:
        raise ProfileError(f"fio measured nothing for {job.name}")
    return value


def run_fio(args: Sequence[str], timeout: float) -> bytes:
    try:
        done = subprocess.run(list(args), capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ProfileError(
            "fio is not installed: `apt-get install fio` (Debian), or run `diskguard profile` "
            "where it is (README, Disk capacity)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ProfileError(f"fio did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout)[-2000:].decode(errors="replace").strip()
        raise ProfileError(f"fio failed (exit {done.returncode}): {said}")
    return done.stdout[:MAX_FIO_OUTPUT]


def disk_stat(device: Device, sys_dev_block: Path = SYS_DEV_BLOCK) -> Counters:
    try:
        return read_block_stat(device, sys_dev_block)
    except DiskStatError as exc:
        raise ProfileError(f"the IO counters of {device.name or device}: {exc}") from None


def busy(before: Counters, after: Counters, seconds: float) -> str:
    """Why the disk is too busy to measure ("" when it is quiet enough)."""
    iops = (after.rios + after.wios - before.rios - before.wios) / seconds
    bps = (after.rbytes + after.wbytes - before.rbytes - before.wbytes) / seconds
    if iops > BUSY_IOPS or bps > BUSY_BPS:
        return (
            f"other IO is running on it ({iops:,.0f} IOPS, {bps / 2**20:,.1f} MiB/s over "
            f"{seconds:g} s; quiet means at most {BUSY_IOPS:,.0f} IOPS and "
            f"{BUSY_BPS // 2**20} MiB/s)"
        )
    return ""


@attrs.frozen
class Space:
    free: int  # bytes available to an unprivileged writer
    total: int


def space(path: Path) -> Space:
    st = os.statvfs(path)
    return Space(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def check_space(room: Space, size: int) -> str:
    """Why a test file of `size` bytes does not fit ("" when it does)."""
    margin = max(FREE_MARGIN_MIN, round(room.total * FREE_MARGIN_FRACTION))
    if room.free < size + margin:
        return (
            f"{room.free / 2**20:,.0f} MiB free; the test file needs {size / 2**20:,.0f} MiB "
            f"and {margin / 2**20:,.0f} MiB must stay free (--size)"
        )
    return ""
