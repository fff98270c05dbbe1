"""Every container that runs does IO on the node's disks, each in its own cgroup: regular
containers, native sidecars (init containers with `restartPolicy: Always`) for the pod's
life, ordinary init containers while they run, and ephemeral containers (`kubectl debug`).
The real agent must limit each of them in the kernel with the pod's limits, whichever pod
source (API watch or the kubelet's `/pods`) tells it about them.

Assertions read back the kernel's limit files, and end with the agent still taking in pods."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from diskguard.model import ContainerKey, ContainerRef, IOLimits, QoSClass
from diskguard.node.kubepods import parse_container_id
from diskguard.testing.fakeapi.objects import make_pod
from diskguard.testing.fakekubelet import FakeKubelet
from diskguard.testing.lab import start_fio
from diskguard.tools.top import pod_names
from diskguard.web.metrics import exposition
from diskguard.web.status import containers_json
from tests.agent.conftest import (
    NODE,
    Cluster,
    P,
    cluster,
    scaled,
    start_agent,
)
from tests.agent.test_kubelet_agent import kubelet_env  # noqa: F401 - a fixture used below

# The whole-agent fixtures, shared with tests/agent.
__all__ = ["cluster", "start_agent"]

pytestmark = pytest.mark.kernel

STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
MI = 2**20


def running_refs(pod: dict[str, Any]) -> dict[str, ContainerRef]:
    """Container name -> ref, for every container of any kind that the status says runs."""
    refs = {}
    for status_list in STATUS_LISTS:
        for status in pod["status"].get(status_list) or []:
            if "running" not in (status.get("state") or {}):
                continue
            runtime, cid = parse_container_id(status["containerID"])
            refs[status["name"]] = ContainerRef(
                namespace=pod["metadata"]["namespace"],
                pod=pod["metadata"]["name"],
                pod_uid=pod["metadata"]["uid"],
                container=status["name"],
                container_id=cid,
                runtime=runtime,
                qos=QoSClass(pod["status"]["qosClass"]),
            )
    return refs


def make_cgroups(cluster: Cluster, pod: dict[str, Any]) -> dict[str, Path]:
    """What the runtime does: one cgroup per running container, under the pod's."""
    return {
        name: cluster.kubelet.create(ref, cluster.driver) for name, ref in running_refs(pod).items()
    }


def add(cluster: Cluster, name: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    pod = make_pod(name, "default", NODE, **kwargs)
    cgroups = make_cgroups(cluster, pod)
    return cluster.api.create("pods", pod), cgroups


async def assert_alive(cluster: Cluster) -> None:
    canary = cluster.add_pod("canary", annotations={f"{P}/read-iops": "321"})
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(canary)[0]), IOLimits(321, 500))


async def test_sidecar_and_ephemeral_containers_get_the_pods_limits(
    cluster: Cluster, start_agent: Any
) -> None:
    _pod, cgroups = add(
        cluster,
        "mixed",
        annotations={f"{P}/write-iops": "70", f"{P}/read-bps": "4Mi"},
        sidecars=(("mesh", "envoyproxy/envoy:v1.30"),),
        init_containers=(("setup", "busybox:1.36"),),
        ephemeral=(("debugger", "busybox:1.36"),),
    )
    assert set(cgroups) == {"app", "mesh", "debugger"}  # `setup` completed: no cgroup
    running = await start_agent()
    want = IOLimits(riops=500, wiops=70, rbps=4 * MI, wbps=0)
    for cg in cgroups.values():
        await cluster.wait_kernel(cg, want)
    kinds = {c["container"]: c["kind"] for c in containers_json(running.agent.reconciler, {}, P)}
    assert kinds == {"app": "container", "mesh": "sidecar", "debugger": "ephemeral"}
    await assert_alive(cluster)


async def test_a_running_init_container_is_limited_then_the_regular_containers(
    cluster: Cluster, start_agent: Any
) -> None:
    spec: dict[str, Any] = {
        "annotations": {f"{P}/iops": "150"},
        "init_containers": (("fetch", "busybox"), ("migrate", "flyway:10")),
        "sidecars": (("log-shipper", "fluent-bit:3"),),
    }
    pod, cgroups = add(cluster, "initializing", phase="Pending", running_init="migrate", **spec)
    assert set(cgroups) == {"migrate", "log-shipper"}
    await start_agent()
    for cg in cgroups.values():
        await cluster.wait_kernel(cg, IOLimits(150, 150))

    # `migrate` completes; the kubelet starts `app` (sidecar still running).
    uid = pod["metadata"]["uid"]
    ids = {
        s["name"]: s["containerID"].split("://", 1)[1]
        for lst in STATUS_LISTS
        for s in pod["status"].get(lst) or []
        if s.get("containerID")
    }
    started = make_pod("initializing", "default", NODE, uid=uid, container_ids=ids, **spec)
    app_cg = make_cgroups(cluster, started)["app"]

    def progress(obj: dict[str, Any]) -> None:
        obj["status"] = started["status"]

    cluster.api.update("pods", "default", "initializing", progress)
    await cluster.wait_kernel(app_cg, IOLimits(150, 150))
    await cluster.wait_kernel(cgroups["log-shipper"], IOLimits(150, 150))
    await assert_alive(cluster)


