"""Field and label selectors, parsed once into predicates over object dicts.

Grammar follows `k8s.io/apimachinery`: field selectors are comma-separated `f=v`, `f==v`,
`f!=v` terms over a per-resource set of supported fields (every term must hold); label
selectors are the agent's own parser (`diskguard.policy.labels`, a port of apimachinery's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from diskguard.policy.labels import Selector, SelectorError, parse_selector

from .errors import bad_request

Obj = Mapping[str, Any]
FieldGetter = Callable[[Obj], str]


@attrs.frozen
class FieldTerm:
    field: str
    value: str
    negate: bool


@attrs.frozen
class FieldSelector:
    terms: tuple[FieldTerm, ...]
    getters: Mapping[str, FieldGetter] = attrs.field(eq=False, repr=False)

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: Obj) -> bool:
        for term in self.terms:
            if (self.getters[term.field](obj) == term.value) == term.negate:
                return False
        return True


def parse_field_selector(text: str, getters: Mapping[str, FieldGetter]) -> FieldSelector:
    terms: list[FieldTerm] = []
    for raw in _split_terms(text):
        for op in ("!=", "==", "="):
            if op in raw:
                field, _, value = raw.partition(op)
                break
        else:
            raise bad_request(f'invalid field selector: "{text}": no operator in "{raw}"')
        field = field.strip()
        if field not in getters:
            raise bad_request(f"field label not supported: {field}")
        terms.append(FieldTerm(field, value.strip(), op == "!="))
    return FieldSelector(tuple(terms), getters)


@attrs.frozen
class LabelSelector:
    """A label selector, parsed by the agent's own parser (diskguard.policy.labels): the fake
    and the product accept and match exactly the same selectors, as apimachinery does."""

    selector: Selector

    @property
    def empty(self) -> bool:
        return self.selector.is_empty()

    def matches(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return self.selector.matches(labels)


def parse_label_selector(text: str) -> LabelSelector:
    try:
        return LabelSelector(parse_selector(text))
    except SelectorError as exc:
        raise bad_request(f'unable to parse requirement: label selector "{text}": {exc}') from None


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses; drop empty terms."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise bad_request(f'invalid selector "{text}": unbalanced parentheses')
        if ch == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise bad_request(f'invalid selector "{text}": unbalanced parentheses')
    terms.append("".join(current).strip())
    return [t for t in terms if t]


@attrs.frozen
class Selection:
    """Which objects a list or watch is about: a namespace (or all) plus both selectors."""

    namespace: str | None
    fields: FieldSelector
    labels: LabelSelector

    @property
    def unfiltered(self) -> bool:
        return self.fields.empty and self.labels.empty

    def matches(self, obj: Obj) -> bool:
        namespace = (obj.get("metadata") or {}).get("namespace", "")
        if self.namespace is not None and namespace != self.namespace:
            return False
        return self.fields.matches(obj) and self.labels.matches(obj)
