"""Parsing of Pod objects from the API server into PodInfo values (the API edge).

Pod events are parsed here, one pod at a time, before the reconciler sees them: it gets a
PodInfo, or a PodParseFailure saying why the pod cannot be acted on (contained to that pod).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio

from diskguard.kube.watch import Changed, Relisted, WatchEvent
from diskguard.logs import get_logger
from diskguard.model import ContainerInfo, ContainerKind, PodInfo, QoSClass, Runtime
from diskguard.node.kubepods import parse_container_id, validate_pod_uid

log = get_logger(__name__)

# Mirror pods of static pods carry the config hash kubelet uses as the pod's UID locally.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


class PodParseError(ValueError):
    """A pod object diskguard cannot act on (logged once, the pod is left alone)."""


@attrs.frozen
class PodParseFailure:
    """A version of a pod that could not be parsed; the last good version stays in force."""

    key: str  # the pod's uid, or its namespace/name when it has no usable uid
    error: str
    # Not a malformed pod but a bug in the parser (an exception other than
    # PodParseError): counted in diskguard_pod_errors_total{stage="event"}.
    unexpected: bool = False


PodUpdate = PodInfo | PodParseFailure
PodEvent = Relisted[PodUpdate] | Changed[PodUpdate]


def state_key(update: PodUpdate) -> str:
    """The key a pod's state is kept under: its uid, or its namespace/name without one."""
    return update.uid if isinstance(update, PodInfo) else update.key


def read_pod(obj: object, forced_runtime: Runtime | None = None) -> PodUpdate:
    """Parse one raw pod, containing any failure to this pod."""
    try:
        return parse_pod(obj, forced_runtime)  # type: ignore[arg-type]
    except PodParseError as exc:
        return PodParseFailure(_key(obj), str(exc))
    except Exception as exc:
        # A bug reachable from tenant input must cost that pod, not the event or the task.
        log.exception("parsing a pod failed", pod_key=_key(obj))
        text = str(exc)
        if len(text) > 200:
            text = f"{text[:200]}... ({len(text)} characters)"
        return PodParseFailure(_key(obj), f"{type(exc).__name__}: {text}", unexpected=True)


def pod_event(
    event: WatchEvent, forced_runtime: Runtime | None = None, at: float | None = None
) -> PodEvent:
    """A raw pod watch event with each pod parsed, taken in at `at`."""
    if isinstance(event, Relisted):
        pods = tuple(read_pod(obj, forced_runtime) for obj in event.objects)
        return Relisted(pods, event.resource_version, event.resource, at)
    return Changed(event.kind, read_pod(event.object, forced_runtime), event.resource, at)


async def parse_pod_events(
    receive: trio.MemoryReceiveChannel[WatchEvent],
    send: trio.MemorySendChannel[PodEvent],
    forced_runtime: Runtime | None = None,
) -> None:
    """The API edge of the pod sources: raw events in, parsed events out, in order."""
    async with send:
        async for event in receive:
            await send.send(pod_event(event, forced_runtime, trio.current_time()))


