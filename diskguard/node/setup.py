"""What start-up finds on the node: the cgroup hierarchy and the data disks.

Shared by the agent and the one-shot tools (`reset-all`, `top`), which must not pay for
importing the agent (the kubernetes client, trio tasks) to find the same things."""

from __future__ import annotations

import attrs

from diskguard.config import Config
from diskguard.model import Device
from diskguard.node.cgroups import CgroupHierarchy, detect_cgroup
from diskguard.node.datadisks import resolve
from diskguard.node.devices import DeviceError
from diskguard.node.state import LimitRecord


@attrs.frozen
class NodeSetup:
    """What start-up found on the node; a failure here stops start-up with a clear message."""

    hierarchy: CgroupHierarchy
    devices: tuple[Device, ...]
    # Why some data path has no disk yet (not a mount point: the boot race); "" if none.
    disk_problem: str = ""
    record: LimitRecord | None = None  # the limit record in the node-state directory
    # Re-resolve DATA_MOUNT while running; off only where `devices` were handed in rather
    # than resolved from DATA_MOUNT (tests that inject devices, the demo).
    follow_data_mounts: bool = True


def inspect_node(config: Config) -> NodeSetup:
    hierarchy = detect_cgroup(config.cgroup_root, config.cgroup_version)
    found = resolve(config.data_mounts, allow_unmounted=config.data_mount_allow_unmounted)
    if found.problem and "not a mount point" not in found.problem:
        raise DeviceError(found.problem)  # a missing path or a disk-less mount: say so now
    return NodeSetup(hierarchy, found.devices, found.problem)
