"""Builders for realistic core/v1 objects, shaped like what a kubelet-managed cluster serves."""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from diskguard.model import QoSClass, Runtime

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# How each runtime spells its container IDs in status.containerStatuses[].containerID.
_ID_SCHEME = {Runtime.CONTAINERD: "containerd", Runtime.DOCKER: "docker", Runtime.CRIO: "cri-o"}
_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")

Containers = Iterable[tuple[str, str]]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_container_id() -> str:
    return secrets.token_hex(32)


def _resources(qos: QoSClass) -> dict[str, Any]:
    if qos is QoSClass.GUARANTEED:
        amounts = {"cpu": "100m", "memory": "64Mi"}
        return {"limits": dict(amounts), "requests": dict(amounts)}
    if qos is QoSClass.BURSTABLE:
        return {"requests": {"cpu": "50m", "memory": "32Mi"}}
    return {}


def _ip_for(name: str, namespace: str) -> str:
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return f"10.244.{digest[0]}.{max(digest[1], 2)}"


def _image_id(image: str) -> str:
    repo = image.rsplit(":", 1)[0]
    return f"docker.io/library/{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _status_for(
    name: str,
    image: str,
    container_id: str,
    scheme: str,
    phase: str,
    started: str,
    *,
    init: bool,
) -> dict[str, Any]:
    if init or phase in ("Succeeded", "Failed"):
        # Init containers of a running pod have run to completion.
        code = 1 if phase == "Failed" and not init else 0
        return _status(name, image, container_id, scheme, started, "terminated", code=code)
    if phase == "Running":
        return _status(name, image, container_id, scheme, started, "running")
    return _status(name, image, container_id, scheme, started, "waiting")


def _status(
    name: str,
    image: str,
    container_id: str,
    scheme: str,
    started: str,
    state: str,
    *,
    code: int = 0,
    waiting_reason: str = "ContainerCreating",
) -> dict[str, Any]:
    """One container status in `state` (`running`, `terminated` or `waiting`)."""
    status: dict[str, Any] = {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": False,
        "restartCount": 0,
    }
    if state == "terminated":
        status["state"] = {
            "terminated": {
                "exitCode": code,
                "reason": "Error" if code else "Completed",
                "startedAt": started,
                "finishedAt": started,
                "containerID": f"{scheme}://{container_id}",
            }
        }
    elif state == "running":
        status["state"] = {"running": {"startedAt": started}}
        status["ready"] = True
        status["started"] = True
    else:
        status["state"] = {"waiting": {"reason": waiting_reason}}
        status["started"] = False
        return status
    status["imageID"] = _image_id(image)
    status["containerID"] = f"{scheme}://{container_id}"
    return status


