"""The agent's side of the BPF loader: start it, take over what it loaded, read with bpf().

The loader (`python -m diskguard.sampler.loader`, same interpreter and install) compiles
and attaches the program and sends the descriptors over a socketpair (SCM_RIGHTS). From
then on this process alone holds the attachment: closing the descriptors (BpfSampler.close,
or the process dying, SIGKILL included) detaches the program. They are received
close-on-exec, so no child of the agent can keep the program attached after it.

Nothing here imports bcc: the agent never maps libbcc, LLVM or clang.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from diskguard.model import CgroupVersion, Device
from diskguard.sampler.base import Logger, SamplerUnavailable
from diskguard.sampler.bpf import BpfOptions, BpfSampler, maps_from, preflight
from diskguard.sampler.bpfsys import fdinfo
from diskguard.sampler.loader import options_to_json
from diskguard.sampler.maplayout import expected_sizes

MAX_MESSAGE = 1 << 20  # the description is a few kB; anything past this is a broken loader
MAX_FDS = 32  # maps, programs and attachments: under ten today
STDERR_TAIL = 4000  # bytes of the loader's stderr kept for a failure reason


def loader_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "diskguard.sampler.loader")


@attrs.frozen
class Handoff:
    """What the loader sent: its description and the descriptors, now ours."""

    message: dict[str, Any]
    fds: tuple[int, ...]
    seconds: float

    def close_all(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _tail(data: bytes) -> str:
    text = data[-STDERR_TAIL:].decode(errors="replace").strip()
    kept = [ln for ln in text.splitlines() if ln.strip()][-6:]
    return " | ".join(kept)


def _receive(sock: socket.socket, deadline: float) -> tuple[bytes, list[int]]:
    """The loader's frame (8-byte length + JSON) and the descriptors on its first byte."""
    data = bytearray()
    fds: list[int] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        msg, got, flags, _ = socket.recv_fds(sock, 65536, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        fds.extend(got)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise SamplerUnavailable(f"the BPF loader sent more than {MAX_FDS} descriptors")
        if not msg:
            break  # the loader closed its end (it exited)
        data += msg
        if len(data) > MAX_MESSAGE + 8:
            break
        if len(data) >= 8 and len(data) >= 8 + int.from_bytes(data[:8], "little"):
            break
    return bytes(data), fds


def run_loader(
    opts: BpfOptions, version: CgroupVersion, command: Sequence[str] | None = None
) -> Handoff:
    """Start the loader and take what it sends; SamplerUnavailable with the reason when it
    fails, crashes or overruns `opts.loader_timeout` (then it is killed)."""
    started = time.monotonic()
    deadline = started + opts.loader_timeout
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [
        *(command or loader_command()),
        "--socket",
        str(theirs.fileno()),
        "--request",
        options_to_json(opts, version),
    ]
    with ours, tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            theirs.close()
            raise SamplerUnavailable(f"cannot start the BPF loader: {e}") from e
        theirs.close()  # only the loader holds it now: its exit ends our reads
        fds: list[int] = []
        try:
            try:
                data, fds = _receive(ours, deadline)
            except TimeoutError:
                proc.kill()
                raise SamplerUnavailable(
                    f"the BPF loader did not finish within {opts.loader_timeout:g}s (killed)"
                ) from None
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            errors.seek(0)
            stderr = _tail(errors.read())
            length = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
            if length < 0 or length > MAX_MESSAGE or len(data) != 8 + length:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise SamplerUnavailable(
                    f"the BPF loader {how} without handing anything over"
                    + (f": {stderr}" if stderr else "")
                )
            try:
                message = json.loads(data[8:])
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                raise SamplerUnavailable(f"the BPF loader sent garbage: {e}") from e
            if not message.get("ok"):
                raise SamplerUnavailable(str(message.get("error") or "BPF loader failed"))
        except BaseException:
            for fd in fds:
                os.close(fd)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    return Handoff(message, tuple(fds), time.monotonic() - started)


def _fd(handoff: Handoff, index: object, what: str) -> int:
    if not isinstance(index, int) or not 0 <= index < len(handoff.fds):
        raise ValueError(f"{what}: no descriptor #{index!r} in the hand-over")
    return handoff.fds[index]


USED_MAPS = ("dg_counts", "dg_devices", "dg_lat")


def _adopt(
    handoff: Handoff,
    devices: Sequence[Device],
    root: Path,
    log: Logger,
) -> BpfSampler:
    """The sampler over the handed-over descriptors. On an exception nothing is closed
    here: the caller closes every descriptor of the hand-over, once."""
    m = handoff.message
    latency_problem = m.get("latency_problem")
    wanted = USED_MAPS if latency_problem is None else USED_MAPS[:2]
    maps_fds: dict[str, int] = {}
    for name, desc in dict(m["maps"]).items():
        if name not in wanted:
            continue
        reported = (desc.get("key_size"), desc.get("value_size"))
        if reported != expected_sizes(name):
            raise ValueError(
                f"map {name}: the loader's BCC laid it out as {reported[0]}/{reported[1]} "
                f"bytes, diskguard.sampler.maplayout as {expected_sizes(name)}"
            )
        maps_fds[name] = _fd(handoff, desc.get("fd"), f"map {name}")
    missing = set(wanted) - set(maps_fds)
    if missing:
        raise ValueError(f"maps {sorted(missing)} missing from the hand-over")
    attached = []
    for a in m["attachments"]:
        fd = _fd(handoff, a.get("fd"), f"attachment {a.get('target')}")
        fdinfo(fd)  # an open descriptor of ours
        attached.append(f"{a.get('kind')} {a.get('target')}")
    if not attached:
        raise ValueError("nothing attached")
    # Everything but the maps read here is kept open until close: the attachment and
    # program descriptors are what holds the program in the kernel.
    held = tuple(fd for fd in handoff.fds if fd not in maps_fds.values())

    def release() -> None:
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)

    info = {str(k): str(v) for k, v in dict(m.get("info") or {}).items()}
    info["attached"] = ", ".join(attached)
    info["loader_seconds"] = f"{handoff.seconds:.2f}"
    info["loader_peak_kib"] = str(int(m.get("peak_kib") or 0))
    info["loader_anon_kib"] = str(int(m.get("anon_kib") or 0))
    info["loader_file_kib"] = str(int(m.get("file_kib") or 0))
    return BpfSampler(
        maps_from(maps_fds, latency_problem is None),
        devices,
        root,
        log,
        m.get("degraded"),
        info,
        release,
        latency_problem,
        keep=held,
    )


def open_via_loader(
    devices: Sequence[Device],
    cgroup_root: Path,
    version: CgroupVersion,
    log: Logger,
    opts: BpfOptions,
    command: Sequence[str] | None = None,
) -> BpfSampler:
    """Load the program in the loader process and read it from here (see module doc)."""
    preflight(devices)
    handoff = run_loader(opts, version, command)
    for event, kw in handoff.message.get("warnings") or []:
        log.warning(str(event), **dict(kw))
    try:
        sampler = _adopt(handoff, devices, cgroup_root, log)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        handoff.close_all()
        raise SamplerUnavailable(f"cannot use what the BPF loader handed over: {e}") from e
    if sampler.degraded:
        log.warning("BPF sampler degraded", reason=sampler.degraded)
    log.info("BPF sampler loaded", **sampler.info)
    return sampler
