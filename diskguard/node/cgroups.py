"""Where IO limits live: which cgroup hierarchy holds them (v1 blkio or the v2 tree).

How the kubelet and the runtimes name a pod's and a container's cgroup in it is
diskguard/node/kubepods.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from diskguard.model import CgroupVersion


class CgroupError(RuntimeError):
    """The requested cgroup hierarchy is not available on this node."""


@attrs.frozen
class CgroupHierarchy:
    """The hierarchy that holds IO limits: blkio on v1, the unified tree on v2."""

    version: CgroupVersion
    path: Path


_V1_PROBE = "blkio.throttle.read_iops_device"


def _v2_io_tree(root: Path) -> Path | None:
    # Pure v2 mounts the tree at root; hybrid systemd setups mount it at root/unified.
    for candidate in (root, root / "unified"):
        try:
            controllers = (candidate / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "io" in controllers:
            return candidate
    return None


def _v1_blkio(root: Path) -> Path | None:
    blkio = root / "blkio"
    return blkio if (blkio / _V1_PROBE).exists() else None


def detect_cgroup(root: str, requested: CgroupVersion | None) -> CgroupHierarchy:
    """Find the IO-limit hierarchy under `root` (usually /sys/fs/cgroup).

    `requested` None is auto: it prefers v2, but only when a v2 tree really has the io
    controller: hybrid hosts mount an empty cgroup2 next to v1 blkio.
    """
    base = Path(root)
    if requested is not CgroupVersion.V1:
        v2 = _v2_io_tree(base)
        if v2 is not None:
            return CgroupHierarchy(CgroupVersion.V2, v2)
        if requested is CgroupVersion.V2:
            raise CgroupError(
                f"cgroup v2 requested, but neither {base} nor {base / 'unified'} is a cgroup2 "
                "tree whose cgroup.controllers lists the io controller"
            )
    v1 = _v1_blkio(base)
    if v1 is not None:
        return CgroupHierarchy(CgroupVersion.V1, v1)
    if requested is CgroupVersion.V1:
        raise CgroupError(
            f"cgroup v1 requested, but {base / 'blkio' / _V1_PROBE} does not exist "
            "(blkio controller not mounted, or the kernel lacks blk-throttle)"
        )
    raise CgroupError(
        f"no IO-limit cgroup hierarchy under {base}: no cgroup2 tree with the io controller "
        f"and no v1 blkio controller with {_V1_PROBE}"
    )


def cgroup_id(path: str | os.PathLike[str]) -> int:
    """The cgroup id BPF reports for this cgroup: its kernfs directory's inode number."""
    return os.stat(path).st_ino
