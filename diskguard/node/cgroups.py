"""Where IO limits live: cgroup version detection and the kubelet's cgroup layout.

The layout functions are pure: they turn a validated ContainerRef into the relative
path kubelet and the container runtime give that container, for either cgroup driver.
IDs come from the API server, so they are validated again right where they become path
components; nothing from outside reaches the filesystem unchecked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import attrs

from diskguard.model import CgroupDriver, CgroupVersion, ContainerRef, QoSClass, Runtime


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

_SYSTEMD_SCOPE_PREFIX = {
    Runtime.CONTAINERD: "cri-containerd",
    Runtime.DOCKER: "docker",
    Runtime.CRIO: "crio",
}


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
    cid = validate_container_id(ref.container_id)
    pod = pod_cgroup_path(ref.cgroup_pod_uid, ref.qos, driver, kubelet_root)
    if driver is CgroupDriver.SYSTEMD:
        leaf = f"{_SYSTEMD_SCOPE_PREFIX[ref.runtime]}-{cid}.scope"
    elif ref.runtime is Runtime.CRIO:
        leaf = f"crio-{cid}"
    else:
        leaf = cid
    return pod / leaf


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


def cgroup_id(path: str | os.PathLike[str]) -> int:
    """The cgroup id BPF reports for this cgroup: its kernfs directory's inode number."""
    return os.stat(path).st_ino
