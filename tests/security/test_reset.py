"""`diskguard reset-all` clears only what diskguard set: the rules it recorded in the
node-state directory before writing them. A rule someone else set on a container cgroup,
even on the data disk, stays; a node without a record is refused unless the operator asks
for the old blanket behaviour (--all-matching)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from diskguard.model import UNLIMITED, CgroupVersion, Device, IOLimits
from diskguard.node.applier import Applier
from diskguard.node.limits import LimitBackend
from diskguard.node.state import (
    LIMIT_RECORD_SCHEMA,
    LimitRecord,
    StateDir,
    StateError,
    decode_record,
    encode_record,
    read_record,
    rule,
)
from diskguard.policy.plan import ContainerPlan
from tests.agent.conftest import agent_output, agent_subprocess, scaled

from .conftest import Cluster, P, start_agent, wait_until

pytestmark = pytest.mark.kernel

__all__ = ["start_agent"]


def reset_all(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **cluster.env()}
    return subprocess.run(
        [sys.executable, "-m", "diskguard", "reset-all", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )


def _foreign_container(cluster: Cluster, name: str) -> Path:
    """A container cgroup under kubepods that no pod of the API server owns: someone else's
    (another tool, an operator by hand) - the blanket sweep would take its rule."""
    pod = cluster.add_pod(name, create_cgroups=False)
    cluster.api.delete("pods", "default", name)
    return cluster.kubelet.create(cluster.refs(pod)[0], cluster.driver)


async def test_reset_all_clears_recorded_rules_and_leaves_a_hand_set_one(
    cluster: Cluster, start_agent: Any
) -> None:
    a = cluster.add_pod("a", annotations={f"{P}/iops": "100"})
    running = await start_agent()
    a_cg = cluster.cgroup(cluster.refs(a)[0])
    await cluster.wait_kernel(a_cg, IOLimits(100, 100))
    running.stop()
    foreign = _foreign_container(cluster, "by-hand")
    cluster.backend.write(foreign, cluster.device, IOLimits(wiops=333))

    assert cluster.state_dir is not None
    recorded = read_record(StateDir(cluster.state_dir))
    assert rule(a_cg, cluster.device) in recorded
    assert rule(foreign, cluster.device) not in recorded

    done = reset_all(cluster)
    assert done.returncode == 0, done.stderr
    assert "1 limit(s) cleared" in done.stdout and "reset-all: done" in done.stdout
    assert cluster.kernel(a_cg) == UNLIMITED
    assert cluster.kernel(foreign) == IOLimits(wiops=333)  # not diskguard's: stays
    assert read_record(StateDir(cluster.state_dir)) == frozenset()
    again = reset_all(cluster)  # idempotent: a second run (a retried Job) finds nothing
    assert again.returncode == 0 and "0 limit(s) cleared" in again.stdout
    assert cluster.kernel(foreign) == IOLimits(wiops=333)


async def test_no_record_is_refused_and_all_matching_is_the_explicit_fallback(
    cluster: Cluster,
) -> None:
    """First upgrade: the old agent left rules but no record."""
    a = cluster.add_pod("old", create_cgroups=True)
    cg = cluster.cgroup(cluster.refs(a)[0])
    cluster.backend.write(cg, cluster.device, IOLimits(100, 100))

    refused = reset_all(cluster)
    assert refused.returncode == 3
    assert "--all-matching" in refused.stderr and "Nothing was changed" in refused.stderr
    assert cluster.kernel(cg) == IOLimits(100, 100)

    done = reset_all(cluster, "--all-matching")
    assert done.returncode == 0, done.stderr
    assert "1 limit(s) cleared" in done.stdout
    assert cluster.kernel(cg) == UNLIMITED


async def test_a_record_naming_a_path_outside_the_cgroup_tree_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.state_dir is not None
    state = StateDir(cluster.state_dir)
    state.ensure()
    bait = tmp_path / "not-a-cgroup"
    bait.mkdir()
    (bait / "blkio.throttle.write_iops_device").write_text("")
    state.limit_record.write_bytes(encode_record([(str(bait), str(cluster.device))]))
    out = reset_all(cluster)
    assert out.returncode == 1
    assert "is not a cgroup device" in out.stderr
    assert (bait / "blkio.throttle.write_iops_device").read_text() == ""


@attrs.define
class _OrderCheckingBackend:
    """The real backend; before each kernel write it reads the record *from disk* and
    notes whether the rule being set was already there."""

    inner: LimitBackend
    state: StateDir
    seen: list[tuple[str, bool]] = attrs.Factory(list)
    version: CgroupVersion = attrs.field(init=False)

    @version.default
    def _inner_version(self) -> CgroupVersion:
        return self.inner.version

    def read(self, cgroup_dir: Path) -> Any:
        return self.inner.read(cgroup_dir)

    def write(
        self, cgroup_dir: Path, device: Device, want: IOLimits, have: IOLimits | None = None
    ) -> None:
        if want != UNLIMITED:
            on_disk = read_record(self.state)
            self.seen.append((str(cgroup_dir), rule(cgroup_dir, device) in on_disk))
        self.inner.write(cgroup_dir, device, want, have)


async def test_the_record_reaches_the_disk_before_the_kernel_write(
    cluster: Cluster, start_agent: Any
) -> None:
    pods = [cluster.add_pod(f"p{i}", annotations={f"{P}/iops": str(100 + i)}) for i in range(3)]
    running = await start_agent()
    agent = running.agent
    cgroups = [cluster.cgroup(cluster.refs(p)[0]) for p in pods]
    for i, cg in enumerate(cgroups):
        await cluster.wait_kernel(cg, IOLimits(100 + i, 100 + i))
    running.stop()
    plans: Sequence[ContainerPlan] = [
        c for p in pods for c in agent.reconciler.plans[p["metadata"]["uid"]].containers
    ]
    # A fresh node: no record, every rule cleared; then one apply through the real kernel.
    assert cluster.state_dir is not None
    state = StateDir(cluster.state_dir / "fresh")
    for cg in cgroups:
        cluster.backend.write(cg, cluster.device, UNLIMITED)
    backend = _OrderCheckingBackend(cluster.backend, state)
    applier = Applier(
        cluster.hierarchy,
        backend,
        (cluster.device,),
        None,
        cluster.kubelet.prefix,
        LimitRecord(state),
    )
    results = applier.apply(plans)
    assert all(r.wrote and not r.error for r in results), results
    assert sorted(backend.seen) == sorted((str(cg), True) for cg in cgroups)
    for i, cg in enumerate(cgroups):
        assert cluster.kernel(cg) == IOLimits(100 + i, 100 + i)
    doc = json.loads(state.limit_record.read_text())
    assert doc["schema"] == LIMIT_RECORD_SCHEMA and len(doc["rules"]) == 3


@pytest.mark.pure
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"kind": "diskguard.limit-record", "schema": 99, "rules": []}',
        b'{"kind": "something-else", "schema": 1, "rules": []}',
        b'{"kind": "diskguard.limit-record", "schema": 1, "rules": [{"cgroup": 1}]}',
    ],
)
def test_a_record_in_another_form_is_refused_with_why(data: bytes) -> None:
    with pytest.raises(StateError):
        decode_record(data, "limits.json")


@pytest.mark.pure
def test_an_unreadable_record_is_moved_aside_not_lost(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.limit_record.write_text('{"kind": "diskguard.limit-record", "schema": 99}')
    record = LimitRecord(state)
    assert record.rules == frozenset()
    assert 'schema": 99' in state.limit_record.with_suffix(".unreadable").read_text()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=True)


async def test_a_read_only_state_directory_is_not_ready_but_limits_hold(
    cluster: Cluster, start_agent: Any, tmp_path: Path
) -> None:
    """EROFS on the node-state directory (a read-only bind mount): the limits are still
    enforced, the agent says why it is not ready, and recovers when it is writable."""
    state = tmp_path / "ro-state"
    state.mkdir()
    _mount("--bind", str(state), str(state))
    try:
        _mount("-o", "remount,bind,ro", str(state))
        a = cluster.add_pod("a", annotations={f"{P}/iops": "100"})
        running = await start_agent(STATE_DIR=str(state))
        await cluster.wait_kernel(cluster.cgroup(cluster.refs(a)[0]), IOLimits(100, 100))
        problem = running.agent.readiness_problem()
        assert problem.startswith("limit record: cannot write") and "limits.json" in problem
        _mount("-o", "remount,bind,rw", str(state))
        b = cluster.add_pod("b", annotations={f"{P}/iops": "90"})  # the next batch saves
        await cluster.wait_kernel(cluster.cgroup(cluster.refs(b)[0]), IOLimits(90, 90))
        await wait_until(lambda: not running.agent.readiness_problem(), 5, "ready again")
        assert len(read_record(StateDir(state))) == 2
    finally:
        _umount(state)


async def test_a_state_directory_that_cannot_be_made_stops_start_up_naming_it(
    cluster: Cluster,
) -> None:
    proc = agent_subprocess(cluster.env(STATE_DIR="/proc/diskguard-state"))
    await trio.to_thread.run_sync(proc.wait)
    out = agent_output(proc)
    assert proc.returncode == 1
    assert b"cannot start: cannot create the node-state directory /proc/diskguard-state" in out
