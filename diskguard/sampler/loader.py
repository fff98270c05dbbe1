"""The BPF loader process: `python -m diskguard.sampler.loader --socket FD --request JSON`.

Started by the agent (diskguard.sampler.handoff) beside itself, it compiles, loads and
attaches the program with BCC, then hands the descriptors that hold it all (the attachment
links or perf events, the programs, the maps the agent uses) to the agent over the given
Unix socket with SCM_RIGHTS, together with a JSON description, and leaves with
`os._exit`: BCC registers an `atexit` cleanup that would otherwise detach the program the
agent now holds. Nothing is pinned in bpffs, so once the agent's descriptors close (stop,
crash, SIGKILL) the kernel detaches and frees everything.

BCC, libbcc, LLVM and clang live only in this process; its peak memory is the compile's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from diskguard.model import CgroupVersion
from diskguard.sampler.base import SamplerUnavailable
from diskguard.sampler.bpf import BpfOptions, bcc_map_sizes, bcc_maps, load_program

PROTOCOL = 1
_PR_SET_PDEATHSIG = 1


def options_to_json(opts: BpfOptions, version: CgroupVersion) -> str:
    """The request the agent passes on the command line."""
    source = opts.source
    return json.dumps(
        {
            "protocol": PROTOCOL,
            "version": version.value,
            "btf_path": str(opts.btf_path),
            "header_search": [str(p) for p in opts.header_search],
            "cache_dir": str(opts.cache_dir),
            "tracefs": [str(p) for p in opts.tracefs],
            # Only a file on disk can be named to another process; None: the packaged one.
            "source": str(source) if isinstance(source, Path) else None,
            "max_entries": opts.max_entries,
            "latency_entries": opts.latency_entries,
            "max_inflight": opts.max_inflight,
            "latency": opts.latency,
            "release": opts.release,
        }
    )


def options_from_json(text: str) -> tuple[BpfOptions, CgroupVersion]:
    r = json.loads(text)
    if r.get("protocol") != PROTOCOL:
        raise ValueError(f"loader protocol {r.get('protocol')!r}, expected {PROTOCOL}")
    extra: dict[str, Any] = {}
    if r["source"] is not None:
        extra["source"] = Path(r["source"])
    opts = BpfOptions(
        btf_path=Path(r["btf_path"]),
        header_search=tuple(Path(p) for p in r["header_search"]),
        cache_dir=Path(r["cache_dir"]),
        tracefs=tuple(Path(p) for p in r["tracefs"]),
        max_entries=int(r["max_entries"]),
        latency_entries=int(r["latency_entries"]),
        max_inflight=int(r["max_inflight"]),
        latency=bool(r["latency"]),
        release=str(r["release"]),
        **extra,
    )
    return opts, CgroupVersion(r["version"])


class _CollectingLog:
    """Warnings during the load, sent to the agent to be logged there."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def _memory_kib() -> dict[str, int]:
    """VmHWM (peak RSS) and, at hand-off, RssAnon and RssFile: how much of the peak is
    the compile's own heap and how much mapped libraries (libbcc links LLVM and clang),
    whose clean pages the kernel can drop under a memory limit."""
    wanted = {"VmHWM": "peak_kib", "RssAnon": "anon_kib", "RssFile": "file_kib"}
    out = dict.fromkeys(wanted.values(), 0)
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0])
    return out


def _die_with_parent() -> None:
    """SIGKILL this process if the agent dies first (a compile outliving it would attach a
    program for no one; it would go again at our exit, but why wait)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def describe(loaded: Any) -> tuple[dict[str, Any], list[int]]:
    """The description and the descriptors to send: maps first, then programs, then the
    attachments; the description names each by its index in the list."""
    bpf = loaded.bpf
    latency = loaded.latency_problem is None
    fds: list[int] = []

    def index(fd: int) -> int:
        fds.append(fd)
        return len(fds) - 1

    sizes = bcc_map_sizes(bpf, latency)
    maps = {
        name: {"fd": index(fd), "key_size": sizes[name][0], "value_size": sizes[name][1]}
        for name, fd in bcc_maps(bpf, latency).items()
    }
    programs = {name.decode(): index(fn.fd) for name, fn in bpf.funcs.items()}
    # What holds the attachment: a raw tracepoint's link fd, a classic tracepoint's perf
    # event fd (BCC attached both at load, from the probe names in the source).
    attachments = [
        {"kind": "raw_tracepoint", "target": tp.decode(), "fd": index(fd)}
        for tp, fd in bpf.raw_tracepoint_fds.items()
    ] + [
        {"kind": "tracepoint", "target": tp.decode(), "fd": index(fd)}
        for tp, fd in bpf.tracepoint_fds.items()
    ]
    if not attachments:
        raise SamplerUnavailable("the program loaded but BCC attached nothing")
    return (
        {
            "ok": True,
            "maps": maps,
            "programs": programs,
            "attachments": attachments,
            "info": loaded.info,
            "degraded": loaded.degraded,
            "latency_problem": loaded.latency_problem,
        },
        fds,
    )


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int]) -> None:
    """One length-prefixed JSON document; the descriptors ride on its first byte."""
    data = json.dumps(message).encode()
    frame = len(data).to_bytes(8, "little") + data
    sent = socket.send_fds(sock, [frame], list(fds))
    if sent < len(frame):
        sock.sendall(frame[sent:])


def run(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m diskguard.sampler.loader")
    p.add_argument("--socket", type=int, required=True, help="inherited Unix socket fd")
    p.add_argument("--request", required=True, help="JSON from the agent")
    args = p.parse_args(argv)
    _die_with_parent()
    sock = socket.socket(fileno=args.socket)
    log = _CollectingLog()
    fds: list[int] = []
    try:
        opts, version = options_from_json(args.request)
        loaded = load_program(version, log, opts)
        message, fds = describe(loaded)
    except SamplerUnavailable as e:
        message = {"ok": False, "error": str(e)}
    except Exception as e:  # the agent gets the reason whatever went wrong
        traceback.print_exc()
        message = {"ok": False, "error": f"loader failed: {type(e).__name__}: {e}"}
    message["warnings"] = log.events
    message.update(_memory_kib())
    send(sock, message, fds)
    return 0 if message["ok"] else 1


def main() -> NoReturn:
    try:
        code = run(sys.argv[1:])
    except BaseException:  # whatever happens, leave without BCC's atexit
        traceback.print_exc()
        code = 2
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    # Not sys.exit: BCC's atexit cleanup would detach what the agent now holds.
    os._exit(code)


if __name__ == "__main__":
    main()
