"""Takes container plans to the kernel: resolve cgroups, read back, write only what differs.

Blocking file I/O; the reconciler runs `Applier.apply` in a worker thread, one call per
batch, so the trio loop never waits on sysfs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from diskguard.logs import get_logger
from diskguard.model import UNLIMITED, CgroupDriver, ContainerRef, Device, IOLimits
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import resolve_container_cgroup
from diskguard.node.limits import CgroupGoneError, LimitBackend, LimitError
from diskguard.node.state import LimitRecord, Rule, rule
from diskguard.policy.plan import ContainerPlan
from diskguard.policy.values import Unlimited, render_limit

log = get_logger(__name__)


@attrs.frozen
class ApplyResult:
    ref: ContainerRef
    cgroup: Path | None  # None: the cgroup does not exist (yet, or any more)
    # What the kernel holds now, per device (after our writes).
    kernel: tuple[tuple[Device, IOLimits], ...] = ()
    # Human-readable changes made, e.g. "7:0 wiops 500->100".
    changes: tuple[str, ...] = ()
    error: str = ""
    # The apply stopped at an error before every device was handled (reading the limits
    # failed, the cgroup has no IO controller, or something unexpected raised); the
    # container's limits are as the kernel held them. Counted per container in
    # diskguard_pod_errors_total{stage="apply"}.
    aborted: bool = False
    # Something unexpected raised: the cgroup path (if any) must be looked up afresh
    # next time rather than reused.
    lookup_again: bool = False

    @property
    def wrote(self) -> bool:
        return bool(self.changes)


@attrs.frozen
class _Pending:
    """A container read and planned, its kernel writes not made yet."""

    plan: ContainerPlan
    path: Path
    # Per device: what the kernel holds, what it should hold.
    devices: tuple[tuple[Device, IOLimits, IOLimits], ...]


class Applier:
    def __init__(
        self,
        hierarchy: CgroupHierarchy,
        backend: LimitBackend,
        devices: Sequence[Device],
        driver: CgroupDriver | None,
        kubelet_root: str,
        record: LimitRecord | None = None,
    ) -> None:
        self._hierarchy = hierarchy
        self._backend = backend
        self._devices = tuple(devices)
        # Data devices that were resolved before and are not any more (the data disk was
        # remounted elsewhere): the rules diskguard recorded on them are cleared.
        self._retired: tuple[Device, ...] = ()
        self._driver = driver
        self._kubelet_root = kubelet_root
        self.record = record

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    def set_devices(self, devices: Sequence[Device]) -> None:
        """Move limits to `devices` from the next apply on (call between batches)."""
        new = tuple(devices)
        keys = {(d.major, d.minor) for d in new}
        retired = {(d.major, d.minor): d for d in (*self._retired, *self._devices)}
        self._retired = tuple(d for k, d in retired.items() if k not in keys)
        self._devices = new

    def forget(self, cgroups: Sequence[Path]) -> None:
        """These containers are gone: their cgroups leave the limit record."""
        if self.record is not None and cgroups:
            self.record.forget(cgroups)

    def apply(
        self, plans: Sequence[ContainerPlan], known: Mapping[str, Path] | None = None
    ) -> list[ApplyResult]:
        """Apply a batch. `known`: container ID -> the cgroup an earlier apply found for it
        (the caller keeps them with its pods); the others are looked up."""
        known = known or {}
        results: list[ApplyResult] = []
        pending: list[_Pending] = []
        for plan in plans:
            try:
                prepared = self._prepare(plan, known.get(plan.ref.container_id))
            except Exception as exc:
                results.append(self._failed(plan, known.get(plan.ref.container_id), exc))
                continue
            if isinstance(prepared, ApplyResult):
                results.append(prepared)
            else:
                pending.append(prepared)
        if self.record is not None:
            # The record reaches the disk before the kernel writes it describes: a crash
            # in between leaves a rule recorded that is not set (harmless to reset-all),
            # never a rule set that reset-all does not know of.
            self.record.add(
                rule(p.path, device)
                for p in pending
                for device, _have, want in p.devices
                if want != UNLIMITED
            )
        cleared: list[Rule] = []
        for item in pending:
            try:
                result = self._write(item)
            except Exception as exc:
                results.append(self._failed(item.plan, item.path, exc))
                continue
            results.append(result)
            if result.cgroup is not None:
                cleared.extend(
                    rule(result.cgroup, device)
                    for device, held in result.kernel
                    if held == UNLIMITED
                )
        if self.record is not None and cleared:
            self.record.discard(cleared)
        return results

    def _failed(self, plan: ContainerPlan, path: Path | None, exc: Exception) -> ApplyResult:
        # One container's failure must never keep the others from their limits, nor end
        # the task: it is reported with this container and retried at the next reconcile
        # of its pod (with a fresh cgroup lookup).
        log.exception(
            "applying limits raised",
            namespace=plan.ref.namespace,
            pod=plan.ref.pod,
            container=plan.ref.container,
        )
        return ApplyResult(
            plan.ref,
            path,
            error=f"unexpected {type(exc).__name__}: {_short(str(exc))}",
            aborted=True,
            lookup_again=True,
        )

    def _prepare(self, plan: ContainerPlan, path: Path | None) -> ApplyResult | _Pending:
        ref = plan.ref
        if path is None:
            path = resolve_container_cgroup(self._hierarchy, ref, self._driver, self._kubelet_root)
            if path is None:
                return ApplyResult(ref, None)
        try:
            held = self._backend.read(path)
        except CgroupGoneError:
            return ApplyResult(ref, None)
        except (LimitError, OSError) as exc:
            return ApplyResult(ref, path, error=str(exc), aborted=True)
        devices = []
        for device in self._devices:
            wanted = plan.desired.get(device)
            if wanted is None:
                # Planned before this device became a data device (a batch planned while the
                # data disks moved): the resync that follows the move plans it.
                continue
            have = held.get((device.major, device.minor), UNLIMITED)
            devices.append((device, have, wanted.against(have)))
        for device in self._retired:
            have = held.get((device.major, device.minor), UNLIMITED)
            # Only what diskguard set there (the record says so) is taken back.
            if have != UNLIMITED and self.record is not None and rule(path, device) in self.record:
                devices.append((device, have, UNLIMITED))
        return _Pending(plan, path, tuple(devices))

    def _write(self, pending: _Pending) -> ApplyResult:
        ref, path = pending.plan.ref, pending.path
        try:
            after: list[tuple[Device, IOLimits]] = []
            changes: list[str] = []
            errors: list[str] = []
            for device, have, want in pending.devices:
                if want != have:
                    try:
                        self._backend.write(path, device, want, have)
                    except CgroupGoneError:
                        raise
                    except LimitError as exc:
                        # One bad device or field (vanished, refused value, read-only
                        # file) must not keep the others from their limits; the backend
                        # wrote what it could, so say what the kernel holds now.
                        errors.append(str(exc))
                        now = self._reread(path, device, have)
                        changes.extend(_describe(device, have, now))
                        after.append((device, now))
                        continue
                    changes.extend(_describe(device, have, want))
                after.append((device, want))
            return ApplyResult(ref, path, tuple(after), tuple(changes), "; ".join(errors))
        except CgroupGoneError:
            return ApplyResult(ref, None)
        except (LimitError, OSError) as exc:
            return ApplyResult(ref, path, error=str(exc), aborted=True)

    def _reread(self, path: Path, device: Device, fallback: IOLimits) -> IOLimits:
        try:
            return self._backend.read(path).get((device.major, device.minor), UNLIMITED)
        except (LimitError, OSError):
            return fallback


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe(device: Device, have: IOLimits, want: IOLimits) -> list[str]:
    def show(v: int) -> str:
        return render_limit(v, Unlimited.KERNEL)

    return [
        f"{device} {field} {show(old)}->{show(new)}"
        for field, old in have.as_dict().items()
        if old != (new := want.get(field))
    ]
