"""Which RBAC permission an API request needs, and which a ClusterRole grants.

`permission_for` follows the API server's own request-info rules (apiserver's
RequestInfoFactory): the path names the API group, resource and subresource; the HTTP
method, whether a name is given and the `watch` query give the verb.
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


class NotAResourceRequest(ValueError):
    """Discovery or another non-resource URL: RBAC's nonResourceURLs, not resources."""


def permission_for(method: str, path: str, query: Mapping[str, str]) -> Permission:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise NotAResourceRequest(f"{method} {path} is not a resource request")

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


def permissions_used(requests: Iterable[Any]) -> set[Permission]:
    """The permissions a sequence of recorded requests (method, path, query) needed."""
    return {permission_for(r.method, r.path, r.query) for r in requests}


def permissions_granted(cluster_role: Mapping[str, Any]) -> set[Permission]:
    """Every (group, resource, verb) the role's rules grant.

    A wildcard, a resourceNames restriction or a nonResourceURLs rule is refused: none is
    needed today, and each would make the comparison with the requests meaningless."""
    granted: set[Permission] = set()
    for rule in cluster_role.get("rules") or []:
        if "nonResourceURLs" in rule or rule.get("resourceNames"):
            raise ValueError(f"rule {rule} is not a plain resource rule")
        groups, resources, verbs = (
            rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        )
        if "*" in itertools.chain(groups, resources, verbs):
            raise ValueError(f"rule {rule} uses a wildcard: grant the exact verbs instead")
        for group, resource, verb in itertools.product(groups, resources, verbs):
            granted.add(Permission(group, resource, verb))
    return granted


def compare(used: set[Permission], granted: set[Permission]) -> str:
    """'' when they are equal, else what is missing from and extra in the role."""
    missing, extra = sorted(used - granted), sorted(granted - used)
    problems = []
    if missing:
        problems.append("the code uses, the ClusterRole lacks: " + ", ".join(map(str, missing)))
    if extra:
        problems.append(
            "the ClusterRole grants, the code never uses: " + ", ".join(map(str, extra))
        )
    return "; ".join(problems)
