"""Takes container plans to the kernel: resolve cgroups, read back, write only what differs.

Blocking file I/O; the reconciler runs `Applier.apply` in a worker thread, one call per
batch, so the trio loop never waits on sysfs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import attrs

from diskguard.model import UNLIMITED, CgroupDriver, ContainerRef, Device, IOLimits
from diskguard.node.cgroups import CgroupHierarchy, resolve_container_cgroup
from diskguard.node.limits import (
    CgroupGoneError,
    DeviceRejectedError,
    LimitBackend,
    LimitRejectedError,
)
from diskguard.plan import ContainerPlan
from diskguard.policy import limits_to_enforce

log = logging.getLogger(__name__)


@attrs.frozen
class ApplyResult:
    ref: ContainerRef
    cgroup: Path | None  # None: the cgroup does not exist (yet, or any more)
    # What the kernel holds now, per device (after our writes).
    kernel: tuple[tuple[Device, IOLimits], ...] = ()
    # Human-readable changes made, e.g. "7:0 wiops 500->100".
    changes: tuple[str, ...] = ()
    error: str = ""

    @property
    def wrote(self) -> bool:
        return bool(self.changes)


class Applier:
    def __init__(
        self,
        hierarchy: CgroupHierarchy,
        backend: LimitBackend,
        devices: Sequence[Device],
        driver: CgroupDriver | None,
        kubelet_root: str,
    ) -> None:
        self._hierarchy = hierarchy
        self._backend = backend
        self._devices = tuple(devices)
        self._driver = driver
        self._kubelet_root = kubelet_root
        # container ID -> cgroup directory; a restarted container has a new ID.
        self._paths: dict[str, Path] = {}

    def forget(self, container_ids: Sequence[str]) -> None:
        for cid in container_ids:
            self._paths.pop(cid, None)

    def apply(self, plans: Sequence[ContainerPlan]) -> list[ApplyResult]:
        return [self._apply_one(plan) for plan in plans]

    def _apply_one(self, plan: ContainerPlan) -> ApplyResult:
        ref = plan.ref
        path = self._paths.get(ref.container_id)
        if path is None:
            path = resolve_container_cgroup(self._hierarchy, ref, self._driver, self._kubelet_root)
            if path is None:
                return ApplyResult(ref, None)
            self._paths[ref.container_id] = path
        try:
            held = self._backend.read(path)
            after: list[tuple[Device, IOLimits]] = []
            changes: list[str] = []
            errors: list[str] = []
            for device in self._devices:
                have = held.get((device.major, device.minor), UNLIMITED)
                want = (
                    UNLIMITED
                    if plan.resolution is None
                    else limits_to_enforce(plan.resolution, have)
                )
                if want != have:
                    try:
                        self._backend.write(path, device, want, have)
                    except (DeviceRejectedError, LimitRejectedError) as exc:
                        # One bad device (vanished, refused value) must not keep the
                        # others from their limits.
                        errors.append(str(exc))
                        after.append((device, have))
                        continue
                    changes.extend(_describe(device, have, want))
                after.append((device, want))
            return ApplyResult(ref, path, tuple(after), tuple(changes), "; ".join(errors))
        except CgroupGoneError:
            self._paths.pop(ref.container_id, None)
            return ApplyResult(ref, None)
        except (DeviceRejectedError, LimitRejectedError, OSError) as exc:
            return ApplyResult(ref, path, error=str(exc))


def _describe(device: Device, have: IOLimits, want: IOLimits) -> list[str]:
    def show(v: int) -> str:
        return str(v) if v else "max"

    return [
        f"{device} {field} {show(old)}->{show(new)}"
        for field, old in have.as_dict().items()
        if old != (new := getattr(want, field))
    ]
