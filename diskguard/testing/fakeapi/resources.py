"""The resource types the fake serves, and what the server does to each on create.

Adding a resource is one `ResourceType` entry: its names, scope, which fields a field selector
may use, whether it has a `status` subresource, and an optional defaulting hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import attrs

from .selectors import FieldGetter, Obj

Defaulter = Callable[[MutableMapping[str, Any]], None]


def path_getter(path: str) -> FieldGetter:
    """A field-selector getter for a dotted path; absent fields read as "" like the server."""
    parts = path.split(".")

    def get(obj: Obj) -> str:
        value: Any = obj
        for part in parts:
            if not isinstance(value, Mapping):
                return ""
            value = value.get(part)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return get


def _getters(*paths: str) -> dict[str, FieldGetter]:
    return {p: path_getter(p) for p in ("metadata.name", "metadata.namespace", *paths)}


@attrs.frozen
class ResourceType:
    plural: str
    singular: str
    kind: str
    namespaced: bool
    field_getters: Mapping[str, FieldGetter] = attrs.field(repr=False)
    has_status: bool = False
    short_names: tuple[str, ...] = ()
    default: Defaulter | None = attrs.field(default=None, repr=False)
    api_version: str = "v1"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def verbs(self) -> list[str]:
        return ["create", "delete", "get", "list", "patch", "update", "watch"]


def _pod_qos(spec: Mapping[str, Any]) -> str:
    """The QoS class the API server stamps on a new pod, from its containers' resources."""
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        limits = res.get("limits") or {}
        requests = {**limits, **(res.get("requests") or {})}
        if limits or requests:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in limits or requests.get(r) != limits[r]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _default_pod(obj: MutableMapping[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", _pod_qos(spec))


def _default_namespace(obj: MutableMapping[str, Any]) -> None:
    meta = obj.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    # The server has labelled every namespace with its own name since 1.21.
    labels["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


PODS = ResourceType(
    plural="pods",
    singular="pod",
    kind="Pod",
    namespaced=True,
    field_getters=_getters(
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    has_status=True,
    short_names=("po",),
    default=_default_pod,
)

NAMESPACES = ResourceType(
    plural="namespaces",
    singular="namespace",
    kind="Namespace",
    namespaced=False,
    field_getters=_getters("status.phase"),
    has_status=False,
    short_names=("ns",),
    default=_default_namespace,
)

EVENTS = ResourceType(
    plural="events",
    singular="event",
    kind="Event",
    namespaced=True,
    field_getters=_getters(
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    )
    | {"source": path_getter("source.component")},
    short_names=("ev",),
)


@attrs.frozen
class Registry:
    """Looks resource types up by plural, singular, kind or short name (case-insensitive)."""

    types: tuple[ResourceType, ...]

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self.types)

    def lookup(self, name: str) -> ResourceType:
        wanted = name.lower()
        for rt in self.types:
            if wanted in (rt.plural, rt.singular, rt.kind.lower(), *rt.short_names):
                return rt
        raise KeyError(f"unknown resource {name!r}; known: {[rt.plural for rt in self.types]}")


CORE_V1 = Registry((PODS, NAMESPACES, EVENTS))
