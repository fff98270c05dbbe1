"""The agent when the node changes under it: container cgroups that vanish, a data disk
that disappears, no BPF, a kubelet whose TLS cannot be verified. Final assertions are on
what the real cgroup files hold."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from diskguard.model import Device, IOLimits
from diskguard.testing.fakekubelet import FakeKubelet, server_tls_context
from diskguard.testing.lab import LabError, device_of, run
from tests.agent.conftest import scaled

from .conftest import (
    DEFAULT,
    Cluster,
    P,
    agent_output,
    agent_subprocess,
    http_get,
    stop_process,
    subprocess_http,
    wait_all,
    wait_until,
)

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]


def _restart_container(cluster: Cluster, pod: str, index: int, new_id: str) -> Path:
    """What kubelet + runtime do on a container restart: a new cgroup under a new ID, then
    the pod status naming it."""
    obj = cluster.api.get("pods", "default", pod)
    ref = attrs.evolve(cluster.refs(obj)[index], container_id=new_id)
    cgroup = cluster.kubelet.create(ref, cluster.driver)

    def restart(o: dict[str, Any]) -> None:
        status = o["status"]["containerStatuses"][index]
        status["containerID"] = f"containerd://{new_id}"
        status["restartCount"] = status.get("restartCount", 0) + 1

    cluster.api.update("pods", "default", pod, restart)
    return cgroup


# ---------------------------------------------------------------- vanishing cgroups


async def test_cgroup_removed_after_resolve_then_container_restarts(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("flaky", annotations={f"{P}/write-iops": "100"})
    other = cluster.add_pod("bystander", annotations={f"{P}/iops": "300"})
    running = await start_agent()
    old = cluster.cgroup(cluster.refs(pod)[0])
    bystander = cluster.cgroup(cluster.refs(other)[0])
    await cluster.wait_kernel(old, IOLimits(500, 100))
    await cluster.wait_kernel(bystander, IOLimits(300, 300))

    # The container dies: its cgroup goes (the agent has its path cached from the resolve);
    # the pod status still names it, and the next reconcile finds the directory gone.
    old.rmdir()
    cluster.set_annotations("default", "flaky", {f"{P}/write-iops": "80"})
    missing = running.agent.reconciler.outcomes["cgroup_missing"]
    await wait_until(
        lambda: running.agent.reconciler.outcomes["cgroup_missing"] > missing,
        timeout=2,
        what="the vanished cgroup noticed",
    )
    # Nothing is wedged: another pod's edit lands promptly while that one is retried.
    cluster.set_annotations("default", "bystander", {f"{P}/iops": "250"})
    await cluster.wait_kernel(bystander, IOLimits(250, 250), timeout=1.0)

    new = _restart_container(cluster, "flaky", 0, "cd" * 32)
    await cluster.wait_kernel(new, IOLimits(500, 80), timeout=2.0)
    # the retry of the old ID stopped: no more "cgroup missing" outcomes accumulate
    settled = running.agent.reconciler.outcomes["cgroup_missing"]
    await trio.sleep(2.5)  # more than two retry periods at the maximum backoff (1 s)
    assert running.agent.reconciler.outcomes["cgroup_missing"] == settled
    assert not old.exists()  # and nothing re-created the old directory
    assert cluster.kernel(bystander) == IOLimits(250, 250)


async def test_rapid_container_restarts_under_edits_converge(
    cluster: Cluster, start_agent: Any
) -> None:
    """Containers restart over and over (old cgroup removed, new one made, some statuses
    arriving before their cgroup) while their pods are edited: the race between resolving
    a cgroup and writing it is hit for real; every live cgroup ends right."""
    names = [f"r{i}" for i in range(6)]
    current: dict[str, list[Path]] = {}
    for n in names:
        obj = cluster.add_pod(n, containers=(("a", "img"), ("b", "img")))
        current[n] = [cluster.cgroup(r) for r in cluster.refs(obj)]
    await start_agent(RESYNC_INTERVAL="1")
    await wait_all(cluster, {cg: DEFAULT for cgs in current.values() for cg in cgs}, timeout=5)
    values = {n: 500 for n in names}
    for step in range(40):
        n = names[step % len(names)]
        idx = step % 2
        values[n] = 100 + step
        cluster.set_annotations("default", n, {f"{P}/iops": str(values[n])})
        old = current[n][idx]
        new_id = f"{step:02x}" * 32
        if step % 3 == 0:  # the status first, the cgroup a moment later
            obj = cluster.api.get("pods", "default", n)
            ref = attrs.evolve(cluster.refs(obj)[idx], container_id=new_id)

            def point(o: dict[str, Any], idx: int = idx, new_id: str = new_id) -> None:
                o["status"]["containerStatuses"][idx]["containerID"] = f"containerd://{new_id}"

            cluster.api.update("pods", "default", n, point)
            await trio.sleep(0.03)
            new = cluster.kubelet.create(ref, cluster.driver)
        else:
            new = _restart_container(cluster, n, idx, new_id)
        old.rmdir()
        current[n][idx] = new
        await trio.sleep(0.01)
    expected = {cg: IOLimits(values[n], values[n]) for n, cgs in current.items() for cg in cgs}
    await wait_all(cluster, expected, timeout=5, what="after 40 restarts")


# ---------------------------------------------------------------- a data disk that vanishes

LOOP_CTL_REMOVE = 0x4C81


@attrs.define
class VanishingDisk:
    """A loop disk of this test's own that can be made to disappear from the kernel
    (unmount, detach, then LOOP_CTL_REMOVE: the gendisk is gone, as after a hot-unplug)."""

    node: Path
    device: Device
    mount: Path
    backing: Path
    gone: bool = False

    def vanish(self) -> None:
        run(["umount", str(self.mount)])
        run(["losetup", "--detach", str(self.node)])
        number = self.device.minor  # loop minors are the device numbers (max_part=0)
        fd = os.open("/dev/loop-control", os.O_RDWR)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    fcntl.ioctl(fd, LOOP_CTL_REMOVE, number)
                    break
                except OSError as exc:  # udev may hold it open for a moment
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            os.close(fd)
        self.gone = True


@contextlib.contextmanager
def vanishing_disk(workdir: Path) -> Iterator[VanishingDisk]:
    if shutil.which("losetup") is None or not Path("/dev/loop-control").exists():
        pytest.skip("needs losetup and /dev/loop-control")
    workdir.mkdir(parents=True)
    backing = workdir / "vanishing.img"
    with backing.open("wb") as f:
        f.truncate(64 << 20)
    node = run(["losetup", "--find", "--show", str(backing)])
    mount = workdir / "mnt"
    disk = VanishingDisk(Path(node), device_of(node), mount, backing)
    try:
        if disk.device.major != 7:
            pytest.skip(f"{node} is not a loop device number")
        run(["mkfs.ext4", "-q", "-F", node])
        mount.mkdir()
        run(["mount", "-t", "ext4", node, str(mount)])
        yield disk
    finally:
        if not disk.gone:
            with contextlib.suppress(LabError):
                run(["umount", str(mount)])
            with contextlib.suppress(LabError):
                run(["losetup", "--detach", node])
        backing.unlink(missing_ok=True)


def _held(cluster: Cluster, cgroup: Path, device: Device) -> IOLimits | None:
    return cluster.backend.read(cgroup).get((device.major, device.minor))


def _holds(cluster: Cluster, cgroup: Path, device: Device, want: IOLimits) -> bool:
    return _held(cluster, cgroup, device) == want


@pytest.mark.parametrize(
    "vanishing_first",
    [
        False,
        True,
    ],
    ids=["vanishing-disk-last", "vanishing-disk-first"],
)
async def test_data_disk_that_disappears(
    cluster: Cluster, launch_agent: Any, tmp_path: Path, vanishing_first: bool
) -> None:
    """What "converge" means when a data disk disappears (hot-unplug, detached loop): the
    kernel drops every throttle rule naming it together with the disk, so there is nothing
    left to enforce there. The agent must log it, keep running and serving, keep the
    limits on every remaining data disk, and keep applying edits and new pods there."""
    with vanishing_disk(tmp_path / "vanishing") as gone:
        devices = (
            (gone.device, cluster.device) if vanishing_first else (cluster.device, gone.device)
        )
        before = cluster.add_pod("before", annotations={f"{P}/iops": "100"})
        steady = cluster.add_pod("steady", annotations={f"{P}/iops": "40"})
        running = await launch_agent(devices=devices, RESYNC_INTERVAL="0.5")
        cg = cluster.cgroup(cluster.refs(before)[0])
        steady_cg = cluster.cgroup(cluster.refs(steady)[0])
        for device in (gone.device, cluster.device):
            await wait_until(
                functools.partial(_holds, cluster, cg, device, IOLimits(100, 100)),
                timeout=10,
                what=f"limits on {device}",
            )

        await trio.to_thread.run_sync(gone.vanish)
        assert _held(cluster, cg, gone.device) is None  # the kernel forgot the rules
        cluster.set_annotations("default", "before", {f"{P}/iops": "70"})
        after = cluster.add_pod("after", annotations={f"{P}/write-iops": "60"})
        after_cg = cluster.cgroup(cluster.refs(after)[0])
        await trio.sleep(1.5)  # a few resyncs run into the vanished disk
        # the surviving disk converges; the untouched pod keeps its limits
        await cluster.wait_kernel(steady_cg, IOLimits(40, 40))
        await cluster.wait_kernel(cg, IOLimits(70, 70), timeout=3)
        await cluster.wait_kernel(after_cg, IOLimits(500, 60), timeout=3)
        # alive, serving, and saying what is wrong
        assert (await http_get(running.agent.http_binds[0], "/healthz")).status_code == 200
        errors = [r.error for r in running.agent.reconciler.results.values() if r.error]
        assert errors and all(str(gone.device) in e or "No such device" in e for e in errors)


# ---------------------------------------------------------------- no BPF


def _private_mounts_argv() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private mount namespace")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c"]


def _agent_in_private_mounts(cluster: Cluster, script: str, **env: str) -> Any:
    """The agent in a mount namespace of its own where `script` (sh) first hides or
    replaces files: the host's mounts are untouched."""
    argv = [*_private_mounts_argv(), f'{script} && exec "$0" -m diskguard run', _python()]
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOG_LEVEL": "info",
        **cluster.env(**env),
    }
    out = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(argv, env=full, stdout=out, stderr=subprocess.STDOUT)
    proc.output_file = out  # type: ignore[attr-defined]
    return proc


