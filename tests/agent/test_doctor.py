"""`diskguard doctor` on this node against the fake API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from diskguard.node.capacity import DiskCapacity, disk_identity, record_capacity
from diskguard.node.state import StateDir

from .conftest import Cluster, scaled

pytestmark = pytest.mark.kernel


def doctor(cluster: Cluster, **env: str) -> tuple[int, dict[str, Any]]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **cluster.env(**env)}
    done = subprocess.run(
        [sys.executable, "-m", "diskguard", "doctor", "--json"],
        env=full,
        capture_output=True,
        text=True,
        timeout=scaled(90),  # the eBPF loader check compiles the program
        check=False,
    )
    findings = {f["check"]: f for f in json.loads(done.stdout)}
    return done.returncode, findings


def test_doctor_passes_on_a_healthy_node(cluster: Cluster, tmp_path: Path) -> None:
    cluster.add_pod("web")
    # What `diskguard profile` recorded for the data disk is shown by the disk's name.
    state = StateDir(tmp_path / "state")
    identity = disk_identity(cluster.device)
    assert identity is not None
    record_capacity(state, identity, DiskCapacity(9000, 8000, 300 * 2**20, 200 * 2**20))
    code, found = doctor(cluster, SAMPLER="auto", STATE_DIR=str(state.path))
    assert code == 0, json.dumps(found, indent=1)
    assert found["cgroup hierarchy"]["status"] == "ok"
    assert cluster.hierarchy.version.value in found["cgroup hierarchy"]["detail"]
    assert found["kubelet cgroup layout"]["status"] == "ok"
    assert "(1 containers)" in found["kubelet cgroup layout"]["detail"]
    assert str(cluster.device) in found["data devices"]["detail"]
    capacity = found["disk capacity"]
    assert capacity["status"] == "ok"
    assert f"{cluster.device.name}: read 9,000 IOPS 300 MiB/s" in capacity["detail"]
    assert found["API server"]["status"] == "ok"
    assert found["RBAC"]["status"] == "ok"
    # Says whether per-container latency can be measured (BTF and the completion probe).
    latency = found["latency (completion probe)"]
    assert latency["status"] == ("ok" if Path("/sys/kernel/btf/vmlinux").exists() else "warn")
    # The loader check really compiled and attached (or says why not: then the agent
    # measures with cgroup counters, and doctor must say so).
    loader = found["eBPF loader"]
    if loader["status"] == "ok":
        assert "compiled and attached in a loader process" in loader["detail"], loader
    else:
        assert loader["status"] == "warn" and "cgroup IO counters" in loader["detail"], loader


def test_doctor_names_what_is_wrong(cluster: Cluster) -> None:
    cluster.api.deny("watch", "namespaces")
    code, found = doctor(cluster, DATA_MOUNT="/dev/shm")
    assert code == 1
    assert found["RBAC"]["status"] == "fail"
    assert "watch namespaces" in found["RBAC"]["detail"]
    assert found["data devices"]["status"] == "fail"
    assert "/dev/shm" in found["data devices"]["detail"]


def test_doctor_reports_an_unreachable_api_server_and_bad_config(cluster: Cluster) -> None:
    cluster.api.go_down()
    try:
        code, found = doctor(cluster)
        assert code == 1 and found["API server"]["status"] == "fail"
    finally:
        cluster.api.come_back()
    code, found = doctor(cluster, CGROUP_DRIVER="nope")
    assert code == 1
    assert found["configuration"]["status"] == "fail"
    assert "CGROUP_DRIVER" in found["configuration"]["detail"]