def make_pod(
    name: str,
    namespace: str = "default",
    node: str | None = "node-1",
    *,
    uid: str | None = None,
    containers: Containers = (("app", "busybox:1.36"),),
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    qos: QoSClass | str = "Burstable",
    runtime: Runtime | str = "containerd",
    container_ids: Mapping[str, str] | None = None,
    init_containers: Containers = (),
    phase: str = "Running",
    sidecars: Containers = (),
    ephemeral: Containers = (),
    running_init: str | None = None,
) -> dict[str, Any]:
    """A Pod as a kubelet reports it, with one status entry per container of every kind.

    `containers`/`init_containers` are (name, image) pairs; `container_ids` maps container
    names to 64-hex runtime IDs (missing ones are random). `node=None` leaves it unscheduled.
    `sidecars` are init containers with `restartPolicy: Always` (listed first in
    `initContainers`, running beside the regular containers); `ephemeral` are ephemeral
    containers (`kubectl debug`), running in a Running pod. `running_init` names the init
    container that is running now: the pod is then Pending (`phase` must be), the init
    containers before it have completed, the later ones and the regular containers wait.
    """
    qos = QoSClass(qos)
    scheme = _ID_SCHEME[Runtime(runtime)]
    if phase not in _PHASES:
        raise ValueError(f"phase must be one of {_PHASES}, got {phase!r}")
    main = [(str(n), str(i)) for n, i in containers]
    init = [(str(n), str(i)) for n, i in init_containers]
    side = [(str(n), str(i)) for n, i in sidecars]
    debug = [(str(n), str(i)) for n, i in ephemeral]
    if not main:
        raise ValueError("a pod needs at least one container")
    if running_init is not None and (
        phase != "Pending" or running_init not in [n for n, _ in init]
    ):
        raise ValueError("running_init must name an init container of a Pending pod")
    names = [n for n, _ in main + init + side + debug]
    if len(set(names)) != len(names):
        raise ValueError(f"container names must be unique within a pod, got {names}")
    ids = dict(container_ids or {})
    unknown = set(ids) - set(names)
    if unknown:
        raise ValueError(f"container_ids names unknown containers: {sorted(unknown)}")
    for cname, cid in ids.items():
        if not _HEX64.match(cid):
            raise ValueError(f"container id for {cname!r} must be 64 lowercase hex, got {cid!r}")
    for cname in names:
        ids.setdefault(cname, random_container_id())

    started = _now()
    resources = _resources(qos)

    def spec_container(cname: str, image: str) -> dict[str, Any]:
        return {
            "name": cname,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "resources": {k: dict(v) for k, v in resources.items()},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }

    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "labels": dict(labels or {}),
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "containers": [spec_container(n, i) for n, i in main],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "priority": 0,
        "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {
                "key": f"node.kubernetes.io/{t}",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
            for t in ("not-ready", "unreachable")
        ],
    }
    if init or side:
        spec["initContainers"] = [
            {**spec_container(n, i), "restartPolicy": "Always"} for n, i in side
        ] + [spec_container(n, i) for n, i in init]
    if debug:
        # Ephemeral containers carry no resources and are never restarted.
        spec["ephemeralContainers"] = [
            {
                "name": n,
                "image": i,
                "imagePullPolicy": "IfNotPresent",
                "targetContainerName": main[0][0],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "stdin": True,
                "tty": True,
            }
            for n, i in debug
        ]
    status: dict[str, Any] = {"phase": phase, "qosClass": qos.value}
    if node is not None:
        spec["nodeName"] = node
        running = phase == "Running"
        # Sidecars start before the ordinary init containers and run for the pod's life.
        sidecar_state = "running" if running or running_init is not None else "waiting"
        status.update(
            {
                "hostIP": "192.0.2.10",
                "startTime": started,
                "conditions": [
                    {
                        "type": t,
                        "status": "True" if ok else "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": started,
                    }
                    for t, ok in (
                        ("PodReadyToStartContainers", phase != "Pending"),
                        ("Initialized", phase != "Pending" or not init),
                        ("Ready", running),
                        ("ContainersReady", running),
                        ("PodScheduled", True),
                    )
                ],
                "containerStatuses": [
                    _status_for(n, i, ids[n], scheme, phase, started, init=False)
                    if running_init is None
                    else _status(
                        n, i, ids[n], scheme, started, "waiting", waiting_reason="PodInitializing"
                    )
                    for n, i in main
                ],
            }
        )
        if phase != "Pending":
            ip = _ip_for(name, namespace)
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        if init or side:
            status["initContainerStatuses"] = [
                _status(n, i, ids[n], scheme, started, sidecar_state) for n, i in side
            ] + _init_statuses(init, ids, scheme, phase, started, running_init)
        if debug:
            status["ephemeralContainerStatuses"] = [
                _status(n, i, ids[n], scheme, started, "running" if running else "waiting")
                for n, i in debug
            ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def _init_statuses(
    init: list[tuple[str, str]],
    ids: Mapping[str, str],
    scheme: str,
    phase: str,
    started: str,
    running_init: str | None,
) -> list[dict[str, Any]]:
    if running_init is None:
        return [
            _status_for(n, i, ids[n], scheme, phase, started, init=phase != "Pending")
            for n, i in init
        ]
    order = [n for n, _ in init]
    now = order.index(running_init)
    states = ["terminated"] * now + ["running"] + ["waiting"] * (len(order) - now - 1)
    return [
        _status(n, i, ids[n], scheme, started, state, waiting_reason="PodInitializing")
        for (n, i), state in zip(init, states, strict=True)
    ]


def container_ids(pod: Mapping[str, Any]) -> dict[str, str]:
    """Container name -> bare runtime ID (scheme stripped) for every started container."""
    result: dict[str, str] = {}
    status = pod.get("status") or {}
    for entry in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
        *(status.get("ephemeralContainerStatuses") or []),
    ]:
        cid = entry.get("containerID")
        if cid:
            result[entry["name"]] = cid.split("://", 1)[1]
    return result


def make_namespace(
    name: str,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata,
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def make_event(
    involved: Mapping[str, Any],
    reason: str,
    message: str,
    *,
    type: str = "Normal",
    component: str = "diskguard",
    host: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `involved` (any object dict), named like client-go names them."""
    if type not in ("Normal", "Warning"):
        raise ValueError(f"event type must be Normal or Warning, got {type!r}")
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    now = _now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": name or f"{meta.get('name', 'object')}.{secrets.token_hex(8)}",
            "namespace": namespace,
        },
        "involvedObject": {
            "kind": involved.get("kind", "Pod"),
            "apiVersion": involved.get("apiVersion", "v1"),
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
        },
        "reason": reason,
        "message": message,
        "type": type,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": component, **({"host": host} if host else {})},
        "reportingComponent": component,
        "reportingInstance": host or "",
    }
