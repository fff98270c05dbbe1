"""Parsing of Namespace objects from the API server (the API edge)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import trio

from diskguard.kube.watch import Changed, Relisted, WatchEvent


@attrs.frozen
class NamespaceInfo:
    """The parts of a Namespace diskguard acts on."""

    name: str
    uid: str = ""
    # None when the annotations are not a map of strings (the API server never sends
    # that): the namespace's last good policy stays.
    annotations: Mapping[str, str] | None = attrs.field(factory=dict, hash=False)


NamespaceEvent = Relisted[NamespaceInfo] | Changed[NamespaceInfo]


def read_namespace(obj: object) -> NamespaceInfo:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    name = str(meta.get("name", ""))
    annotations = meta.get("annotations") or {}
    valid = isinstance(annotations, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    )
    return NamespaceInfo(name, str(meta.get("uid", "")), dict(annotations) if valid else None)


def namespace_event(event: WatchEvent) -> NamespaceEvent:
    """A raw namespace watch event with each namespace parsed."""
    if isinstance(event, Relisted):
        found = tuple(read_namespace(obj) for obj in event.objects)
        return Relisted(found, event.resource_version, event.resource)
    return Changed(event.kind, read_namespace(event.object), event.resource)


async def parse_namespace_events(
    receive: trio.MemoryReceiveChannel[WatchEvent],
    send: trio.MemorySendChannel[NamespaceEvent],
) -> None:
    """The API edge of the namespace watch: raw events in, parsed events out, in order."""
    async with send:
        async for event in receive:
            await send.send(namespace_event(event))
