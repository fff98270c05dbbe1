"""Which RBAC permission an API request needs, and which a ClusterRole grants.

`permission_for` follows the API server's own request-info rules (apiserver's
RequestInfoFactory): the path names the API group, resource and subresource; the HTTP
method, whether a name is given and the `watch` query give the verb. Paths outside
/api/<v>/… and /apis/<g>/<v>/… are non-resource URLs, whose verb is the HTTP method.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

# /api/v1/namespaces/<name>/<these> are subresources of the namespace, not resources in it.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@attrs.frozen(order=True)
class Permission:
    api_group: str  # "" is the core group
    resource: str  # plural; "pods/status" for a subresource
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.api_group}" if self.api_group else "")


@attrs.frozen(order=True)
class NonResourcePermission:
    """A URL outside the resource API (/version, discovery): RBAC's nonResourceURLs, which
    match the path exactly as requested (a trailing slash counts)."""

    url: str
    verb: str  # the lower-case HTTP method

    def __str__(self) -> str:
        return f"{self.verb} {self.url}"


AnyPermission = Permission | NonResourcePermission


class NotAResourceRequest(ValueError):
    """A path the API server would not serve as a resource request."""


def permission_for(method: str, path: str, query: Mapping[str, str]) -> AnyPermission:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return NonResourcePermission(path, method.lower())

    watch_path = rest[0] == "watch"  # the deprecated /watch/ path prefix
    if watch_path:
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        rest = rest[2:]  # namespaces/<ns>/<resource>...: the namespace is not the resource
    if not rest or len(rest) > 3:
        raise NotAResourceRequest(f"{method} {path}: cannot tell the resource")
    resource = rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"
    named = len(rest) >= 2

    watch_query = query.get("watch", "").lower() not in ("", "0", "false")
    method = method.upper()
    if method in ("GET", "HEAD"):
        verb = "watch" if watch_path or watch_query else "get" if named else "list"
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        raise NotAResourceRequest(f"{method} {path}: no RBAC verb for this method")
    return Permission(group, resource, verb)


def permissions_used(requests: Iterable[Any]) -> set[AnyPermission]:
    """The permissions a sequence of recorded requests (method, path, query) needed."""
    return {permission_for(r.method, r.path, r.query) for r in requests}


def permissions_granted(cluster_role: Mapping[str, Any]) -> set[AnyPermission]:
    """Every (group, resource, verb) and (URL, verb) the role's rules grant.

    Wildcards (also `/path*` URL prefixes) and resourceNames restrictions are refused: none
    is needed today, and each would make the comparison with the requests meaningless."""
    granted: set[AnyPermission] = set()
    for rule in cluster_role.get("rules") or []:
        verbs = rule.get("verbs") or []
        urls = rule.get("nonResourceURLs") or []
        groups, resources = rule.get("apiGroups") or [], rule.get("resources") or []
        if rule.get("resourceNames") or (urls and (groups or resources)):
            raise ValueError(f"rule {rule} is not a plain resource or non-resource rule")
        if any("*" in item for item in itertools.chain(groups, resources, verbs, urls)):
            raise ValueError(f"rule {rule} uses a wildcard: grant the exact verbs instead")
        for url, verb in itertools.product(urls, verbs):
            granted.add(NonResourcePermission(url, verb))
        for group, resource, verb in itertools.product(groups, resources, verbs):
            granted.add(Permission(group, resource, verb))
    return granted


def compare(used: set[AnyPermission], granted: set[AnyPermission]) -> str:
    """'' when they are equal, else what is missing from and extra in the role."""
    missing, extra = sorted(map(str, used - granted)), sorted(map(str, granted - used))
    problems = []
    if missing:
        problems.append("the code uses, the ClusterRole lacks: " + ", ".join(missing))
    if extra:
        problems.append(
            "the ClusterRole grants, the code never uses: " + ", ".join(extra)
        )
    return "; ".join(problems)
