"""Whole-agent fixtures: a real loop disk, kubelet-layout cgroups, the fake API server,
and the agent running in-process (pytest-trio) or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from diskguard.agent.run import Agent
from diskguard.config import load_config
from diskguard.kube.client import make_api_client
from diskguard.model import (
    UNLIMITED,
    CgroupDriver,
    ContainerRef,
    Counters,
    IOLimits,
    QoSClass,
)
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import parse_container_id
from diskguard.node.limits import LimitBackend, backend_for
from diskguard.node.setup import NodeSetup
from diskguard.sampler.cgroupfs import V1_BYTES, V1_IOS, V2_STAT, parse_io_stat, parse_v1_stats
from diskguard.testing.fakeapi import FakeAPIServer
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.lab import KubeletRoot

NODE = "node-1"
P = "iops-limit"

# The v2 lane runs under qemu software emulation, about ten times slower than the host:
# deadlines there stretch by this factor. The host lane keeps the promised ones (1 s).
SLOW = 8.0 if os.environ.get("DISKGUARD_LANE") == "v2" else 1.0


def scaled(seconds: float) -> float:
    return seconds * SLOW


@attrs.define
class Cluster:
    """One node's world: fake API server, kubelet-layout cgroups, a data disk."""

    api: FakeAPIServer
    kubeconfig: Path
    hierarchy: CgroupHierarchy
    kubelet: KubeletRoot
    mount: Path
    device: Any  # diskguard.model.Device
    backend: LimitBackend
    driver: CgroupDriver = CgroupDriver.CGROUPFS
    state_dir: Path | None = None  # the node-state directory (STATE_DIR)

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "NODE_NAME": NODE,
            "DATA_MOUNT": str(self.mount),
            "KUBELET_CGROUP_ROOT": self.kubelet.prefix,
            "KUBECONFIG": str(self.kubeconfig),
            "CGROUP_ROOT": str(self.hierarchy.path.parent)
            if self.hierarchy.path.name == "blkio"
            else str(self.hierarchy.path),
            "RESYNC_INTERVAL": "60",
            "HTTP_ADDR": "127.0.0.1:0",
            # BCC compiles take seconds; tests that are about BPF ask for it.
            "SAMPLER": "cgroup",
        }
        if self.state_dir is not None:
            base["STATE_DIR"] = str(self.state_dir)
        return {**base, **extra}

    # -- pods ------------------------------------------------------------------------------

    def add_pod(
        self,
        name: str,
        *,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        containers: tuple[tuple[str, str], ...] = (("app", "busybox:1.36"),),
        qos: str = "Burstable",
        runtime: str = "containerd",
        namespace: str = "default",
        driver: CgroupDriver | None = None,
        create_cgroups: bool = True,
    ) -> dict[str, Any]:
        pod = make_pod(
            name,
            namespace,
            NODE,
            containers=containers,
            annotations=annotations,
            labels=labels,
            qos=qos,
            runtime=runtime,
        )
        if create_cgroups:
            for ref in self.refs(pod):
                self.kubelet.create(ref, driver or self.driver)
        return self.api.create("pods", pod)

    def refs(self, pod: dict[str, Any]) -> list[ContainerRef]:
        refs = []
        for status in pod["status"]["containerStatuses"]:
            runtime, cid = parse_container_id(status["containerID"])
            refs.append(
                ContainerRef(
                    namespace=pod["metadata"]["namespace"],
                    pod=pod["metadata"]["name"],
                    pod_uid=pod["metadata"]["uid"],
                    container=status["name"],
                    container_id=cid,
                    runtime=runtime,
                    qos=QoSClass(pod["status"]["qosClass"]),
                )
            )
        return refs

    def cgroup(self, ref: ContainerRef, driver: CgroupDriver | None = None) -> Path:
        from diskguard.node.kubepods import container_cgroup_path

        return self.hierarchy.path / container_cgroup_path(
            ref, driver or self.driver, self.kubelet.prefix
        )

    def set_annotations(self, namespace: str, name: str, changes: dict[str, str | None]) -> None:
        def mutate(obj: dict[str, Any]) -> None:
            ann = obj["metadata"].setdefault("annotations", {}) or {}
            obj["metadata"]["annotations"] = ann
            for key, value in changes.items():
                if value is None:
                    ann.pop(key, None)
                else:
                    ann[key] = value

        self.api.update("pods", namespace, name, mutate)

    # -- kernel ----------------------------------------------------------------------------

    def kernel(self, cgroup: Path) -> IOLimits:
        held = self.backend.read(cgroup)
        return held.get((self.device.major, self.device.minor), UNLIMITED)

    async def wait_kernel(self, cgroup: Path, want: IOLimits, timeout: float = 1.0) -> float:
        """Wait until the kernel holds `want`; return how long it took."""
        start = trio.current_time()
        timeout = scaled(timeout)
        with trio.move_on_after(timeout):
            while True:
                try:
                    if self.kernel(cgroup) == want:
                        return trio.current_time() - start
                except OSError:
                    pass
                await trio.sleep(0.01)
        raise AssertionError(
            f"kernel holds {self.kernel(cgroup)} in {cgroup}, want {want} after {timeout}s"
        )

    def io_counters(self, cgroup: Path) -> Counters:
        """The kernel's own IO counters of a cgroup on the data disk (v2 io.stat; v1 counts
        only once a throttle rule exists for the device, which the agent's limits are)."""
        if (cgroup / V2_STAT).exists():
            stats = parse_io_stat((cgroup / V2_STAT).read_text())
        else:
            stats = parse_v1_stats((cgroup / V1_IOS).read_text(), (cgroup / V1_BYTES).read_text())
        return stats.get((self.device.major, self.device.minor), Counters())

    async def wait_io(self, cgroup: Path, *, writes: int = 0, reads: int = 0) -> None:
        """Wait (lane-scaled) until the kernel has counted this many IOs in the cgroup: a
        load started in it is really running, not merely spawned."""
        deadline = scaled(30.0)
        with trio.move_on_after(deadline):
            while True:
                now = self.io_counters(cgroup)
                if now.wios >= writes and now.rios >= reads:
                    return
                await trio.sleep(0.05)
        raise AssertionError(
            f"{cgroup}: kernel counted {self.io_counters(cgroup)} after {deadline}s, "
            f"want {writes} writes and {reads} reads"
        )

    # -- events ----------------------------------------------------------------------------

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        """Events posted, in order; a repeated post of the same Event (same name: a retry
        whose original arrived, which the API server refuses with 409) counts once."""
        bodies = {
            r.body["metadata"]["name"]: r.body
            for r in self.api.requests()
            if r.method == "POST" and r.path.endswith("/events")
        }
        return [b for b in bodies.values() if reason is None or b.get("reason") == reason]

    async def wait_events(self, reason: str, count: int, timeout: float = 5.0) -> list[Any]:
        """Events are posted asynchronously: wait until `count` with `reason` arrived, and
        a little longer to catch any extra one."""
        with trio.move_on_after(scaled(timeout)):
            while len(self.events(reason)) < count:
                await trio.sleep(0.02)
        await trio.sleep(0.3)
        return self.events(reason)


