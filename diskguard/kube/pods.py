"""Parsing of Pod objects from the API server into PodInfo values (the API edge)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diskguard.model import ContainerInfo, PodInfo, QoSClass, Runtime
from diskguard.node.cgroups import parse_container_id, validate_pod_uid

# Mirror pods of static pods carry the config hash kubelet uses as the pod's UID locally.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


class PodParseError(ValueError):
    """A pod object diskguard cannot act on (logged once, the pod is left alone)."""


def parse_pod(obj: Mapping[str, Any], forced_runtime: Runtime | None = None) -> PodInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    uid = str(meta.get("uid", ""))
    try:
        validate_pod_uid(uid)
    except ValueError as exc:
        raise PodParseError(f"pod {namespace}/{name}: {exc}") from None

    statuses = {
        str(s.get("name")): s
        for s in status.get("containerStatuses") or []
        if isinstance(s, Mapping)
    }
    containers = []
    for c in spec.get("containers") or []:
        cname = str(c.get("name", ""))
        cstatus = statuses.get(cname) or {}
        raw_id = cstatus.get("containerID") or ""
        container_id: str | None = None
        runtime: Runtime | None = None
        if raw_id:
            try:
                runtime, container_id = parse_container_id(str(raw_id))
            except ValueError as exc:
                raise PodParseError(f"pod {namespace}/{name} container {cname}: {exc}") from None
            if forced_runtime is not None:
                runtime = forced_runtime
        containers.append(
            ContainerInfo(
                name=cname,
                image=str(c.get("image", "")),
                container_id=container_id,
                runtime=runtime,
                running=bool((cstatus.get("state") or {}).get("running") is not None),
            )
        )

    mirror = str((meta.get("annotations") or {}).get(MIRROR_ANNOTATION, ""))
    if mirror:
        try:
            validate_pod_uid(mirror)
        except ValueError as exc:
            raise PodParseError(f"pod {namespace}/{name}: static pod hash: {exc}") from None
    return PodInfo(
        uid=uid,
        cgroup_uid=mirror,
        namespace=namespace,
        name=name,
        node_name=str(spec.get("nodeName", "")),
        qos=_qos_class(status.get("qosClass"), spec),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        containers=tuple(containers),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def _qos_class(reported: object, spec: Mapping[str, Any]) -> QoSClass:
    """The pod's QoS class: status.qosClass, else computed the way kubelet computes it."""
    for qos in QoSClass:
        if reported == qos.value:
            return qos
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    requests_seen = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            requests_seen = True
        for kind in ("cpu", "memory"):
            limit = lim.get(kind)
            if limit is None or req.get(kind, limit) != limit:
                guaranteed = False
    if not requests_seen:
        return QoSClass.BESTEFFORT
    return QoSClass.GUARANTEED if guaranteed else QoSClass.BURSTABLE
