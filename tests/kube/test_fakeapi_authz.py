"""The fake API server authorizes like RBAC: configurable rules decide every request (403
Forbidden otherwise) and every SelfSubjectAccessReview, over real HTTP with the real client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from diskguard.kube.access import BASE_ACCESS, SMART_LIMIT_ACCESS, Access, denied_access
from diskguard.testing.fakeapi import FakeAPIServer, make_pod
from diskguard.testing.fakeapi.authz import (
    NonResourceAttributes,
    ResourceAttributes,
    Rule,
    request_attributes,
)

# The client as these tests drive the fake: dict bodies, `_preload_content=False` streams,
# fields read without None checks (a None fails the test anyway). Its annotations describe
# typed models with every field Optional, so the tests hold the client as Any.
Client = Any


def error_body(err: ApiException) -> Any:
    """The Status object the server sent with an error (a missing body fails the test)."""
    assert err.body is not None
    return json.loads(err.body)


R, N = ResourceAttributes, NonResourceAttributes
READ_PODS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    with FakeAPIServer() as server:
        server.create("pods", make_pod("web-0", node="node-1", namespace="shop"))
        yield server


@pytest.fixture
def core(api: FakeAPIServer) -> Iterator[Client]:
    configuration = client.Configuration()
    configuration.host = api.url
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


@pytest.mark.parametrize(
    ("method", "path", "query", "want"),
    [
        ("GET", "/api/v1/pods", {}, R("list", "", "pods")),
        ("GET", "/api/v1/namespaces/shop/pods/p", {}, R("get", "", "pods", "", "shop", "p")),
        ("PATCH", "/api/v1/namespaces/shop/pods/p/status", {},
         R("patch", "", "pods", "status", "shop", "p")),
        ("GET", "/api/v1/watch/namespaces/shop/pods", {}, R("watch", "", "pods", "", "shop")),
        ("GET", "/api/v1/namespaces/shop", {}, R("get", "", "namespaces", "", "shop", "shop")),
        ("GET", "/version/", {}, N("get", "/version/")),
    ],
)  # fmt: skip
def test_request_attributes(method: str, path: str, query: dict[str, str], want: Any) -> None:
    assert request_attributes(method, path, query) == want


@pytest.mark.parametrize(
    ("rule", "attributes", "allowed"),
    [
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
         R("get", "", "pods", "", "shop", "p"), True),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
         R("get", "", "pods", "status", "shop", "p"), False),  # subresource
        ({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]},
         R("get", "", "pods", "status", "shop", "p"), True),
        ({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
         R("get", "", "pods", "status", "shop", "p"), True),
        ({"apiGroups": ["apps"], "resources": ["pods"], "verbs": ["get"]},
         R("get", "", "pods"), False),  # another group
        ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
         R("delete", "", "pods", "", "shop", "p"), True),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["p"]},
         R("get", "", "pods", "", "shop", "p"), True),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"], "resourceNames": ["p"]},
         R("list", "", "pods", "", "shop"), False),  # names need a name
        ({"nonResourceURLs": ["/version/"], "verbs": ["get"]}, N("get", "/version/"), True),
        ({"nonResourceURLs": ["/version"], "verbs": ["get"]}, N("get", "/version/"), False),
        ({"nonResourceURLs": ["/healthz*"], "verbs": ["get"]}, N("get", "/healthz/etcd"), True),
    ],
)  # fmt: skip
def test_rules_match_like_rbac(rule: dict[str, Any], attributes: Any, allowed: bool) -> None:
    assert Rule.from_json(rule).allows(attributes) is allowed


def test_everything_is_allowed_until_rules_are_granted(core: Client) -> None:
    assert core.list_pod_for_all_namespaces().items
    assert core.read_namespaced_pod("web-0", "shop").metadata.name == "web-0"


def test_requests_outside_the_grants_get_the_real_403(api: FakeAPIServer, core: Client) -> None:
    api.grant(READ_PODS, user="system:serviceaccount:diskguard-system:diskguard")
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces().items] == ["web-0"]
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod("web-0", "shop", {"metadata": {"annotations": {"a": "b"}}})
    assert info.value.status == 403
    assert error_body(info.value)["message"] == (
        'pods "web-0" is forbidden: User "system:serviceaccount:diskguard-system:diskguard" '
        'cannot patch resource "pods" in API group "" in the namespace "shop"'
    )
    assert "a" not in (api.get("pods", "shop", "web-0")["metadata"].get("annotations") or {})
    reply = httpx.get(f"{api.url}/version/")
    assert reply.status_code == 403
    assert reply.json()["message"].endswith('cannot get path "/version/"')
    api.grant(None)
    assert httpx.get(f"{api.url}/version/").status_code == 200


def test_access_reviews_are_answered_from_the_grants(api: FakeAPIServer, core: Client) -> None:
    api.grant(
        [
            *READ_PODS,
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews"],
             "verbs": ["create"]},
        ]
    )  # fmt: skip
    everything = (*BASE_ACCESS, *SMART_LIMIT_ACCESS)
    assert denied_access(core.api_client, everything) == [
        Access("create", "events"),
        Access("list", "namespaces"),
        Access("watch", "namespaces"),
        Access("get", "pods"),
        Access("patch", "pods"),
    ]
    api.grant(
        [
            *READ_PODS,
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews"],
             "verbs": ["create"]},
        ]
    )  # fmt: skip
    assert denied_access(core.api_client, everything) == []


def test_an_access_review_without_attributes_is_invalid(api: FakeAPIServer) -> None:
    url = f"{api.url}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview"}
    reply = httpx.post(url, json={**body, "spec": {}})
    assert reply.status_code == 422 and "exactly one of" in reply.json()["message"]
    reply = httpx.post(
        url, json={**body, "spec": {"nonResourceAttributes": {"path": "/version", "verb": "get"}}}
    )
    assert reply.status_code == 201 and reply.json()["status"]["allowed"] is True


def test_grants_can_be_set_over_http(api: FakeAPIServer) -> None:
    reply = httpx.put(f"{api.url}/_fake/grants", json={"rules": READ_PODS})
    assert reply.status_code == 200 and reply.json()["rules"][0]["verbs"] == ["list", "watch"]
    assert httpx.get(f"{api.url}/api/v1/namespaces").status_code == 403
    assert httpx.put(f"{api.url}/_fake/grants", json={"rules": None}).json()["rules"] is None
    assert httpx.get(f"{api.url}/api/v1/namespaces").status_code == 200
    bad = httpx.put(f"{api.url}/_fake/grants", json={"rules": [{"verb": ["get"]}]})
    assert bad.status_code == 400
