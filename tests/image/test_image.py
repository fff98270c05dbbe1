"""The image built from the Dockerfile, run the way the DaemonSet runs it, on this host's
real cgroups and a loop-device data disk, against the fake API server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from diskguard.model import UNLIMITED, CgroupDriver, ContainerRef, IOLimits, QoSClass
from diskguard.node.cgroups import CgroupHierarchy
from diskguard.node.kubepods import container_cgroup_path, parse_container_id
from diskguard.node.limits import backend_for
from diskguard.testing.fakeapi import FakeAPIServer
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.lab import KubeletRoot, LoopDisk

from .daemonset_run import container_args, docker_run_args
from .docker_lab import BuiltImage, docker

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
NODE = "image-lane-node"
KUBECONFIG_IN_CONTAINER = "/etc/diskguard/kubeconfig"


def daemonset() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "deploy" / "daemonset.yaml").read_text()))


def config_maps() -> dict[str, dict[str, str]]:
    """The base's ConfigMaps (deploy/config.yaml), which the DaemonSet's env refers to."""
    docs = yaml.safe_load_all((REPO / "deploy" / "config.yaml").read_text())
    return {d["metadata"]["name"]: d["data"] for d in docs if d and d["kind"] == "ConfigMap"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: Callable[[], str]) -> Any:
    """Poll `check` until it returns something truthy; fail with the agent's logs."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, httpx.HTTPError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {timeout} s (last: {last!r})\n{logs()[-6000:]}")


def test_image_labels_and_version(image: BuiltImage) -> None:
    out = docker("run", "--rm", image.tag, "--version").stdout
    assert out.strip() == f"diskguard, version {image.version}"
    assert image.labels["org.opencontainers.image.version"] == image.version
    assert image.labels["org.opencontainers.image.title"] == "diskguard"
    # Runtime only: no pip, compiler or BCC tools in the final stage.
    probe = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        image.tag,
        "-c",
        "command -v pip pip3 gcc cc bpftool mkfs.ext4 fio; "
        "ls /opt/diskguard/venv/bin | grep -c '^pip' || true; "
        "/opt/diskguard/venv/bin/python -c 'import setuptools' 2>/dev/null && echo setuptools",
        check=False,
    ).stdout.split()
    assert probe == ["0"], probe


@pytest.fixture
def running(
    image: BuiltImage,
    cgroup_hierarchy: CgroupHierarchy,
    kubelet_root: KubeletRoot,
    loop_disk: LoopDisk,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    """The agent container, started like the DaemonSet's, with one annotated pod."""
    assert loop_disk.mount is not None
    api = FakeAPIServer(bookmark_interval=0.5)
    with api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        state_dir = tmp_path / "state"
        pod = make_pod(
            "web",
            "default",
            NODE,
            containers=(("app", "busybox:1.36"),),
            annotations={"iops-limit/write-iops": "123"},
            qos="Burstable",
            runtime="containerd",
        )
        status = pod["status"]["containerStatuses"][0]
        runtime, cid = parse_container_id(status["containerID"])
        ref = ContainerRef(
            namespace="default",
            pod="web",
            pod_uid=pod["metadata"]["uid"],
            container="app",
            container_id=cid,
            runtime=runtime,
            qos=QoSClass(pod["status"]["qosClass"]),
        )
        kubelet_root.create(ref, CgroupDriver.CGROUPFS)
        cgroup = cgroup_hierarchy.path / container_cgroup_path(
            ref, CgroupDriver.CGROUPFS, kubelet_root.prefix
        )
        api.create("pods", pod)
        # HostToContainer (rslave) needs a shared source mount, as a systemd host's are;
        # this VM's mounts are private, so make the data disk's mount shared.
        subprocess.run(["mount", "--make-shared", str(loop_disk.mount)], check=True)
        port = free_port()
        name = f"diskguard-lane-{uuid.uuid4().hex[:8]}"
        options = docker_run_args(
            daemonset(),
            node_name=NODE,
            config_maps=config_maps(),
            # The node-state directory: the test's own, not the machine's /var/lib.
            host_paths={"data": str(loop_disk.mount), "state": str(state_dir)},
            env={
                "KUBELET_CGROUP_ROOT": kubelet_root.prefix,
                "HTTP_ADDR": f"127.0.0.1:{port}",
                "KUBECONFIG": KUBECONFIG_IN_CONTAINER,
                "LOG_LEVEL": "debug",
            },
            extra_mounts={str(kubeconfig): KUBECONFIG_IN_CONTAINER},
        )
        docker(
            "run", "--detach", f"--name={name}", *options, image.tag, *container_args(daemonset())
        )
        try:
            yield {
                "name": name,
                "port": port,
                "cgroup": cgroup,
                "device": loop_disk.device,
                "backend": backend_for(cgroup_hierarchy.version),
                "api": api,
                "logs": lambda: (
                    docker("logs", name, check=False).stdout
                    + docker("logs", name, check=False).stderr
                ),
            }
        finally:
            # SIGTERM, like a pod deletion: the agent leaves limits in place and exits 0.
            docker("stop", "--time=30", name, check=False, timeout=60)
            exit_code = docker("inspect", "--format", "{{.State.ExitCode}}", name, check=False)
            docker("rm", "--force", "--volumes", name, check=False)
            assert exit_code.stdout.strip() == "0", exit_code.stdout


def test_the_image_limits_a_container_like_the_daemonset(running: dict[str, Any]) -> None:
    logs = running["logs"]
    device = running["device"]

    def kernel() -> IOLimits:
        held = running["backend"].read(running["cgroup"])
        return held.get((device.major, device.minor), UNLIMITED)

    # The annotation's limit reaches the host kernel (the default 500 holds for reads).
    held = wait_for(
        "the limit in the host kernel", lambda: kernel().wiops == 123 and kernel(), 180, logs
    )
    assert held.riops == 500, held

    base = f"http://127.0.0.1:{running['port']}"
    for path in ("/healthz", "/readyz"):

        def answers(p: str = path) -> bool:
            return httpx.get(base + p, timeout=5).status_code == 200

        wait_for(f"{path} answers 200", answers, 120, logs)

    doctor = docker("exec", running["name"], "diskguard", "doctor", check=False, timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    top = docker("exec", running["name"], "diskguard", "top", "--once", "--json", timeout=300)
    report = json.loads(top.stdout)
    assert report["sampler"] == "bpf" and not report["sampler_degraded"], top.stdout
    mine = [c for c in report["containers"] if (c["pod"], c["container"]) == ("web", "app")]
    assert len(mine) == 1, top.stdout
    assert mine[0]["limits"]["wiops"] == 123, top.stdout
