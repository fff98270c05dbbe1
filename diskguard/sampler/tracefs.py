"""Locate (and if needed mount) tracefs, which classic tracepoints are attached through."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class TracefsError(Exception):
    pass


def _has_events(path: Path) -> bool:
    return (path / "events").is_dir()


def _mount_tracefs(path: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", os.fsencode(path), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def ensure_tracefs(candidates: Sequence[Path] = DEFAULT_TRACEFS) -> Path:
    """A tracefs mount point with the events directory, mounting one if none is mounted."""
    for path in candidates:
        if _has_events(path):
            return path
    errors = []
    for path in candidates:
        if not path.is_dir():
            errors.append(f"{path}: no such directory")
            continue
        try:
            _mount_tracefs(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror}")
            continue
        if _has_events(path):
            return path
        errors.append(f"{path}: mounted but has no events directory")
    tried = "; ".join(errors) or "no candidate directories"
    raise TracefsError(f"no tracefs ({tried})")