def _python() -> str:
    return sys.executable


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        # no kernel headers anywhere BCC would look
        ("mount -t tmpfs none /lib/modules && mount -t tmpfs none /usr/src", "no kernel headers"),
        # headers there, but the BPF program does not compile
        (
            "printf 'this is not C\\n' > {tmp}/broken.c && mount --bind {tmp}/broken.c {source}",
            "BPF compile/load failed",
        ),
    ],
    ids=["no-headers", "compile-error"],
)
async def test_sampler_auto_without_bpf_falls_back_and_limits_hold(
    cluster: Cluster, tmp_path: Path, breakage: str, reason: str
) -> None:
    """diskguard gives no setting to point BCC's header search elsewhere (BpfOptions has
    header_search, but the agent always uses the defaults), so the agent runs in a private
    mount namespace with the header directories hidden or the program source replaced."""
    from diskguard.sampler.bpf import default_source

    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    script = breakage.format(tmp=tmp_path, source=default_source())
    proc = _agent_in_private_mounts(cluster, script, SAMPLER="auto")
    try:
        await cluster.wait_kernel(cg, IOLimits(500, 100), timeout=60)
        base = await subprocess_http(proc)
        # the sampler is opened beside enforcement (a BPF compile must not delay limits)
        status: dict[str, Any] = {}

        async def sampler_settled() -> bool:
            nonlocal status
            status = (await http_get(base, "/status")).json()
            return status["sampler"].get("kind") is not None

        with trio.fail_after(60):
            while not await sampler_settled():
                await trio.sleep(0.2)
        out = agent_output(proc).decode()
        assert status["sampler"]["kind"] == "cgroup", (status["sampler"], out[-2000:])
        degraded = status["sampler"]["degraded"] or ""
        # the fallback happened for the reason this test caused, not some other one
        assert "eBPF sampler unavailable" in degraded and reason in degraded, degraded
        assert "BPF sampler unavailable" in out  # the reason is logged
        # still enforcing: an edit lands
        cluster.set_annotations("default", "web", {f"{P}/write-iops": "70"})
        await cluster.wait_kernel(cg, IOLimits(500, 70), timeout=2)
    finally:
        assert await stop_process(proc) == 0, agent_output(proc).decode()[-3000:]
    assert cluster.kernel(cg) == IOLimits(500, 70)


