"""The fake API server's state: objects, one global resourceVersion, bounded change history.

Thread-safe: the HTTP side (a trio loop) and test code (other threads) call it concurrently,
so every operation runs under one re-entrant lock and is short. Stored objects are never
mutated in place; each write stores a fresh copy, and callers always get copies, so history
entries can be shared freely.

Watches are `Subscription`s: at registration, under the lock, the store queues either the
retained history after the requested resourceVersion or synthetic ADDED events for the current
objects, and then appends every later change of that resource to the queue. The subscriber's
`notify` callback (called outside the lock) wakes whoever drains it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import copy
import datetime
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from diskguard.policy.names import is_dns1123_label, is_dns1123_subdomain

from . import errors
from .errors import ApiError
from .patching import apply_patch
from .resources import CORE_V1, NAMESPACES, Registry, ResourceType
from .selectors import Selection

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

# The alphabet the server uses for generateName suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_IMMUTABLE_META = ("name", "namespace", "uid")
# What an update can never change, whatever the body says (the server copies them over).
_SERVER_OWNED_META = ("creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds")


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class Change:
    """One entry of the history: an object as written at `rv`, and what it was before."""

    rv: int
    resource: str
    type: str
    obj: Obj = attrs.field(repr=False)
    prev: Obj | None = attrs.field(repr=False)


class Subscription:
    """One open watch. Its queue is filled by the store and drained by the watch stream."""

    def __init__(
        self, resource: ResourceType, selection: Selection, notify: Callable[[], None]
    ) -> None:
        self.resource = resource
        self.selection = selection
        self.notify = notify
        self.pending: collections.deque[Change] = collections.deque()
        self.initial_events = 0
        self.dropped = False


def watch_event(change: Change, selection: Selection) -> tuple[str, Obj] | None:
    """What a watcher with `selection` sees for `change`, or None if it sees nothing.

    Like the real server, an object that starts matching is ADDED and one that stops matching
    is DELETED, so a filtered watcher's view stays consistent.
    """
    now = selection.matches(change.obj)
    before = change.prev is not None and selection.matches(change.prev)
    if change.type == ADDED:
        return (ADDED, change.obj) if now else None
    if change.type == DELETED:
        return (DELETED, change.obj) if now else None
    if now and before:
        return (MODIFIED, change.obj)
    if now:
        return (ADDED, change.obj)
    if before:
        return (DELETED, change.obj)
    return None


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class Store:
    def __init__(
        self,
        registry: Registry = CORE_V1,
        *,
        history_limit: int = 10000,
        clock: Callable[[], str] = utc_timestamp,
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        self.registry = registry
        self._history_limit = history_limit
        self._clock = clock
        self._lock = threading.RLock()
        self._rv = 1
        # Every change with rv > horizon is still in the history.
        self._horizon = self._rv
        self._objects: dict[str, dict[Key, Obj]] = {rt.plural: {} for rt in registry}
        self._history: collections.deque[Change] = collections.deque()
        self._subs: set[Subscription] = set()

    # -- reads ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            return copy.deepcopy(self._require(rt, namespace, name))

    def list_objects(
        self,
        rt: ResourceType,
        selection: Selection,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> Obj:
        """A `<Kind>List` as the server returns it, paginated with limit/continue."""
        after: Key | None = None
        with self._lock:
            if continue_token:
                rv, after = _decode_continue(continue_token)
                if rv < self._horizon:
                    raise errors.expired(
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter."
                    )
                objects = self._objects_at(rt, rv)
            elif resource_version not in (None, "", "0"):
                rv = _parse_rv(resource_version)
                if rv > self._rv:
                    raise errors.too_large(rv, self._rv)
                if resource_version_match == "Exact":
                    if rv < self._horizon:
                        raise errors.too_old(rv, self._rv)
                    objects = self._objects_at(rt, rv)
                else:
                    rv, objects = self._rv, self._objects[rt.plural]
            else:
                rv, objects = self._rv, self._objects[rt.plural]
            matching = sorted(
                (k, o)
                for k, o in objects.items()
                if selection.matches(o) and (after is None or k > after)
            )
            page = matching[:limit] if limit else matching
            items = [_list_item(o) for _, o in page]
        meta: Obj = {"resourceVersion": str(rv)}
        if len(page) < len(matching):
            meta["continue"] = _encode_continue(rv, page[-1][0])
            if selection.unfiltered:
                meta["remainingItemCount"] = len(matching) - len(page)
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    # -- writes --------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        ensure_namespace: bool = False,
    ) -> Obj:
        """Create an object. `ensure_namespace` creates a missing namespace first (harness
        convenience); without it a missing namespace is a 404, as on a real server."""
        obj = self._check_body(rt, body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, "", ns):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
                meta["name"] = f"{meta['generateName']}{suffix}"
            else:
                raise errors.invalid(
                    rt.kind, "", "metadata.name: Required value: name or generateName is required"
                )
        _validate_name(rt, meta["name"])
        if rt.namespaced:
            _validate_name(NAMESPACES, meta["namespace"])
        for server_owned in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_owned, None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = self._clock()
        if rt.default is not None:
            rt.default(obj)
        key = key_of(obj)
        notify: list[Subscription] = []
        with self._lock:
            if (
                rt.namespaced
                and (NAMESPACES.plural in self._objects)
                and (("", key[0]) not in self._objects[NAMESPACES.plural])
            ):
                if not ensure_namespace:
                    raise errors.not_found(NAMESPACES.plural, key[0])
                ns_obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": key[0]}}
                notify += self._insert(NAMESPACES, self._prepare_new(NAMESPACES, ns_obj))
            if key in self._objects[rt.plural]:
                raise errors.already_exists(rt.plural, key[1])
            notify += self._insert(rt, obj)
            result = copy.deepcopy(obj)
        _wake(notify)
        return result

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        """PUT: replace the object (or only its status), honouring a resourceVersion."""
        new = self._check_body(rt, body)
        meta = new.setdefault("metadata", {})
        if meta.get("name") not in (None, "", name):
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        with self._lock:
            old = self._require(rt, namespace, name)
            _check_preconditions(rt, old, meta.get("resourceVersion"), meta.get("uid"))
            meta.setdefault("namespace", old["metadata"].get("namespace"))
            return self._update(rt, old, new, subresource)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        with self._lock:
            old = self._require(rt, namespace, name)
            new = apply_patch(content_type, old, patch)
            meta = new.get("metadata")
            if not isinstance(meta, dict):
                raise errors.invalid(rt.kind, name, "metadata: Required value")
            _check_preconditions(rt, old, meta.get("resourceVersion"), None)
            return self._update(rt, old, new, subresource)

    def mutate(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        fn: Callable[[Obj], None],
    ) -> Obj:
        """Harness update: `fn` edits a copy of the whole object (spec and status alike)."""
        with self._lock:
            old = self._require(rt, namespace, name)
            new = copy.deepcopy(old)
            fn(new)
            return self._update(rt, old, new, subresource="*")

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        preconditions: Mapping[str, Any] | None = None,
    ) -> Obj:
        """Delete at once (no graceful termination); deleting a namespace deletes its objects."""
        pre = preconditions or {}
        notify: list[Subscription] = []
        with self._lock:
            old = self._require(rt, namespace, name)
            _check_preconditions(rt, old, pre.get("resourceVersion"), pre.get("uid"))
            if rt.plural == NAMESPACES.plural:
                for other in self.registry:
                    if not other.namespaced:
                        continue
                    doomed = [
                        o for k, o in sorted(self._objects[other.plural].items()) if k[0] == name
                    ]
                    for obj in doomed:
                        notify += self._commit(other, DELETED, copy.deepcopy(obj), obj)
            final = copy.deepcopy(old)
            notify += self._commit(rt, DELETED, final, old)
            result = copy.deepcopy(final)
        _wake(notify)
        return result

    # -- history and watches -------------------------------------------------------------

    def watch(
        self,
        rt: ResourceType,
        selection: Selection,
        resource_version: str | None,
        notify: Callable[[], None],
    ) -> Subscription:
        """Register a watch; raises ApiError 410 if `resource_version` is compacted away."""
        sub = Subscription(rt, selection, notify)
        with self._lock:
            if resource_version in (None, "", "0"):
                for _, obj in sorted(self._objects[rt.plural].items()):
                    rv = int(obj["metadata"]["resourceVersion"])
                    sub.pending.append(Change(rv, rt.plural, ADDED, obj, None))
                sub.initial_events = len(sub.pending)
            else:
                rv = _parse_rv(resource_version)
                if rv < self._horizon:
                    raise errors.too_old(rv, self._rv)
                if rv > self._rv:
                    raise errors.too_large(rv, self._rv)
                sub.pending.extend(
                    c for c in self._history if c.rv > rv and c.resource == rt.plural
                )
            self._subs.add(sub)
        return sub

    def take(self, sub: Subscription) -> tuple[list[Change], bool]:
        """Drain a subscription: the queued changes, and whether the watch was dropped."""
        with self._lock:
            changes = list(sub.pending)
            sub.pending.clear()
            return changes, sub.dropped

    def bookmark_rv(self, sub: Subscription) -> int | None:
        """The resourceVersion a bookmark may carry now, or None while changes are queued
        (a bookmark must never claim progress past what the watcher was sent)."""
        with self._lock:
            return None if sub.pending else self._rv

    def unwatch(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def open_watches(self) -> int:
        with self._lock:
            return len(self._subs)

    def drop_watches(self) -> int:
        with self._lock:
            subs = list(self._subs)
            for sub in subs:
                sub.dropped = True
        _wake(subs)
        return len(subs)

    def compact(self) -> int:
        """Forget all history: any resourceVersion older than the current one is now 410."""
        with self._lock:
            self._history.clear()
            self._horizon = self._rv
            return self._rv

    # -- internals (call with the lock held) ---------------------------------------------

    def _require(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        key = ((namespace or "") if rt.namespaced else "", name)
        try:
            return self._objects[rt.plural][key]
        except KeyError:
            raise errors.not_found(rt.plural, name) from None

    def _check_body(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of a {rt.kind} must be a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("kind") not in (None, "", rt.kind):
            raise errors.bad_request(
                f"the kind of the object ({obj['kind']}) does not match the resource ({rt.plural})"
            )
        if obj.get("apiVersion") not in (None, "", rt.api_version):
            raise errors.bad_request(f"unsupported apiVersion {obj['apiVersion']!r}")
        obj["kind"] = rt.kind
        obj["apiVersion"] = rt.api_version
        return obj

    def _prepare_new(self, rt: ResourceType, obj: Obj) -> Obj:
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        obj["metadata"]["creationTimestamp"] = self._clock()
        if rt.default is not None:
            rt.default(obj)
        return obj

    def _insert(self, rt: ResourceType, obj: Obj) -> list[Subscription]:
        return self._commit(rt, ADDED, obj, None)

    def _update(self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        new_meta = new.get("metadata")
        if not isinstance(new_meta, dict):
            raise errors.invalid(rt.kind, old["metadata"]["name"], "metadata: Required value")
        old_meta = old["metadata"]
        if subresource != "*":  # the harness may set anything, e.g. a deletionTimestamp
            for field in _SERVER_OWNED_META:
                if field in old_meta:
                    new_meta[field] = old_meta[field]
                else:
                    new_meta.pop(field, None)
            if not new_meta.get("uid"):
                new_meta["uid"] = old_meta["uid"]
        for field in _IMMUTABLE_META:
            if new_meta.get(field) != old_meta.get(field):
                raise errors.invalid(
                    rt.kind,
                    old["metadata"]["name"],
                    f"metadata.{field}: Invalid value: {new_meta.get(field)!r}: field is immutable",
                )
        new["kind"], new["apiVersion"] = rt.kind, rt.api_version
        if rt.has_status and subresource == "status":
            # Writes to /status change only the status.
            status = new.get("status")
            new = copy.deepcopy(old)
            new["status"] = status
        elif rt.has_status and subresource is None:
            # Writes to the main resource leave the status alone.
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if _strip_rv(new) == _strip_rv(old):
            # Like the real server, a no-op write bumps nothing and notifies nobody.
            return copy.deepcopy(old)
        notify = self._commit(rt, MODIFIED, new, old)
        result = copy.deepcopy(new)
        _wake(notify)
        return result

    def _commit(
        self, rt: ResourceType, kind: str, obj: Obj, prev: Obj | None
    ) -> list[Subscription]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = key_of(obj)
        if kind == DELETED:
            del self._objects[rt.plural][key]
        else:
            self._objects[rt.plural][key] = obj
        change = Change(self._rv, rt.plural, kind, obj, prev)
        self._history.append(change)
        while len(self._history) > self._history_limit:
            self._horizon = self._history.popleft().rv
        woken = []
        for sub in self._subs:
            if sub.resource.plural == rt.plural:
                sub.pending.append(change)
                woken.append(sub)
        return woken

    def _objects_at(self, rt: ResourceType, rv: int) -> dict[Key, Obj]:
        """The objects of `rt` as they were at `rv`, rebuilt by undoing later history."""
        objects = dict(self._objects[rt.plural])
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.resource != rt.plural:
                continue
            key = key_of(change.obj)
            if change.prev is None:
                objects.pop(key, None)
            else:
                objects[key] = change.prev
        return objects


def _wake(subs: Iterable[Subscription]) -> None:
    for sub in subs:
        sub.notify()


def _strip_rv(obj: Obj) -> Obj:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def _list_item(obj: Obj) -> Obj:
    # The real server leaves kind/apiVersion off list items; clients must not rely on them.
    return {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _check_preconditions(rt: ResourceType, old: Obj, rv: Any, uid: Any) -> None:
    name = old["metadata"]["name"]
    if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
        raise errors.conflict(rt.plural, name)
    if uid not in (None, "") and uid != old["metadata"].get("uid"):
        raise errors.conflict(
            rt.plural,
            name,
            f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
            f"{old['metadata'].get('uid')}",
        )


def _validate_name(rt: ResourceType, name: Any) -> None:
    if rt.namespaced:
        ok = isinstance(name, str) and is_dns1123_subdomain(name)
        rule = "a lowercase RFC 1123 subdomain"
    else:
        ok = isinstance(name, str) and is_dns1123_label(name)
        rule = "a lowercase RFC 1123 label"
    if not ok:
        raise errors.invalid(
            rt.kind, str(name), f"metadata.name: Invalid value: {name!r}: must be {rule}"
        )


def _parse_rv(text: str | None) -> int:
    try:
        rv = int(text or "")
    except ValueError:
        raise errors.bad_request(f"invalid resource version: {text!r}") from None
    if rv < 0:
        raise errors.bad_request(f"invalid resource version: {text!r}")
    return rv


def _encode_continue(rv: int, after: Key) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(after)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, Key]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        rv, start = raw["rv"], raw["start"]
        if raw.get("v") != "meta.k8s.io/v1" or not isinstance(rv, int) or rv < 0:
            raise ValueError("bad version or rv")
        namespace, name = start
        if not isinstance(namespace, str) or not isinstance(name, str):
            raise ValueError("bad start key")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from None
    return rv, (namespace, name)


__all__ = ["ADDED", "DELETED", "MODIFIED", "ApiError", "Change", "Store", "Subscription"]
