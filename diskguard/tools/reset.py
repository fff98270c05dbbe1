"""`diskguard reset-all`: remove the limits diskguard set on this node (for uninstall).

The agent records every (cgroup, device) rule it sets in the node-state directory before
setting it (diskguard/node/state.py); `reset_recorded` clears exactly those, so a rule
someone else set is never touched. A node upgraded from a version without a record has
none yet: `reset_all` (the `--all-matching` fallback) clears every rule on the data
devices of container cgroups under kubepods, the only place diskguard ever writes. The
agent itself never clears anything on shutdown (an upgrade must not unthrottle the node):
stop the DaemonSet first, then run this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs

from diskguard.model import UNLIMITED, Device, IOLimits
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import container_cgroups, kubepods_dirs
from diskguard.node.limits import CgroupGoneError, LimitBackend, LimitError
from diskguard.node.state import Rule, StateDir, StateError, encode_record, write_atomically


@attrs.frozen
class Cleared:
    cgroup: Path
    device: Device
    before: IOLimits
    error: str = ""


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


def _recorded_device(text: str) -> Device:
    major, _, minor = text.partition(":")
    return Device(int(major), int(minor))


def reset_recorded(
    hierarchy: CgroupHierarchy,
    backend: LimitBackend,
    rules: frozenset[Rule],
    state: StateDir,
    *,
    dry_run: bool,
) -> list[Cleared]:
    """Clear the recorded rules that the kernel still holds, then empty the record.

    A recorded cgroup outside the cgroup hierarchy is refused (the record is root's, but
    a path is only ever written inside the hierarchy)."""
    root = hierarchy.path.resolve()
    cleared = []
    kept: set[Rule] = set()
    for cgroup_text, device_text in sorted(rules):
        cgroup = Path(cgroup_text)
        try:
            device = _recorded_device(device_text)
            inside = cgroup.resolve().is_relative_to(root) and cgroup.resolve() != root
        except (ValueError, OSError):
            inside = False
        if not inside:
            raise StateError(f"recorded rule {cgroup_text} {device_text} is not a cgroup device")
        try:
            before = backend.read(cgroup).get((device.major, device.minor), UNLIMITED)
        except CgroupGoneError:
            continue  # the container is gone, and its rules with it
        except LimitError as exc:
            cleared.append(Cleared(cgroup, device, UNLIMITED, str(exc)))
            kept.add((cgroup_text, device_text))
            continue
        if before == UNLIMITED:
            continue
        error = ""
        if not dry_run:
            try:
                backend.write(cgroup, device, UNLIMITED, before)
            except CgroupGoneError:
                continue
            except LimitError as exc:
                error = str(exc)
                kept.add((cgroup_text, device_text))
        cleared.append(Cleared(cgroup, device, before, error))
    if not dry_run:
        # Only what could not be cleared stays recorded (a second run retries it).
        write_atomically(state.limit_record, encode_record(kept))
    return cleared
