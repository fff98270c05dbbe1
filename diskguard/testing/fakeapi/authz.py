"""Authorization as the API server's RBAC authorizer does it, for one user with given rules.

`request_attributes` follows the API server's request-info rules (apiserver's
RequestInfoFactory): the path names the API group, resource, subresource, namespace and
name; the HTTP method, whether a name is given and the `watch` query give the verb. Paths
outside /api/<v>/... and /apis/<g>/<v>/... are non-resource URLs, whose verb is the
lower-case HTTP method. `Grants` decides like RBAC's RuleAllows: a rule matches when its
verbs, API groups, resources (with `*`, `<resource>/*` and `*/<subresource>`) and
resourceNames match, or for a non-resource URL when a nonResourceURL equals the path or is
a `<prefix>*` of it. The fake authenticates nobody: the rules stand for everything bound to
the one user it serves (the default discovery roles are not added).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

# /api/v1/namespaces/<name>/<these> are subresources of the namespace, not resources in it.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})

DEFAULT_USER = "system:serviceaccount:default:fake-api-user"


class NotAResourceRequest(ValueError):
    """A path the API server would not serve as a resource request."""


@attrs.frozen
class ResourceAttributes:
    verb: str
    group: str  # "" is the core group
    resource: str  # plural, without the subresource
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@attrs.frozen
class NonResourceAttributes:
    verb: str
    path: str


Attributes = ResourceAttributes | NonResourceAttributes


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return NonResourceAttributes(method.lower(), path)

    watch_path = rest[0] == "watch"  # the deprecated /watch/ path prefix
    if watch_path:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]  # namespaces/<ns>/<resource>...
    if not rest or len(rest) > 3:
        raise NotAResourceRequest(f"{method} {path}: cannot tell the resource")
    resource, name = rest[0], rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) == 3 else ""
    if resource == "namespaces" and name:
        namespace = name  # a namespace is in itself, for RBAC

    watch_query = query.get("watch", "").lower() not in ("", "0", "false")
    method = method.upper()
    if method in ("GET", "HEAD"):
        verb = "watch" if watch_path or watch_query else "get" if name else "list"
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        raise NotAResourceRequest(f"{method} {path}: no RBAC verb for this method")
    return ResourceAttributes(verb, group, resource, subresource, namespace, name)


def _strings(rule: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = rule.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"rule field {key} must be a list of strings, got {value!r}")
    return tuple(value)


@attrs.frozen
class Rule:
    """One RBAC PolicyRule."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, rule: Mapping[str, Any]) -> Rule:
        unknown = set(rule) - {
            "verbs",
            "apiGroups",
            "resources",
            "resourceNames",
            "nonResourceURLs",
        }
        if unknown:
            raise ValueError(f"unknown PolicyRule fields {sorted(unknown)}")
        return cls(
            verbs=_strings(rule, "verbs"),
            api_groups=_strings(rule, "apiGroups"),
            resources=_strings(rule, "resources"),
            resource_names=_strings(rule, "resourceNames"),
            non_resource_urls=_strings(rule, "nonResourceURLs"),
        )

    def allows(self, attributes: Attributes) -> bool:
        if not ("*" in self.verbs or attributes.verb in self.verbs):
            return False
        if isinstance(attributes, NonResourceAttributes):
            return any(
                url == "*"
                or url == attributes.path
                or (url.endswith("*") and attributes.path.startswith(url[:-1]))
                for url in self.non_resource_urls
            )
        if not ("*" in self.api_groups or attributes.group in self.api_groups):
            return False
        if not self._resource_matches(attributes):
            return False
        return not self.resource_names or attributes.name in self.resource_names

    def _resource_matches(self, attributes: ResourceAttributes) -> bool:
        combined = attributes.full_resource
        for resource in self.resources:
            if resource in ("*", combined):
                return True
            if attributes.subresource and resource in (
                f"{attributes.resource}/*",
                f"*/{attributes.subresource}",
            ):
                return True
        return False


@attrs.frozen
class Grants:
    """The rules granted to the fake's one user; `Grants.everything()` allows any request."""

    rules: tuple[Rule, ...] | None  # None: no authorization at all
    user: str = DEFAULT_USER

    @classmethod
    def everything(cls) -> Grants:
        return cls(None)

    @classmethod
    def from_rules(cls, rules: Iterable[Mapping[str, Any]], user: str = DEFAULT_USER) -> Grants:
        return cls(tuple(Rule.from_json(r) for r in rules), user)

    def allows(self, attributes: Attributes) -> bool:
        return self.rules is None or any(r.allows(attributes) for r in self.rules)

    def forbidden_message(self, attributes: Attributes) -> str:
        """What the real API server says in a 403's Status message."""
        if isinstance(attributes, NonResourceAttributes):
            return (
                f'forbidden: User "{self.user}" cannot {attributes.verb} path "{attributes.path}"'
            )
        what = (
            f'{attributes.resource} "{attributes.name}"' if attributes.name else attributes.resource
        )
        resource = f'resource "{attributes.resource}"'
        if attributes.subresource:
            resource += f' with subresource "{attributes.subresource}"'
        where = (
            f' in the namespace "{attributes.namespace}"'
            if attributes.namespace
            else (" at the cluster scope")
        )
        return (
            f'{what} is forbidden: User "{self.user}" cannot {attributes.verb} {resource} '
            f'in API group "{attributes.group}"{where}'
        )


def review_attributes(spec: Mapping[str, Any]) -> Attributes:
    """The attributes a SelfSubjectAccessReview's spec asks about; ValueError when it does
    not name exactly one of resourceAttributes and nonResourceAttributes (the API server's
    validation error)."""
    resource = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if (resource is None) == (non_resource is None):
        raise ValueError(
            "spec: Invalid value: exactly one of nonResourceAttributes or "
            "resourceAttributes must be specified"
        )
    if non_resource is not None:
        return NonResourceAttributes(
            str(non_resource.get("verb", "")), str(non_resource.get("path", ""))
        )
    assert resource is not None
    return ResourceAttributes(
        verb=str(resource.get("verb", "")),
        group=str(resource.get("group", "")),
        resource=str(resource.get("resource", "")),
        subresource=str(resource.get("subresource", "")),
        namespace=str(resource.get("namespace", "")),
        name=str(resource.get("name", "")),
    )