async def test_kubectl_debug_on_a_running_pod_is_limited(
    cluster: Cluster, start_agent: Any
) -> None:
    pod, cgroups = add(cluster, "web", annotations={f"{P}/write-iops": "90"})
    await start_agent()
    await cluster.wait_kernel(cgroups["app"], IOLimits(500, 90))

    debugged = make_pod(
        "web",
        "default",
        NODE,
        uid=pod["metadata"]["uid"],
        container_ids={"app": running_refs(pod)["app"].container_id},
        ephemeral=(("debugger-x7k2p", "busybox:1.36"),),
    )
    debug_cg = make_cgroups(cluster, debugged)["debugger-x7k2p"]

    def attach(obj: dict[str, Any]) -> None:
        obj["spec"]["ephemeralContainers"] = debugged["spec"]["ephemeralContainers"]
        obj["status"]["ephemeralContainerStatuses"] = debugged["status"][
            "ephemeralContainerStatuses"
        ]

    cluster.api.update("pods", "default", "web", attach)
    await cluster.wait_kernel(debug_cg, IOLimits(500, 90))
    await assert_alive(cluster)


async def test_keyword_named_sidecar_and_debug_image_are_held_to_the_ceiling(
    cluster: Cluster, start_agent: Any
) -> None:
    _pod, cgroups = add(
        cluster,
        "sneaky",
        annotations={f"{P}/iops": "0"},
        sidecars=(("istio-proxy", "busybox:1.36"),),
        ephemeral=(("dbg", "registry.example.com/apisix/tools:1"),),
    )
    await start_agent(LIMIT_CEILING_READ_IOPS="1000", LIMIT_CEILING_WRITE_IOPS="800")
    for name in ("app", "istio-proxy", "dbg"):
        await cluster.wait_kernel(cgroups[name], IOLimits(1000, 800))
    await assert_alive(cluster)


async def test_ephemeral_container_io_is_measured_and_shown(
    cluster: Cluster, start_agent: Any
) -> None:
    """The sampler, /status and /metrics list the new kinds like any container: IO done in
    a debug container is measured in its own cgroup."""
    pod, cgroups = add(
        cluster,
        "debugged",
        annotations={f"{P}/write-iops": "300"},
        ephemeral=(("debugger", "busybox:1.36"),),
    )
    running = await start_agent(SAMPLE_INTERVAL="0.2")
    await cluster.wait_kernel(cgroups["debugger"], IOLimits(500, 300))
    key = ContainerKey(pod["metadata"]["uid"], "debugger")
    load = start_fio(
        cgroups["debugger"],
        cluster.mount,
        runtime=600,
        size_mib=16,
        extra=["--rate_iops=100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await cluster.wait_io(cgroups["debugger"], writes=20)
        sampling = running.agent.sampling
        assert sampling is not None
        with trio.fail_after(scaled(10)):
            while not any(r.wiops > 20 for r in sampling.rates.get(key, {}).values()):
                await trio.sleep(0.05)
    finally:
        load.kill()
        load.wait()
    [shown] = [
        c
        for c in containers_json(running.agent.reconciler, sampling.rates, P)
        if c["container"] == "debugger"
    ]
    assert shown["kind"] == "ephemeral" and shown["in_sync"]
    assert shown["rates"] and any(r["wiops"] > 0 for r in shown["rates"].values())
    limit_lines = [
        line
        for line in exposition(running.agent).decode().splitlines()
        if line.startswith("diskguard_container_limit_iops{")
        and 'container="debugger"' in line
        and 'direction="write"' in line
    ]
    assert limit_lines and limit_lines[0].endswith(" 300.0"), limit_lines


def test_top_names_every_running_container(cluster: Cluster) -> None:
    """`diskguard top` names cgroups from the pod list: the new kinds included."""
    pod = make_pod(
        "named",
        "default",
        NODE,
        sidecars=(("mesh", "envoy:1"),),
        init_containers=(("setup", "busybox"),),
        ephemeral=(("debugger", "busybox"),),
    )
    cgroups = make_cgroups(cluster, pod)
    names = pod_names([pod], cluster.hierarchy, cluster.driver, cluster.kubelet.prefix)
    assert {(n.namespace, n.pod, n.container) for n in map(names.get, cgroups.values()) if n} == {
        ("default", "named", "app"),
        ("default", "named", "mesh"),
        ("default", "named", "debugger"),
    }


async def test_kubelet_pod_source_carries_every_container_kind(
    cluster: Cluster,
    start_agent: Any,
    kubelet_env: tuple[FakeKubelet, dict[str, str]],  # noqa: F811 - the imported fixture
) -> None:
    """The kubelet's `/pods` has the same status lists; pods only the kubelet knows of
    (the API server has none here) get every running container limited."""
    kubelet, tls_env = kubelet_env
    env = {**tls_env, "KUBELET_POD_SOURCE": "true"}
    running_pod = make_pod(
        "served",
        "default",
        NODE,
        annotations={f"{P}/iops": "60"},
        sidecars=(("mesh", "envoy:1"),),
        ephemeral=(("debugger", "busybox"),),
    )
    initializing = make_pod(
        "starting",
        "default",
        NODE,
        phase="Pending",
        annotations={f"{P}/iops": "61"},
        init_containers=(("migrate", "flyway:10"),),
        running_init="migrate",
    )
    served = make_cgroups(cluster, running_pod)
    starting = make_cgroups(cluster, initializing)
    assert set(served) == {"app", "mesh", "debugger"} and set(starting) == {"migrate"}
    kubelet.set_pods([running_pod, initializing])
    await start_agent(**env)
    for cg in served.values():
        await cluster.wait_kernel(cg, IOLimits(60, 60), timeout=3)
    await cluster.wait_kernel(starting["migrate"], IOLimits(61, 61), timeout=3)
    assert not [r for r in cluster.api.requests() if r.path == "/api/v1/pods"]
