"""The kubelet's cgroup layout: where each pod and container lives, for both cgroup drivers
and every runtime, in one place.

Name to path (`container_cgroup_path`, `resolve_container_cgroup`) serves the agent;
walking every container cgroup under kubepods (`kubepods_dirs`, `container_cgroups`)
serves `top`, `doctor` and `reset-all`; both read the same naming tables below.

The naming functions are pure: they turn a validated ContainerRef into the relative path
kubelet and the container runtime give that container. IDs come from the API server, so
they are validated again right where they become path components; nothing from outside
reaches the filesystem unchecked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from diskguard.model import CgroupDriver, ContainerRef, QoSClass, Runtime
from diskguard.node.cgroups import CgroupHierarchy

# Kubernetes UIDs are UUIDs; static pods use a 32-hex config hash. Either way hex and '-'.
_POD_UID = re.compile(r"[0-9a-fA-F][0-9a-fA-F-]{0,63}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,128}")
# Components of kubelet's --cgroup-root: no traversal, no separators, nothing exotic.
_ROOT_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def validate_pod_uid(uid: str) -> str:
    if not _POD_UID.fullmatch(uid):
        raise ValueError(f"invalid pod UID {uid!r}: expected hex digits and '-' (a UUID)")
    return uid


def validate_container_id(container_id: str) -> str:
    if not _CONTAINER_ID.fullmatch(container_id):
        raise ValueError(
            f"invalid container ID {container_id!r}: expected 12-128 lowercase hex digits"
        )
    return container_id


_RUNTIME_SCHEMES = {
    "containerd": Runtime.CONTAINERD,
    "docker": Runtime.DOCKER,
    "cri-o": Runtime.CRIO,
}


def parse_container_id(raw: str) -> tuple[Runtime, str]:
    """Split a pod status containerID like "containerd://<hex>" into runtime and ID."""
    scheme, sep, rest = raw.partition("://")
    runtime = _RUNTIME_SCHEMES.get(scheme)
    if not sep or runtime is None:
        raise ValueError(
            f"unsupported container ID {raw!r}: expected containerd://, docker:// or cri-o://"
        )
    return runtime, validate_container_id(rest)


def _root_components(kubelet_root: str) -> tuple[str, ...]:
    # kubelet parses --cgroup-root in cgroupfs form whatever the driver.
    parts = tuple(p for p in kubelet_root.split("/") if p)
    for part in parts:
        if not _ROOT_COMPONENT.fullmatch(part) or part in (".", ".."):
            raise ValueError(f"invalid kubelet cgroup root {kubelet_root!r}: bad part {part!r}")
    return parts


_QOS_COMPONENT = {
    QoSClass.GUARANTEED: (),
    QoSClass.BURSTABLE: ("burstable",),
    QoSClass.BESTEFFORT: ("besteffort",),
}

# A container's leaf, by driver: `<scope prefix>-<id>.scope` under systemd, `<prefix><id>`
# under cgroupfs (only CRI-O prefixes it there).
_SYSTEMD_SCOPE_PREFIX = {
    Runtime.CONTAINERD: "cri-containerd",
    Runtime.DOCKER: "docker",
    Runtime.CRIO: "crio",
}
_CGROUPFS_PREFIX = {
    Runtime.CONTAINERD: "",
    Runtime.DOCKER: "",
    Runtime.CRIO: "crio-",
}


def container_leaf(runtime: Runtime, driver: CgroupDriver, container_id: str) -> str:
    """The last component of a container's cgroup path, as its runtime names it."""
    cid = validate_container_id(container_id)
    if driver is CgroupDriver.SYSTEMD:
        return f"{_SYSTEMD_SCOPE_PREFIX[runtime]}-{cid}.scope"
    return f"{_CGROUPFS_PREFIX[runtime]}{cid}"


