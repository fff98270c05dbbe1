"""`diskguard reset-all`: remove every limit diskguard manages on this node (for uninstall).

diskguard manages the limits on the data devices of container cgroups under kubepods; it
never touches other devices or cgroups. The agent itself never does this on shutdown (an
upgrade must not unthrottle the node): stop the DaemonSet first, then run this.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from diskguard.model import UNLIMITED, CgroupDriver, Device, IOLimits, QoSClass
from diskguard.node.cgroups import CgroupHierarchy, pod_cgroup_path
from diskguard.node.limits import LimitBackend, LimitError

_CONTAINER_LEAF = re.compile(
    r"(?:(?:cri-containerd|docker|crio)-[0-9a-f]{12,128}\.scope|crio-[0-9a-f]{12,128}"
    r"|[0-9a-f]{12,128})"
)
_POD_DIR = re.compile(r"pod[0-9a-fA-F-]{1,64}|.*-pod[0-9a-fA-F_]{1,64}\.slice")


@attrs.frozen
class Cleared:
    cgroup: Path
    device: Device
    before: IOLimits
    error: str = ""


def kubepods_dirs(hierarchy: CgroupHierarchy, kubelet_root: str) -> list[Path]:
    """The kubepods cgroup of each driver's layout that exists on this node."""
    found = []
    for driver in CgroupDriver:
        # A Guaranteed pod sits directly under kubepods: its parent is kubepods itself.
        kubepods = pod_cgroup_path("0" * 32, QoSClass.GUARANTEED, driver, kubelet_root).parent
        path = hierarchy.path / kubepods
        if path.is_dir():
            found.append(path)
    return found


def container_cgroups(top: Path) -> Iterator[Path]:
    for dirpath, dirnames, _ in os.walk(top):
        here = Path(dirpath)
        if _POD_DIR.fullmatch(here.name):
            for name in dirnames:
                if _CONTAINER_LEAF.fullmatch(name):
                    yield here / name


def reset_all(
    hierarchy: CgroupHierarchy,
    backend: LimitBackend,
    devices: Sequence[Device],
    kubelet_root: str,
    *,
    dry_run: bool,
) -> list[Cleared]:
    cleared = []
    for top in kubepods_dirs(hierarchy, kubelet_root):
        for cgroup in container_cgroups(top):
            try:
                held = backend.read(cgroup)
            except LimitError:
                continue  # the container went away meanwhile
            for device in devices:
                before = held.get((device.major, device.minor), UNLIMITED)
                if before == UNLIMITED:
                    continue
                error = ""
                if not dry_run:
                    try:
                        backend.write(cgroup, device, UNLIMITED, before)
                    except LimitError as exc:
                        error = str(exc)
                cleared.append(Cleared(cgroup, device, before, error))
    return cleared
