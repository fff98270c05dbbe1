"""The broken node: a container's limit file that cannot be written (read-only, EROFS) and
a container cgroup without the io controller. Each fails that one container, visibly in
/status and /metrics, while every other container gets its limits and the agent lives."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from diskguard.model import CgroupVersion, ErrorStage, IOLimits

from .conftest import Cluster, P, http_get, wait_until

V1_WRITE_IOPS = "blkio.throttle.write_iops_device"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Bind-mount `path` read-only over itself (EACCES cannot happen as root; EROFS can)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


async def _metric(base: str, name: str, labels: dict[str, str]) -> float:
    text = (await http_get(base, "/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


@pytest.mark.kernel
@pytest.mark.host_only
async def test_read_only_limit_file_fails_only_that_container(
    cluster: Cluster, start_agent: Any
) -> None:
    stuck = cluster.add_pod(
        "stuck", annotations={f"{P}/read-iops": "300", f"{P}/write-iops": "200"}
    )
    fine = cluster.add_pod("fine", annotations={f"{P}/read-iops": "301", f"{P}/write-iops": "201"})
    stuck_cg = cluster.cgroup(cluster.refs(stuck)[0])
    knob = V1_WRITE_IOPS if cluster.hierarchy.version is CgroupVersion.V1 else "io.max"
    with read_only(stuck_cg / knob):
        running = await start_agent()
        await cluster.wait_kernel(cluster.cgroup(cluster.refs(fine)[0]), IOLimits(301, 201))
        if cluster.hierarchy.version is CgroupVersion.V1:
            # The other fields of the stuck container are still written.
            await cluster.wait_kernel(stuck_cg, IOLimits(riops=300))
        else:
            assert cluster.kernel(stuck_cg) == IOLimits()
        base = running.agent.http_binds[0]
        status = (await http_get(base, "/status?pod=stuck")).json()
        [container] = status["containers"]
        assert "Read-only file system" in container["error"], container
        assert container["in_sync"] is False
        assert await _metric(base, "diskguard_containers", {"state": "error"}) == 1
        # Alive: the next pod is limited while the file is still read-only.
        late = cluster.add_pod("late", annotations={f"{P}/iops": "55"})
        await cluster.wait_kernel(cluster.cgroup(cluster.refs(late)[0]), IOLimits(55, 55))
    # Writable again: the resync or the next event repairs it.
    cluster.set_annotations("default", "stuck", {f"{P}/write-iops": "199"})
    await cluster.wait_kernel(stuck_cg, IOLimits(300, 199))
    status = (await http_get(base, "/status?pod=stuck")).json()
    assert status["containers"][0]["error"] is None


@pytest.mark.kernel
@pytest.mark.v2
async def test_cgroup_without_the_io_controller_fails_only_that_container(
    cluster: Cluster, start_agent: Any
) -> None:
    bare = cluster.add_pod("bare", annotations={f"{P}/iops": "300"})
    fine = cluster.add_pod("fine", annotations={f"{P}/iops": "301"})
    bare_cg = cluster.cgroup(cluster.refs(bare)[0])
    # As when `io` is missing from a parent's cgroup.subtree_control.
    (bare_cg.parent / "cgroup.subtree_control").write_text("-io")
    assert not (bare_cg / "io.max").exists()
    running = await start_agent()
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(fine)[0]), IOLimits(301, 301))
    base = running.agent.http_binds[0]
    reconciler = running.agent.reconciler
    await wait_until(
        lambda: reconciler.error_counts[ErrorStage.APPLY] >= 1, 30.0, "an apply error counted"
    )
    status = (await http_get(base, "/status")).json()
    [container] = [c for c in status["containers"] if c["pod"] == "bare"]
    assert "subtree_control" in container["error"], container
    assert [e["pod"] for e in status["pod_errors"]["latest"]] == ["default/bare"]
    assert status["pod_errors"]["counts"]["apply"] >= 1
    assert await _metric(base, "diskguard_pod_errors_total", {"stage": "apply"}) >= 1
    # Alive, and the container is limited once the controller is back.
    (bare_cg.parent / "cgroup.subtree_control").write_text("+io")
    cluster.set_annotations("default", "bare", {f"{P}/iops": "299"})
    await cluster.wait_kernel(bare_cg, IOLimits(299, 299), timeout=5.0)
    status = (await http_get(base, "/status")).json()
    assert status["pod_errors"]["latest"] == []