def _key(obj: object) -> str:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return "None/None"
    uid = meta.get("uid")
    if isinstance(uid, str):
        try:
            validate_pod_uid(uid)
        except ValueError:
            pass
        else:
            return uid
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    """A JSON object from the API, or an empty one for null; anything else is malformed."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PodParseError(f"{what} is a {type(value).__name__}, not an object")
    return value


def _objects(value: object, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodParseError(f"{what} is a {type(value).__name__}, not a list")
    return [_mapping(item, what) for item in value]


def _strings(value: object, what: str) -> dict[str, str]:
    mapping = _mapping(value, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise PodParseError(f"{what} must map strings to strings")
    return dict(mapping)


def parse_pod(obj: Mapping[str, Any], forced_runtime: Runtime | None = None) -> PodInfo:
    """Validate a raw Pod; anything malformed raises PodParseError (never another type)."""
    if not isinstance(obj, Mapping):
        raise PodParseError(f"pod is a {type(obj).__name__}, not an object")
    meta = _mapping(obj.get("metadata"), "metadata")
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    where = f"pod {namespace}/{name}"
    spec = _mapping(obj.get("spec"), f"{where}: spec")
    status = _mapping(obj.get("status"), f"{where}: status")
    uid = str(meta.get("uid", ""))
    try:
        validate_pod_uid(uid)
    except ValueError as exc:
        raise PodParseError(f"{where}: {exc}") from None
    labels = _strings(meta.get("labels"), f"{where}: labels")
    annotations = _strings(meta.get("annotations"), f"{where}: annotations")

    containers = [
        *_containers(spec, status, where, "containers", "containerStatuses", forced_runtime),
        *_containers(
            spec, status, where, "initContainers", "initContainerStatuses", forced_runtime
        ),
        *_containers(
            spec,
            status,
            where,
            "ephemeralContainers",
            "ephemeralContainerStatuses",
            forced_runtime,
        ),
    ]

    # The kubelet's mirror of a static pod is owned by its Node; on any other pod the
    # annotation is a tenant's string and must not pick which cgroup gets the limits.
    mirror = annotations.get(MIRROR_ANNOTATION, "")
    if mirror and not _owned_by_node(meta.get("ownerReferences"), str(spec.get("nodeName", ""))):
        mirror = ""
    if mirror:
        try:
            validate_pod_uid(mirror)
        except ValueError as exc:
            raise PodParseError(f"{where}: static pod hash: {exc}") from None
    return PodInfo(
        uid=uid,
        cgroup_uid=mirror,
        namespace=namespace,
        name=name,
        node_name=str(spec.get("nodeName", "")),
        qos=_qos_class(status.get("qosClass"), spec),
        labels=labels,
        annotations=annotations,
        containers=tuple(containers),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def _owned_by_node(owners: object, node_name: str) -> bool:
    """Whether the pod is a mirror pod: an owner reference to its own Node (v1)."""
    if not isinstance(owners, list) or not node_name:
        return False
    return any(
        isinstance(o, Mapping)
        and o.get("kind") == "Node"
        and o.get("apiVersion") == "v1"
        and o.get("name") == node_name
        for o in owners[:16]
    )


def _kind(spec_list: str, container: Mapping[str, Any]) -> ContainerKind:
    if spec_list == "containers":
        return ContainerKind.REGULAR
    if spec_list == "ephemeralContainers":
        return ContainerKind.EPHEMERAL
    # An init container with restartPolicy Always is a sidecar: it keeps running beside
    # the regular containers for the pod's life (Kubernetes >= 1.29 by default).
    return (
        ContainerKind.SIDECAR if container.get("restartPolicy") == "Always" else ContainerKind.INIT
    )


def _containers(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    where: str,
    spec_list: str,
    status_list: str,
    forced_runtime: Runtime | None,
) -> list[ContainerInfo]:
    """One spec list (`containers`, `initContainers`, `ephemeralContainers`) joined with its
    status list by container name."""
    statuses = {
        str(s.get("name")): s for s in _objects(status.get(status_list), f"{where}: {status_list}")
    }
    containers = []
    for c in _objects(spec.get(spec_list), f"{where}: {spec_list}"):
        cname = str(c.get("name", ""))
        cstatus = statuses.get(cname) or {}
        raw_id = cstatus.get("containerID") or ""
        container_id: str | None = None
        runtime: Runtime | None = None
        if raw_id:
            try:
                runtime, container_id = parse_container_id(str(raw_id))
            except ValueError as exc:
                raise PodParseError(f"{where} container {cname}: {exc}") from None
            if forced_runtime is not None:
                runtime = forced_runtime
        state = _mapping(cstatus.get("state"), f"{where} container {cname}: state")
        containers.append(
            ContainerInfo(
                name=cname,
                image=str(c.get("image", "")),
                container_id=container_id,
                runtime=runtime,
                running=state.get("running") is not None,
                kind=_kind(spec_list, c),
            )
        )
    return containers


def _qos_class(reported: object, spec: Mapping[str, Any]) -> QoSClass:
    """The pod's QoS class: status.qosClass, else computed the way kubelet computes it."""
    for qos in QoSClass:
        if reported == qos.value:
            return qos
    containers = _objects(spec.get("containers"), "containers") + _objects(
        spec.get("initContainers"), "initContainers"
    )
    requests_seen = False
    guaranteed = True
    for c in containers:
        res = _mapping(c.get("resources"), "resources")
        req = _mapping(res.get("requests"), "requests")
        lim = _mapping(res.get("limits"), "limits")
        if req or lim:
            requests_seen = True
        for kind in ("cpu", "memory"):
            limit = lim.get(kind)
            if limit is None or req.get(kind, limit) != limit:
                guaranteed = False
    if not requests_seen:
        return QoSClass.BESTEFFORT
    return QoSClass.GUARANTEED if guaranteed else QoSClass.BURSTABLE
