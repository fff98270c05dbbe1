"""`diskguard demo`: the agent's main job on one machine, no cluster needed.

A loop-device data disk, the bundled fake API server as the pod source, a demo pod whose
container is a real cgroup in the kubelet layout, and fio doing real IO inside it. The
agent runs exactly as on a node; the demo edits the pod's annotations through the API and
shows what the kernel then holds and what fio measures.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from diskguard.agent.run import Agent
from diskguard.config import load_config
from diskguard.kube.client import make_api_client
from diskguard.model import (
    UNLIMITED,
    CgroupDriver,
    ContainerRef,
    Device,
    IOLimits,
    QoSClass,
    Runtime,
)
from diskguard.node.cgroups import detect_cgroup
from diskguard.node.limits import backend_for
from diskguard.node.setup import NodeSetup
from diskguard.testing.fakeapi import FakeAPIServer
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.lab import KubeletRoot, LabError, lab_tools_missing, loop_disk, run_fio

NODE = "demo-node"
NAMESPACE = "demo"
POD = "noisy-writer"
PREFIX = "iops-limit"


@attrs.frozen
class Step:
    title: str
    annotations: dict[str, str | None]  # None deletes the key
    expect: str


STEPS = (
    Step("no annotation: the env default applies", {}, "500 write IOPS (CONTAINER_IOPS_LIMIT)"),
    Step(
        f"annotate {PREFIX}/write-iops=100",
        {f"{PREFIX}/write-iops": "100"},
        "100 write IOPS",
    ),
    Step(
        f"annotate {PREFIX}/write-iops=abc (invalid)",
        {f"{PREFIX}/write-iops": "abc"},
        "still 100: the last good limit stays, a Warning Event says why",
    ),
    Step(
        "remove the annotation",
        {f"{PREFIX}/write-iops": None},
        "back to the 500 default",
    ),
)


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the demo creates cgroups and a loop device: run it as root")
    missing = lab_tools_missing()
    if missing:
        raise click.ClickException(
            f"missing tools: {', '.join(missing)} (scripts/install-system-deps.sh installs them)"
        )


def run_demo(fio_seconds: float, echo: Callable[[str], None]) -> None:
    check_prerequisites()
    with _lab() as lab:
        trio.run(_demo, lab, fio_seconds, echo)


@attrs.frozen
class _Lab:
    workdir: Path
    mount: Path
    device: Device
    kubelet: KubeletRoot


@contextlib.contextmanager
def _lab() -> Iterator[_Lab]:
    hierarchy = detect_cgroup("/sys/fs/cgroup", None)
    with tempfile.TemporaryDirectory(prefix="diskguard-demo-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        try:
            with loop_disk(workdir, size_mib=512) as disk:
                assert disk.mount is not None
                kubelet = KubeletRoot(hierarchy, f"diskguard_demo_{uuid.uuid4().hex[:8]}")
                try:
                    yield _Lab(workdir, disk.mount, disk.device, kubelet)
                finally:
                    kubelet.cleanup()
        except LabError as exc:
            raise click.ClickException(str(exc)) from exc


async def _demo(lab: _Lab, fio_seconds: float, echo: Callable[[str], None]) -> None:
    echo(f"data disk: loop device {lab.device} with ext4 at {lab.mount}")
    with FakeAPIServer() as api:
        kubeconfig = lab.workdir / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        pod = make_pod(POD, NAMESPACE, NODE, containers=(("writer", "demo/fio"),))
        container_id = pod["status"]["containerStatuses"][0]["containerID"].split("//", 1)[1]
        ref = ContainerRef(
            namespace=NAMESPACE,
            pod=POD,
            pod_uid=pod["metadata"]["uid"],
            container="writer",
            container_id=container_id,
            runtime=Runtime.CONTAINERD,
            qos=QoSClass.BURSTABLE,
        )
        cgroup = lab.kubelet.create(ref, CgroupDriver.CGROUPFS)
        echo(f"demo pod {NAMESPACE}/{POD}: container cgroup {cgroup}")
        api.create("pods", pod)

        env = {
            "NODE_NAME": NODE,
            "DATA_MOUNT": str(lab.mount),
            "KUBELET_CGROUP_ROOT": lab.kubelet.prefix,
            "CONTAINER_IOPS_LIMIT": "500",
            "KUBECONFIG": str(kubeconfig),
            # Loopback and an ephemeral port: the demo must not clash with a running agent.
            "HTTP_ADDR": "127.0.0.1:0",
            "SAMPLER": "cgroup",
            # The record of limits set stays in the demo's directory, not the node's.
            "STATE_DIR": str(lab.workdir / "state"),
        }
        config = load_config(env)
        node = NodeSetup(lab.kubelet.hierarchy, (lab.device,))
        backend = backend_for(node.hierarchy.version)
        agent = Agent(config, node, make_api_client(env))

        def kernel_limits() -> IOLimits:
            held = backend.read(cgroup)
            return held.get((lab.device.major, lab.device.minor), UNLIMITED)

        rows: list[tuple[str, str, float, str]] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await agent.reconciler.synced.wait()
            for step in STEPS:
                echo(f"\n== {step.title} (expect {step.expect})")
                before = kernel_limits()
                started = time.monotonic()
                if step.annotations:
                    api.update("pods", NAMESPACE, POD, _annotate(step.annotations))
                latency = await _wait_for_change(kernel_limits, before, timeout=2.0)
                held = kernel_limits()
                echo(
                    f"   kernel holds: {_show(held)}"
                    + (
                        f" (changed {latency * 1000:.0f} ms after the API edit)"
                        if latency is not None and step.annotations
                        else ""
                    )
                )
                result = await trio.to_thread.run_sync(
                    lambda: run_fio(cgroup, lab.mount, "randwrite", "4k", fio_seconds)
                )
                echo(
                    f"   fio 4k random writes, O_DIRECT, {fio_seconds:g}s in the container: "
                    f"{result.write_iops:.0f} IOPS"
                )
                rows.append(
                    (
                        step.title,
                        _show(held),
                        result.write_iops,
                        f"{(time.monotonic() - started):.1f}s",
                    )
                )
            nursery.cancel_scope.cancel()

        echo("\n== summary")
        for title, shown, iops, _ in rows:
            echo(f"   {title:<45} kernel {shown:<28} measured {iops:7.0f} write IOPS")
        warnings = [r for r in api.requests() if r.method == "POST" and r.path.endswith("/events")]
        echo("\nEvents posted by the agent:")
        for r in warnings:
            body: Any = r.body or {}
            echo(f"   {body.get('type')} {body.get('reason')}: {body.get('message')}")
        echo(
            "\nkernel limits stay in place when the agent stops; the demo now removes its "
            "cgroups, loop device and files."
        )


def _annotate(changes: dict[str, str | None]) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        annotations = obj["metadata"].setdefault("annotations", {})
        for key, value in changes.items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value

    return mutate


async def _wait_for_change(
    read: Callable[[], IOLimits], before: IOLimits, timeout: float
) -> float | None:
    started = trio.current_time()
    with trio.move_on_after(timeout):
        while read() == before:
            await trio.sleep(0.005)
        return trio.current_time() - started
    return None


def _show(limits: IOLimits) -> str:
    return " ".join(f"{k}={v if v else 'max'}" for k, v in limits.as_dict().items())
