"""Field and label selectors, parsed once into predicates over object dicts.

Grammar follows `k8s.io/apimachinery`: field selectors are comma-separated `f=v`, `f==v`,
`f!=v` terms over a per-resource set of supported fields; label selectors additionally allow
`k`, `!k`, `k in (a,b)` and `k notin (a,b)`. Every term must hold (comma is AND).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import ApiError, bad_request

Obj = Mapping[str, Any]
FieldGetter = Callable[[Obj], str]

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


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
class LabelTerm:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects without the label, like the real server.
        return not present or value not in self.values


@attrs.frozen
class LabelSelector:
    terms: tuple[LabelTerm, ...]

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(term.matches(labels) for term in self.terms)


_SET_TERM = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")


def parse_label_selector(text: str) -> LabelSelector:
    terms: list[LabelTerm] = []
    for raw in _split_terms(text):
        terms.append(_parse_label_term(raw, text))
    return LabelSelector(tuple(terms))


def _parse_label_term(raw: str, whole: str) -> LabelTerm:
    def fail(why: str) -> ApiError:
        return bad_request(
            f'unable to parse requirement: "{raw}" in label selector "{whole}": {why}'
        )

    def key_ok(key: str) -> str:
        if not _LABEL_KEY.match(key):
            raise fail(f"invalid label key {key!r}")
        return key

    def value_ok(value: str) -> str:
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise fail(f"invalid label value {value!r}")
        return value

    m = _SET_TERM.match(raw)
    if m:
        values = [v.strip() for v in m["values"].split(",")]
        return LabelTerm(key_ok(m["key"]), m["op"], frozenset(value_ok(v) for v in values))
    for op, name in (("!=", "!="), ("==", "="), ("=", "=")):
        if op in raw:
            key, _, value = raw.partition(op)
            return LabelTerm(key_ok(key.strip()), name, frozenset({value_ok(value.strip())}))
    if raw.startswith("!"):
        return LabelTerm(key_ok(raw[1:].strip()), "!")
    return LabelTerm(key_ok(raw), "exists")


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
