"""Adapters to the node's kernel: block devices, cgroup hierarchies, IO-limit files."""

from diskguard.node.cgroups import (
    CgroupError,
    CgroupHierarchy,
    cgroup_id,
    container_cgroup_candidates,
    container_cgroup_path,
    detect_cgroup,
    parse_container_id,
    pod_cgroup_path,
    resolve_container_cgroup,
    validate_container_id,
    validate_pod_uid,
)
from diskguard.node.devices import DeviceError, resolve_data_devices, whole_disk
from diskguard.node.limits import (
    CgroupGoneError,
    ControllerMissingError,
    DeviceRejectedError,
    LimitBackend,
    LimitError,
    LimitRejectedError,
    backend_for,
)

__all__ = [
    "CgroupError",
    "CgroupGoneError",
    "CgroupHierarchy",
    "ControllerMissingError",
    "DeviceError",
    "DeviceRejectedError",
    "LimitBackend",
    "LimitError",
    "LimitRejectedError",
    "backend_for",
    "cgroup_id",
    "container_cgroup_candidates",
    "container_cgroup_path",
    "detect_cgroup",
    "parse_container_id",
    "pod_cgroup_path",
    "resolve_container_cgroup",
    "resolve_data_devices",
    "validate_container_id",
    "validate_pod_uid",
    "whole_disk",
]
