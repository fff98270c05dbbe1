"""The ClusterRole grants exactly what the agent and `diskguard doctor` use.

Both run for real against the fake API server, which logs every request; each request
is mapped to the RBAC permission the API server would check, and the set must equal what
deploy/clusterrole.yaml grants: a new API call without its rule fails, and so does a rule
no code needs any more.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
import trio
from agent.conftest import Cluster, P
from agent.test_smart_limit import SMART_ENV, background_fio, wait_annotations

from diskguard.doctor import REQUIRED_ACCESS
from diskguard.model import IOLimits

from .manifests import load_manifests, one
from .rbac import (
    AnyPermission,
    NonResourcePermission,
    NotAResourceRequest,
    Permission,
    compare,
    permission_for,
    permissions_granted,
    permissions_used,
)


def cluster_role() -> dict[str, Any]:
    return one(load_manifests(), "ClusterRole").doc


# -- the mapping itself (no kernel needed) ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "want"),
    [
        ("GET", "/api/v1/pods", {"fieldSelector": "spec.nodeName=n"}, ("", "pods", "list")),
        ("GET", "/api/v1/pods", {"watch": "True"}, ("", "pods", "watch")),
        ("GET", "/api/v1/pods", {"watch": "false"}, ("", "pods", "list")),
        ("GET", "/api/v1/namespaces/ns/pods", {}, ("", "pods", "list")),
        ("GET", "/api/v1/namespaces/ns/pods/p", {}, ("", "pods", "get")),
        ("GET", "/api/v1/watch/namespaces/ns/pods", {}, ("", "pods", "watch")),
        ("PATCH", "/api/v1/namespaces/ns/pods/p", {}, ("", "pods", "patch")),
        ("PUT", "/api/v1/namespaces/ns/pods/p/status", {}, ("", "pods/status", "update")),
        ("DELETE", "/api/v1/namespaces/ns/pods/p", {}, ("", "pods", "delete")),
        ("DELETE", "/api/v1/namespaces/ns/pods", {}, ("", "pods", "deletecollection")),
        ("POST", "/api/v1/namespaces/default/events", {}, ("", "events", "create")),
        ("GET", "/api/v1/namespaces", {}, ("", "namespaces", "list")),
        ("GET", "/api/v1/namespaces", {"watch": "1"}, ("", "namespaces", "watch")),
        ("GET", "/api/v1/namespaces/ns", {}, ("", "namespaces", "get")),
        ("PUT", "/api/v1/namespaces/ns/finalize", {}, ("", "namespaces/finalize", "update")),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {},
            ("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/ns/daemonsets/d",
            {},
            ("apps", "daemonsets", "get"),
        ),
    ],
)
def test_request_maps_to_the_permission_the_api_server_checks(
    method: str, path: str, query: dict[str, str], want: tuple[str, str, str]
) -> None:
    assert permission_for(method, path, query) == Permission(*want)


@pytest.mark.parametrize("path", ["/api", "/apis", "/version", "/version/", "/api/v1"])
def test_other_paths_are_non_resource_urls(path: str) -> None:
    assert permission_for("GET", path, {}) == NonResourcePermission(path, "get")


def test_a_path_too_deep_for_a_resource_is_refused() -> None:
    with pytest.raises(NotAResourceRequest):
        permission_for("GET", "/api/v1/namespaces/ns/pods/p/log/extra", {})


def test_a_new_api_call_or_a_stale_rule_makes_the_comparison_fail() -> None:
    granted = permissions_granted(cluster_role())
    assert compare(set(granted), granted) == ""
    new_call = granted | {Permission("", "pods", "delete")}
    assert "lacks: delete pods" in compare(new_call, granted)
    stale = set(granted)
    removed = stale.pop()
    assert f"never uses: {removed}" in compare(stale, granted)


@pytest.mark.parametrize(
    "rule",
    [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
        {"nonResourceURLs": ["/version*"], "verbs": ["get"]},
    ],
)
def test_wildcards_are_refused(rule: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="wildcard"):
        permissions_granted({"rules": [rule]})


def _doctor_own_permissions() -> set[AnyPermission]:
    """What doctor needs for itself: the version and the access reviews it asks for."""
    return {
        NonResourcePermission("/version/", "get"),
        Permission("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
    }


def test_doctor_checks_exactly_the_agents_permissions() -> None:
    checked: set[AnyPermission] = {
        Permission(group, resource, verb) for verb, resource, group in REQUIRED_ACCESS
    }
    agent = permissions_granted(cluster_role()) - _doctor_own_permissions()
    problems = compare(checked, agent)
    assert not problems, f"doctor's REQUIRED_ACCESS vs the ClusterRole: {problems}"


# -- the real agent --------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.host_only
async def test_cluster_role_grants_exactly_what_the_agent_uses(
    cluster: Cluster, start_agent: Any
) -> None:
    # Everything the agent does against the API today, each at least once:
    annotated = cluster.add_pod("annotated", annotations={f"{P}/write-iops": "100"})
    cluster.add_pod("invalid", annotations={f"{P}/read-iops": "abc"})
    running = await start_agent(**SMART_ENV)
    cg = cluster.cgroup(cluster.refs(annotated)[0])
    await cluster.wait_kernel(cg, IOLimits(riops=500, wiops=100), timeout=5)
    # an edit arrives over the watch, not a relist
    await trio.to_thread.run_sync(
        lambda: cluster.api.wait_for_request(
            lambda r: r.path.endswith("/pods") and r.query.get("watch", "").lower() == "true",
            timeout=10,
        )
    )
    cluster.set_annotations("default", "annotated", {f"{P}/write-iops": "200"})
    await cluster.wait_kernel(cg, IOLimits(riops=500, wiops=200), timeout=5)
    # Events: IOLimitApplied (Normal) and InvalidIOLimit (Warning)
    assert await cluster.wait_events("InvalidIOLimit", 1)
    assert await cluster.wait_events("IOLimitApplied", 1)
    # smart limit: a container busy for a whole window gets its pod patched
    load = background_fio(cluster, cg, 20)
    try:
        await wait_annotations(cluster, "annotated", present=True, timeout=15)
    finally:
        load.kill()
        load.wait()
    running.stop()
    # `diskguard doctor`, run in the agent's pod with the same service account
    doctor = await trio.run_process(
        [sys.executable, "-m", "diskguard", "doctor", "--json"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **cluster.env()},
        capture_stdout=True,
        check=False,
    )
    rbac = {f["check"]: f for f in json.loads(doctor.stdout)}["RBAC"]
    assert rbac["status"] == "ok", rbac

    used = permissions_used(cluster.api.requests())
    # the exercise did reach the watch and doctor's access review
    assert Permission("", "pods", "watch") in used
    assert Permission("", "pods", "patch") in used
    assert _doctor_own_permissions() <= used
    problems = compare(used, permissions_granted(cluster_role()))
    assert not problems, f"deploy/clusterrole.yaml is out of step with the code: {problems}"