@pytest.fixture
def cluster(
    cgroup_hierarchy: CgroupHierarchy, kubelet_root: Any, loop_disk: Any, tmp_path: Path
) -> Iterator[Cluster]:
    with FakeAPIServer(bookmark_interval=0.5) as api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        yield Cluster(
            api=api,
            kubeconfig=kubeconfig,
            hierarchy=cgroup_hierarchy,
            kubelet=KubeletRoot(cgroup_hierarchy, kubelet_root.name),
            mount=loop_disk.mount,
            device=loop_disk.device,
            backend=backend_for(cgroup_hierarchy.version),
            state_dir=tmp_path / "state",
        )


AgentStarter = Callable[..., "trio.lowlevel.Task"]


@attrs.define
class RunningAgent:
    agent: Agent
    cancel_scope: trio.CancelScope

    def stop(self) -> None:
        self.cancel_scope.cancel()


@pytest.fixture
async def start_agent(cluster: Cluster) -> AsyncIterator[Callable[..., Any]]:
    """`await start_agent(**env_overrides) -> RunningAgent` running in this trio loop."""
    async with trio.open_nursery() as nursery:

        async def start(**env: str) -> RunningAgent:
            full = cluster.env(**env)
            config = load_config(full)
            node = NodeSetup(cluster.hierarchy, (cluster.device,))
            agent = Agent(config, node, make_api_client(full))
            scope = trio.CancelScope()

            async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await agent.run(task_status=task_status)

            await nursery.start(run)
            with trio.fail_after(scaled(10) + 10):  # + the namespace wait, at worst
                await agent.reconciler.synced.wait()
            return RunningAgent(agent, scope)

        yield start
        nursery.cancel_scope.cancel()


def agent_subprocess(env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`python -m diskguard run` with exactly this environment (plus PATH).

    Its output goes to a temporary file (read it with `agent_output(proc)`): a pipe nobody
    reads would fill up and block the agent mid-log."""
    # faulthandler: a crash of the agent leaves every thread's stack in its output.
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOG_LEVEL": "debug",
        "PYTHONFAULTHANDLER": "1",
        **env,
    }
    out = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "diskguard", "run"],
        env=full,
        stdout=out,
        stderr=subprocess.STDOUT,
        **kwargs,
    )
    proc.output_file = out  # type: ignore[attr-defined]
    return proc


def agent_output(proc: subprocess.Popen[bytes]) -> bytes:
    out = proc.output_file  # type: ignore[attr-defined]
    out.seek(0)
    return bytes(out.read())