async def test_sampler_bpf_without_headers_refuses_to_start_clearly(cluster: Cluster) -> None:
    proc = _agent_in_private_mounts(
        cluster,
        "mount -t tmpfs none /lib/modules && mount -t tmpfs none /usr/src",
        SAMPLER="bpf",
    )
    try:
        code = await trio.to_thread.run_sync(lambda: proc.wait(60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = agent_output(proc).decode()
    assert code != 0 and "no kernel headers" in out, out[-2000:]
    assert "Traceback" not in out


# ---------------------------------------------------------------- kubelet TLS


async def test_kubelet_tls_failure_falls_back_to_the_api_server(
    cluster: Cluster, start_agent: Any, tmp_path: Path
) -> None:
    """The kubelet serves a certificate from a CA the agent does not trust: every poll is
    a TLS verification error; after three the API server's watch takes over."""
    real_ca, other_ca = trustme.CA(), trustme.CA()
    ca_path = tmp_path / "wrong-ca.pem"
    other_ca.cert_pem.write_to_path(str(ca_path))
    token_path = tmp_path / "token"
    token_path.write_text("t0ken")
    pod = cluster.add_pod("web", annotations={f"{P}/iops": "100"})
    cg = cluster.cgroup(cluster.refs(pod)[0])
    with FakeKubelet(server_tls_context(real_ca), token="t0ken") as kubelet:
        kubelet_pod = cluster.api.get("pods", "default", "web")
        kubelet_pod["metadata"]["annotations"][f"{P}/iops"] = "70"
        kubelet.set_pods([kubelet_pod])
        running = await start_agent(
            KUBELET_POD_SOURCE="true",
            KUBELET_HOST="localhost",
            KUBELET_PORT=str(kubelet.port),
            KUBELET_CA_PATH=str(ca_path),
            KUBELET_TOKEN_PATH=str(token_path),
            KUBELET_POLL_INTERVAL="0.2",
        )
        await cluster.wait_kernel(cg, IOLimits(100, 100), timeout=5)  # the API's view
        health = running.agent.kubelet_health
        assert health.failures >= 3 and "certificate" in health.last_error.lower()
        assert running.agent.pod_source.active.value == "api"
        assert running.agent.readiness_problem() == ""
        # the kubelet never got a request it could read: the token was not sent in clear
        assert all(r.authorization is None for r in kubelet.requests())
        cluster.set_annotations("default", "web", {f"{P}/iops": "90"})
        await cluster.wait_kernel(cg, IOLimits(90, 90), timeout=2)


async def test_malformed_pod_from_the_kubelet_does_not_take_the_agent_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    token_path = tmp_path / "token"
    token_path.write_text("t0ken")
    good = cluster.add_pod("good", annotations={f"{P}/iops": "123"})
    cg = cluster.cgroup(cluster.refs(good)[0])
    bad = cluster.api.get("pods", "default", "good")
    bad["metadata"] = {**bad["metadata"], "name": "bad", "uid": "0" * 32, "labels": ["x"]}
    bad["spec"] = {**bad["spec"], "containers": ["app"]}
    with FakeKubelet(server_tls_context(ca), token="t0ken") as kubelet:
        kubelet.set_pods([cluster.api.get("pods", "default", "good"), bad])
        proc = agent_subprocess(
            cluster.env(
                KUBELET_POD_SOURCE="true",
                KUBELET_HOST="localhost",
                KUBELET_PORT=str(kubelet.port),
                KUBELET_CA_PATH=str(ca_path),
                KUBELET_TOKEN_PATH=str(token_path),
                KUBELET_POLL_INTERVAL="0.2",
            )
        )
        try:
            # The good pod's limit proves a poll carrying the bad pod was taken in; a few
            # more polls after it prove the agent keeps going (no fixed sleep: start-up on
            # a loaded machine takes as long as it takes, within the lane's deadline).
            await cluster.wait_kernel(cg, IOLimits(123, 123), timeout=30)
            served = len(kubelet.requests())
            await trio.to_thread.run_sync(lambda: kubelet.wait_for_requests(served + 5, scaled(30)))
            assert proc.poll() is None, agent_output(proc).decode()[-3000:]
            await cluster.wait_kernel(cg, IOLimits(123, 123))
        finally:
            await stop_process(proc)
