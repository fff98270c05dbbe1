"""Per-namespace IO policy from Namespace annotations (defaults and ceilings).

Namespaces are normally editable only by administrators, so their annotations carry policy:
`<prefix>/default-read-iops`… replace the env defaults for the namespace's pods and
`<prefix>/max-read-iops`… tighten the env ceilings. The store keeps the last good value of
each key, warns once per bad value with an Event on the Namespace, and says which
namespaces' effective policy changed so their pods can be re-reconciled. A percentage is
good only while every data disk's capacity is known: a change of capacity judges every
namespace's keys again.
"""

from __future__ import annotations

from collections.abc import Callable

from diskguard.kube.events import EventRequest, EventType, InvolvedKind
from diskguard.kube.namespaces import NamespaceEvent, NamespaceInfo
from diskguard.kube.watch import Changed, ChangeKind, Relisted
from diskguard.logs import get_logger
from diskguard.policy.resolve import KeyMemory, NamespacePolicy, namespace_policy
from diskguard.policy.shares import NO_DISKS, Capacities
from diskguard.policy.values import shown

log = get_logger(__name__)


class NamespacePolicies:
    def __init__(self, prefix: str, emit: Callable[[EventRequest], None]) -> None:
        self._prefix = prefix
        self._emit = emit
        self.policies: dict[str, NamespacePolicy] = {}
        self._memory: dict[str, tuple[KeyMemory, KeyMemory]] = {}
        self._warned: dict[str, frozenset[tuple[str, str]]] = {}
        # Each namespace as last seen, to judge its keys again when the capacity changes.
        self._seen: dict[str, NamespaceInfo] = {}
        self._capacity: Capacities = NO_DISKS
        self.listed = False

    def get(self, namespace: str) -> NamespacePolicy | None:
        return self.policies.get(namespace)

    def set_capacity(self, capacity: Capacities) -> set[str]:
        """The data disks' capacity changed: percentages are judged against the new one.
        Returns the namespaces whose policy changed."""
        self._capacity = capacity
        changed: set[str] = set()
        for ns in list(self._seen.values()):
            try:
                self._upsert(ns, changed)
            except Exception:  # one namespace's surprise must not cost the others
                log.exception("judging a namespace's policy failed", namespace=ns.name[:253])
        return changed

    def on_event(self, event: NamespaceEvent) -> set[str]:
        """Apply one namespaces watch event; return the namespaces whose policy changed."""
        changed: set[str] = set()
        if isinstance(event, Relisted):
            self.listed = True
            seen = set()
            for ns in event.objects:
                seen.add(self._upsert(ns, changed))
            for name in set(self.policies) - seen:
                self._forget(name)
                changed.add(name)
        elif isinstance(event, Changed):
            if event.kind is ChangeKind.DELETED:
                name = event.object.name
                self._forget(name)
                changed.add(name)
            else:
                self._upsert(event.object, changed)
        return changed

    def _upsert(self, ns: NamespaceInfo, changed: set[str]) -> str:
        name, annotations = ns.name, ns.annotations
        if annotations is None:
            # Malformed (the API server never sends this): keep the last good policy.
            log.warning(
                "namespace annotations are not strings; update ignored", namespace=name[:253]
            )
            return name
        policy = namespace_policy(
            name, annotations, self._prefix, self._memory.get(name), self._capacity
        )
        self._seen[name] = ns
        self._memory[name] = policy.memory
        if self.policies.get(name) != policy:
            changed.add(name)
        self.policies[name] = policy
        self._warn_invalid(policy, ns.uid)
        return name

    def _forget(self, name: str) -> None:
        for table in (self.policies, self._memory, self._warned, self._seen):
            table.pop(name, None)

    def _warn_invalid(self, policy: NamespacePolicy, uid: str) -> None:
        invalid = [
            *policy.defaults.parsed.invalid.values(),
            *policy.maxima.parsed.invalid.values(),
        ]
        bad = frozenset((b.key, b.value) for b in invalid)
        already = self._warned.get(policy.name, frozenset())
        for b in invalid:
            if (b.key, b.value) in already:
                continue
            self._emit(
                EventRequest(
                    kind=InvolvedKind.NAMESPACE,
                    namespace="",
                    name=policy.name,
                    uid=uid[:64],
                    reason="InvalidIOPolicy",
                    message=(
                        f"annotation {b.key}={shown(b.value)} ignored: {b.reason}; the last good "
                        "value of this key stays in force (none, if diskguard has not seen one)"
                    ),
                    type=EventType.WARNING,
                )
            )
        self._warned[policy.name] = bad