def pod_cgroup_name(pod_uid: str, qos: QoSClass, kubelet_root: str = "/") -> tuple[str, ...]:
    """kubelet's driver-neutral CgroupName (list of components) of a pod."""
    uid = validate_pod_uid(pod_uid)
    return (*_root_components(kubelet_root), "kubepods", *_QOS_COMPONENT[qos], f"pod{uid}")


def _systemd_expand(components: tuple[str, ...]) -> PurePosixPath:
    # kubelet's CgroupName.ToSystemd + libcontainer's ExpandSlice: "-" inside a component
    # becomes "_", then each prefix of the joined name becomes one nested slice.
    escaped = [c.replace("-", "_") for c in components]
    return PurePosixPath(*(f"{'-'.join(escaped[: i + 1])}.slice" for i in range(len(escaped))))


def pod_cgroup_path(
    pod_uid: str, qos: QoSClass, driver: CgroupDriver, kubelet_root: str = "/"
) -> PurePosixPath:
    """A pod's cgroup, relative to the hierarchy root."""
    name = pod_cgroup_name(pod_uid, qos, kubelet_root)
    if driver is CgroupDriver.SYSTEMD:
        return _systemd_expand(name)
    return PurePosixPath(*name)


def container_cgroup_path(
    ref: ContainerRef, driver: CgroupDriver, kubelet_root: str = "/"
) -> PurePosixPath:
    """A container's cgroup, relative to the hierarchy root, as its runtime names it."""
    leaf = container_leaf(ref.runtime, driver, ref.container_id)
    return pod_cgroup_path(ref.cgroup_pod_uid, ref.qos, driver, kubelet_root) / leaf


_AUTO_ORDER = (CgroupDriver.SYSTEMD, CgroupDriver.CGROUPFS)


def container_cgroup_candidates(
    ref: ContainerRef, driver: CgroupDriver | None, kubelet_root: str = "/"
) -> tuple[PurePosixPath, ...]:
    """Relative paths to try in order; driver None means either driver (systemd first)."""
    drivers = _AUTO_ORDER if driver is None else (driver,)
    return tuple(container_cgroup_path(ref, d, kubelet_root) for d in drivers)


def resolve_container_cgroup(
    hierarchy: CgroupHierarchy,
    ref: ContainerRef,
    driver: CgroupDriver | None,
    kubelet_root: str = "/",
) -> Path | None:
    """The container's existing cgroup directory, or None if the runtime has not made it yet."""
    for rel in container_cgroup_candidates(ref, driver, kubelet_root):
        candidate = hierarchy.path / rel
        if candidate.is_dir():
            return candidate
    return None


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


# The same names as above, recognised rather than built: a pod's directory (`pod<uid>`, or
# the systemd slice with `-` escaped as `_`) and a container's leaf of any runtime.
_POD_UID_SYSTEMD = r"[0-9a-fA-F][0-9a-fA-F_]{0,63}"  # _POD_UID after _systemd_expand
_POD_DIR = re.compile(rf"pod{_POD_UID.pattern}|.*-pod{_POD_UID_SYSTEMD}\.slice")
_CONTAINER_LEAF = re.compile(
    "|".join(
        [
            *(
                rf"{re.escape(prefix)}-{_CONTAINER_ID.pattern}\.scope"
                for prefix in sorted(set(_SYSTEMD_SCOPE_PREFIX.values()))
            ),
            *(
                rf"{re.escape(prefix)}{_CONTAINER_ID.pattern}"
                for prefix in sorted(set(_CGROUPFS_PREFIX.values()))
            ),
        ]
    )
)


def container_cgroups(top: Path) -> Iterator[Path]:
    """Every container cgroup below `top` (a kubepods directory), whatever its driver/runtime."""
    for dirpath, dirnames, _ in os.walk(top):
        here = Path(dirpath)
        if _POD_DIR.fullmatch(here.name):
            for name in dirnames:
                if _CONTAINER_LEAF.fullmatch(name):
                    yield here / name
