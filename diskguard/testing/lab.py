"""A local single-node lab on the real kernel: loop-device disks, kubelet-layout cgroups,
processes inside cgroups, and fio. Used by `diskguard demo`, the benchmarks and the tests.

Everything made here is uniquely named and undone on exit, even after a failure; nothing
that existed before is touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

import attrs

from diskguard.model import CgroupDriver, CgroupVersion, ContainerRef, Device
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import container_cgroup_path


class LabError(RuntimeError):
    pass


def run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


# ---------------------------------------------------------------- cgroups


def enable_io(cgroup_dir: Path) -> None:
    """Enable the io controller for cgroup_dir's children (v2 only; kubelet does this)."""
    control = cgroup_dir / "cgroup.subtree_control"
    if "io" not in control.read_text().split():
        control.write_text("+io")


def cgroup_pids(cgroup_dir: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup_dir / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroup_tree(top: Path, timeout: float = 10.0) -> None:
    """Kill every process left in `top` and below, then rmdir bottom-up."""
    if not top.is_dir():
        return
    dirs = [Path(d) for d, _, _ in os.walk(top, topdown=False)]
    for d in dirs:
        for pid in cgroup_pids(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for d in dirs:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # EBUSY while killed tasks finish exiting.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                for pid in cgroup_pids(d):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)


@attrs.define
class KubeletRoot:
    """A kubelet `--cgroup-root` of our own, so no real `kubepods` is ever touched.

    The cgroupfs driver puts pods under `<hierarchy>/<name>/`, the systemd driver under
    `<hierarchy>/<name>.slice/`; `cleanup` removes both.
    """

    hierarchy: CgroupHierarchy
    name: str

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    def top_dirs(self) -> tuple[Path, ...]:
        return (self.hierarchy.path / self.name, self.hierarchy.path / f"{self.name}.slice")

    def make_dirs(self, relative: PurePath | str) -> Path:
        """mkdir -p below the hierarchy; on v2 every parent on the way gets +io."""
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{relative} must be relative and below the hierarchy")
        if not any(rel.parts[0] == top.name for top in self.top_dirs()):
            raise ValueError(f"{relative} is not below this kubelet root")
        current = self.hierarchy.path
        for part in rel.parts:
            if self.hierarchy.version is CgroupVersion.V2:
                enable_io(current)
            current = current / part
            current.mkdir(exist_ok=True)
        return current

    def create(self, ref: ContainerRef, driver: CgroupDriver) -> Path:
        """Create the container cgroup exactly where kubelet + runtime would put it."""
        return self.make_dirs(container_cgroup_path(ref, driver, self.prefix))

    def leaf(self, name: str = "leaf") -> Path:
        """A plain cgroup under this root, for callers that do not care about the layout."""
        return self.make_dirs(Path(self.name, name))

    def cleanup(self) -> None:
        for top in self.top_dirs():
            remove_cgroup_tree(top)


# The shell joins the cgroup itself before exec'ing the command, so not a single
# instruction of the command runs outside it.
_JOIN_AND_EXEC = 'echo $$ > "$1" && shift && exec "$@"'


def spawn_in_cgroup(
    cgroup_dir: Path, argv: Sequence[str], **kwargs: Any
) -> subprocess.Popen[bytes]:
    procs = Path(cgroup_dir) / "cgroup.procs"
    return subprocess.Popen(["sh", "-c", _JOIN_AND_EXEC, "sh", str(procs), *argv], **kwargs)


# ---------------------------------------------------------------- loop disks

# The first GiB of a scratch disk is left to tests that write the raw disk.
SCRATCH_HEAD = 1 << 30


def device_of(node: str) -> Device:
    rdev = os.stat(node).st_rdev
    return Device(os.major(rdev), os.minor(rdev), Path(node).name)


def wait_for_node(node: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(node):
        if time.monotonic() > deadline:
            raise LabError(f"{node} did not appear")
        time.sleep(0.02)


@attrs.frozen
class LoopDisk:
    """A loop device on a sparse file, optionally with one partition and an ext4 mount.

    `device` is the whole loop disk (what throttle rules name); `partition` is the
    partition's own device (e.g. 259:N) when one was made; `mount` is where the
    filesystem (on the partition if there is one) is mounted, or None.
    """

    device: Device
    node: Path
    backing: Path
    mount: Path | None
    partition: Device | None = None
    direct_io: bool = False


def _attach(backing: Path) -> tuple[str, bool]:
    """losetup with direct IO when the backing filesystem allows it (tmpfs before 6.6
    does not: EINVAL), else buffered."""
    try:
        return run(["losetup", "--find", "--show", "--direct-io=on", str(backing)]), True
    except LabError:
        return run(["losetup", "--find", "--show", str(backing)]), False


@attrs.define
class ScratchDisk:
    """Regions of a lane's scratch block device to back loop disks with.

    A loop device over a tmpfs file (what the qemu lane's /tmp is) cannot do direct IO,
    and under emulation it delivers 10-20% below a blk-throttle limit; one doing direct
    IO to a real disk is exact. So when the lane names a scratch disk, loop disks are
    carved out of it (losetup --offset/--sizelimit), cycling through the space after
    the first GiB (left to tests that write the raw disk). Tests run one at a time and
    every loop disk is detached at its test's end, so regions never overlap in time.
    """

    path: str
    size: int
    cursor: int = SCRATCH_HEAD

    def region(self, size: int) -> int:
        if self.cursor + size > self.size:
            self.cursor = SCRATCH_HEAD
        offset = self.cursor
        self.cursor += size
        return offset

    @classmethod
    def from_env(cls) -> ScratchDisk | None:
        path = os.environ.get("DISKGUARD_TEST_SCRATCH_DISK") or os.environ.get("DISKGUARD_VM_DISK")
        if not path or not os.path.exists(path) or not stat.S_ISBLK(os.stat(path).st_mode):
            return None
        rdev = os.stat(path).st_rdev
        sectors = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/size").read_text()
        size = int(sectors) * 512
        return cls(path, size) if size >= 2 * SCRATCH_HEAD else None


def _attach_region(scratch: ScratchDisk, size: int) -> str:
    offset = scratch.region(size)
    return run(
        [
            "losetup",
            "--find",
            "--show",
            "--direct-io=on",
            f"--offset={offset}",
            f"--sizelimit={size}",
            scratch.path,
        ]
    )


@contextlib.contextmanager
def loop_disk(
    workdir: Path,
    *,
    scratch: ScratchDisk | None = None,
    size_mib: int = 256,
    filesystem: bool = True,
    partition: bool = False,
    mount_name: str = "mnt",
) -> Iterator[LoopDisk]:
    """Set up a loop disk (a sparse file in `workdir`, or a region of `scratch`);
    everything is undone on exit, even after failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as undo:
        if scratch is not None:
            backing = Path(scratch.path)
            node, direct_io = _attach_region(scratch, size_mib << 20), True
        else:
            backing = workdir / "disk.img"
            with backing.open("wb") as f:
                f.truncate(size_mib << 20)
            undo.callback(backing.unlink, missing_ok=True)
            node, direct_io = _attach(backing)
        undo.callback(run, ["losetup", "--detach", node])
        wait_for_node(node)
        fs_node = node
        part_dev: Device | None = None
        if partition:
            # No partition-table parsers in some kernels: add the partition by hand.
            # Start and length are in 512-byte sectors.
            run(["addpart", node, "1", "2048", str(((size_mib - 2) << 20) // 512)])
            undo.callback(run, ["delpart", node, "1"])
            fs_node = f"{node}p1"
            wait_for_node(fs_node)
            part_dev = device_of(fs_node)
        mount: Path | None = None
        if filesystem:
            run(["mkfs.ext4", "-q", "-F", fs_node])
            mount = workdir / mount_name
            mount.mkdir()
            run(["mount", "-t", "ext4", fs_node, str(mount)])
            undo.callback(umount, mount)
        yield LoopDisk(
            device=device_of(node),
            node=Path(node),
            backing=backing,
            mount=mount,
            partition=part_dev,
            direct_io=direct_io,
        )


def lab_tools_missing() -> list[str]:
    return [tool for tool in ("losetup", "mkfs.ext4", "mount", "fio") if not shutil.which(tool)]


def umount(mount: Path) -> None:
    try:
        run(["umount", str(mount)])
    except LabError:
        # Something still holds it (a killed fio not yet gone): detach lazily rather
        # than leave the mount behind.
        run(["umount", "--lazy", str(mount)])


# ---------------------------------------------------------------- fio


@attrs.frozen
class FioResult:
    """What fio measured for one job (per direction): IOPS, bytes/s, IOs, runtime, and its
    completion-latency (clat) p50/p99 in seconds (None when the direction did no IO)."""

    read_iops: float
    write_iops: float
    read_bw: float
    write_bw: float
    read_ios: int
    write_ios: int
    read_bytes: int
    write_bytes: int
    runtime_s: float
    read_clat_p50_s: float | None = None
    read_clat_p99_s: float | None = None
    write_clat_p50_s: float | None = None
    write_clat_p99_s: float | None = None
    # CPU fio itself used per IO (user + system): the BPF program runs in the issuing task,
    # so its cost lands here (bench/sampler_bench.py).
    cpu_us_per_io: float = 0.0

    @classmethod
    def from_json(cls, report: dict[str, Any]) -> FioResult:
        job = report["jobs"][0]
        rd, wr = job["read"], job["write"]
        runtime_ms = max(rd["runtime"], wr["runtime"])
        ios = int(rd["total_ios"]) + int(wr["total_ios"])
        cpu_us = (
            (float(job.get("usr_cpu", 0)) + float(job.get("sys_cpu", 0)))
            / 100
            * float(job.get("job_runtime", 0))
            * 1000
        )
        return cls(
            read_iops=float(rd["iops"]),
            write_iops=float(wr["iops"]),
            read_bw=float(rd["bw_bytes"]),
            write_bw=float(wr["bw_bytes"]),
            read_ios=int(rd["total_ios"]),
            write_ios=int(wr["total_ios"]),
            read_bytes=int(rd["io_bytes"]),
            write_bytes=int(wr["io_bytes"]),
            runtime_s=runtime_ms / 1000.0,
            read_clat_p50_s=_clat(rd, "50.000000"),
            read_clat_p99_s=_clat(rd, "99.000000"),
            write_clat_p50_s=_clat(wr, "50.000000"),
            write_clat_p99_s=_clat(wr, "99.000000"),
            cpu_us_per_io=cpu_us / max(ios, 1),
        )


def _clat(side: dict[str, Any], percentile: str) -> float | None:
    """A clat percentile of one direction from fio's JSON (ns), in seconds."""
    if not side.get("total_ios"):
        return None
    value = side.get("clat_ns", {}).get("percentile", {}).get(percentile)
    return None if value is None else float(value) / 1e9


FIO_FILE = "diskguard-fio.dat"


def prepare_fio_file(directory: Path, size_mib: int) -> Path:
    """Write (not fallocate: unwritten extents read without IO) a file fio can use."""
    path = directory / FIO_FILE
    if path.exists() and path.stat().st_size == size_mib << 20:
        return path
    chunk = b"\xa5" * (1 << 20)
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return path


def fio_argv(
    path: Path,
    rw: str,
    bs: str = "4k",
    runtime: float | None = None,
    *,
    size_mib: int,
    ioengine: str = "psync",
    iodepth: int = 1,
    number_ios: int | None = None,
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> list[str]:
    """One O_DIRECT fio job on `path`: for `runtime` seconds, or `number_ios` IOs (or both,
    whichever comes first). `prefix` is a command to run fio under (such as chrt)."""
    argv = [
        *prefix,
        "fio",
        "--name=diskguard",
        f"--filename={path}",
        f"--size={size_mib}M",
        f"--rw={rw}",
        f"--bs={bs}",
        "--direct=1",
        f"--ioengine={ioengine}",
        f"--iodepth={iodepth}",
        "--thread",
        "--output-format=json",
        *extra,
    ]
    if runtime is not None:
        # In ms: fio reads a bare "0.5" as whole seconds.
        argv += [f"--runtime={round(runtime * 1000)}ms", "--time_based"]
    if number_ios is not None:
        argv.append(f"--number_ios={number_ios}")
    return argv


def parse_fio_output(out: bytes) -> FioResult:
    text = out.decode()
    # fio may print notes before the JSON document.
    return FioResult.from_json(json.loads(text[text.index("{") :]))


Spawn = Callable[..., "subprocess.Popen[bytes]"]


def start_fio(
    cgroup_dir: Path,
    directory: Path,
    rw: str = "randwrite",
    bs: str = "4k",
    runtime: float | None = None,
    *,
    size_mib: int = 64,
    ioengine: str = "psync",
    iodepth: int = 1,
    number_ios: int | None = None,
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
    spawn: Spawn = spawn_in_cgroup,
    stdout: int = subprocess.PIPE,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start one fio job (`fio_argv`) inside the cgroup, on a file in `directory` laid out
    beforehand (outside the cgroup). `spawn` is how: tests pass theirs, which kills the
    job at teardown whatever happens. Collect it with `fio_result`, or kill it."""
    path = prepare_fio_file(Path(directory), size_mib)
    argv = fio_argv(
        path,
        rw,
        bs,
        runtime,
        size_mib=size_mib,
        ioengine=ioengine,
        iodepth=iodepth,
        number_ios=number_ios,
        extra=extra,
        prefix=prefix,
    )
    return spawn(cgroup_dir, argv, stdout=stdout, stderr=stderr)


def fio_result(proc: subprocess.Popen[bytes], timeout: float = 60) -> FioResult:
    """Wait for a job `start_fio` started (killing it past `timeout`) and parse its report."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise LabError(f"fio ran past {timeout:g} s: {proc.args!r}") from None
    if proc.returncode != 0:
        raise LabError(f"fio failed ({proc.returncode}): {err.decode().strip()}")
    return parse_fio_output(out)


def start_load(
    cgroup_dir: Path,
    directory: Path,
    rw: str = "randwrite",
    *,
    runtime: float = 120,
    iodepth: int = 4,
    size_mib: int = 16,
    extra: Sequence[str] = (),
    spawn: Spawn = spawn_in_cgroup,
) -> subprocess.Popen[bytes]:
    """A background fio job with IOs queued (libaio) and its output discarded: the load a
    test limits or measures; kill it when done."""
    return start_fio(
        cgroup_dir,
        directory,
        rw,
        runtime=runtime,
        size_mib=size_mib,
        ioengine="libaio",
        iodepth=iodepth,
        extra=extra,
        spawn=spawn,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_fio(
    cgroup_dir: Path,
    directory: Path,
    rw: str = "randwrite",
    bs: str = "4k",
    runtime: float = 3,
    *,
    size_mib: int = 64,
    ioengine: str = "libaio",
    iodepth: int = 4,
    extra: Sequence[str] = (),
    spawn: Spawn = spawn_in_cgroup,
) -> FioResult:
    """One O_DIRECT fio job inside the cgroup for `runtime` seconds: what it measured.

    A few IOs in flight by default: with one synchronous IO at a time, each IO's service
    time (long on a CPU-starved machine or under emulation, where the loop device's worker
    waits for a CPU) adds to the wait a limit imposes, and fio measures below the limit."""
    proc = start_fio(
        cgroup_dir,
        directory,
        rw,
        bs,
        runtime,
        size_mib=size_mib,
        ioengine=ioengine,
        iodepth=iodepth,
        extra=extra,
        spawn=spawn,
    )
    try:
        return fio_result(proc, timeout=runtime + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
