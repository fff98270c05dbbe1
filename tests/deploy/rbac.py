"""Which RBAC permission an API request needs, and which a ClusterRole grants.

`permission_for` follows the API server's own request-info rules (apiserver's
RequestInfoFactory, implemented in diskguard.testing.fakeapi.authz): the path names the API
group, resource and subresource; the HTTP method, whether a name is given and the `watch`
query give the verb. Paths outside /api/<v>/… and /apis/<g>/<v>/… are non-resource URLs,
whose verb is the HTTP method.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from diskguard.testing.fakeapi.authz import NonResourceAttributes, request_attributes

# What permission_for raises, for the tests.
from diskguard.testing.fakeapi.authz import NotAResourceRequest as NotAResourceRequest


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


def permission_for(method: str, path: str, query: Mapping[str, str]) -> AnyPermission:
    """The permission the API server checks for this request (the fake API server's
    request-info rules, which also authorize its requests)."""
    attributes = request_attributes(method, path, query)
    if isinstance(attributes, NonResourceAttributes):
        return NonResourcePermission(attributes.path, attributes.verb)
    return Permission(attributes.group, attributes.full_resource, attributes.verb)


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
        problems.append("the ClusterRole grants, the code never uses: " + ", ".join(extra))
    return "; ".join(problems)
