"""The walk over every container cgroup reads the same naming tables as name→path: what the
agent would limit is exactly what `top`, `doctor` and `reset-all` find."""

from __future__ import annotations

import itertools
from pathlib import Path

from diskguard.model import CgroupDriver, CgroupVersion, ContainerRef, QoSClass, Runtime
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import container_cgroup_path, container_cgroups, kubepods_dirs

UIDS = ("0b3c5e2a-1d4f-4a6b-9c8d-7e6f5a4b3c2d", "a" * 32)  # a UUID; a static pod's hash
CID = "4f1e9c0d2b7a8e6f5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e"


def test_the_walk_finds_every_container_the_layout_names(tmp_path: Path) -> None:
    hierarchy = CgroupHierarchy(CgroupVersion.V2, tmp_path)
    made: dict[CgroupDriver, set[Path]] = {d: set() for d in CgroupDriver}
    for driver, runtime, qos, uid in itertools.product(CgroupDriver, Runtime, QoSClass, UIDS):
        cid = f"{len(made[driver]):04x}{CID[4:]}"
        ref = ContainerRef("ns", "pod", uid, "app", cid, runtime, qos)
        path = tmp_path / container_cgroup_path(ref, driver, "/")
        path.mkdir(parents=True)
        made[driver].add(path)
        # Siblings that are no container: a pod's own files/dirs, the pause container's
        # siblings diskguard must never touch under another name.
        (path.parent / "not-a-container").mkdir(exist_ok=True)
        (path.parent / f"other-{cid}.scope").mkdir(exist_ok=True)
    tops = kubepods_dirs(hierarchy, "/")
    assert sorted(tops) == sorted([tmp_path / "kubepods", tmp_path / "kubepods.slice"])
    for top in tops:
        driver = CgroupDriver.SYSTEMD if top.name.endswith(".slice") else CgroupDriver.CGROUPFS
        assert set(container_cgroups(top)) == made[driver]


def test_the_walk_ignores_containers_outside_a_pod(tmp_path: Path) -> None:
    (tmp_path / "kubepods" / "burstable" / CID).mkdir(parents=True)  # no pod directory
    (tmp_path / "kubepods" / "burstable" / "podnot-hex" / CID).mkdir(parents=True)
    assert list(container_cgroups(tmp_path / "kubepods")) == []
