"""The sampler interface: cumulative per-container IO counters per data device."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from diskguard.model import Counters, Device

if TYPE_CHECKING:
    from diskguard.sampler.latency import LatencySnapshot


class SamplerUnavailable(Exception):
    """This kind of sampler cannot run here; the message says why (for logs and `doctor`)."""


def _positive(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"cgroup id must be positive, got {value}")


def _absolute(_inst: object, _attr: attrs.Attribute[Path], value: Path) -> None:
    if not value.is_absolute() or ".." in value.parts:
        raise ValueError(f"cgroup path must be absolute without '..', got {value}")


@attrs.frozen(cache_hash=True)  # a key of every per-pass dictionary
class Target:
    """One container cgroup to measure.

    `cgroup_id` is the inode number of the cgroup directory (blkio hierarchy on cgroup v1,
    the unified hierarchy on v2): the id the kernel's block layer charges IO to. The path
    tells a reused id apart from its previous owner.
    """

    cgroup_id: int = attrs.field(validator=_positive)
    path: Path = attrs.field(converter=Path, validator=_absolute)

    @classmethod
    def of(cls, path: Path) -> Target:
        """The target for an existing cgroup directory (raises OSError if it is gone)."""
        return cls(os.stat(path).st_ino, path)


Snapshot = dict[Target, dict[Device, Counters]]


class Logger(Protocol):
    """What samplers need from a logger (a structlog BoundLogger fits)."""

    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...


class Sampler(Protocol):
    """Reads cumulative IO counters of container cgroups on the data devices.

    `read` blocks (file or BPF-map reads); call it from a worker thread. The result holds
    every requested target that still exists, with an entry (possibly all zero) for every
    data device; a target missing from the result no longer exists (its cgroup directory is
    gone, or its id now belongs to another directory). The BPF sampler notices that within
    `LIVENESS_RECHECK` seconds (see `Liveness`), the cgroup sampler on the pass itself; in
    between, a removed container reports its last counters, unchanged (rates of 0).
    """

    @property
    def kind(self) -> str: ...

    @property
    def degraded(self) -> str | None: ...

    @property
    def devices(self) -> Sequence[Device]: ...

    @property
    def latency_problem(self) -> str | None:
        """Why this sampler measures no latency, or None when it does."""
        ...

    def set_devices(self, devices: Sequence[Device]) -> None:
        """Measure these data devices from now on (the data disks changed)."""
        ...

    def read(self, targets: Sequence[Target]) -> Snapshot: ...

    def read_latency(self, targets: Sequence[Target]) -> LatencySnapshot | None:
        """Cumulative device service-time histograms of the targets, or None when this
        sampler cannot measure latency (then it is unavailable, never zero)."""
        ...

    def close(self) -> None: ...


def under_root(root: Path, path: Path) -> bool:
    """Is `path` a cgroup strictly below `root` (lexically; cgroupfs has no symlinks)?

    A string prefix test is exact here because Path normalises separators and Target
    refuses `..`; it is also ~50x cheaper than Path.is_relative_to, which matters at a
    thousand targets per pass.
    """
    prefix = str(root).rstrip("/") + "/"
    text = str(path)
    return len(text) > len(prefix) and text.startswith(prefix)


def alive(target: Target) -> bool:
    """The target's directory still exists and still has the target's id."""
    try:
        return os.stat(target.path).st_ino == target.cgroup_id
    except OSError:
        return False


# A target found alive is trusted for this long before its directory is looked at again.
LIVENESS_RECHECK = 10.0


@attrs.define
class Liveness:
    """`alive`, remembered per target for `recheck` seconds.

    The BPF sampler reads every container from one map, so a stat of each cgroup directory
    on every pass was its main cost: a third of the idle agent's CPU at 1,000 containers
    (py-spy, `bench/core_bench.py`). A target is checked when first seen and then every
    `recheck` seconds; a cgroup removed in between keeps its last, unchanging counters until
    then (its container is gone, and the reconciler forgets it on the pod event anyway).
    """

    recheck: float = LIVENESS_RECHECK
    clock: Callable[[], float] = time.monotonic
    _checked: dict[Target, float] = attrs.field(factory=dict, init=False)

    def __call__(self, target: Target) -> bool:
        now = self.clock()
        last = self._checked.get(target)
        if last is not None and now - last < self.recheck:
            return True
        if alive(target):
            self._checked[target] = now
            return True
        self._checked.pop(target, None)
        return False

    def keep_only(self, targets: Collection[Target]) -> None:
        """Forget the targets no longer asked about (bounded by the current set); the set
        is built only when something is to go, not on every pass."""
        if len(self._checked) > len(targets):
            wanted = set(targets)
            self._checked = {t: at for t, at in self._checked.items() if t in wanted}


_ZERO = Counters()  # frozen: one shared instance, not one per target per pass


def zero_counters(devices: Sequence[Device]) -> dict[Device, Counters]:
    return dict.fromkeys(devices, _ZERO)
