"""The ClusterRole grants exactly what the agent and `diskguard doctor` use, for the base
install (deploy/) and for each component (deploy/components/*).

Both run for real against the fake API server, which authorizes every request with the
built ClusterRole's rules (403 otherwise) and logs it; each request is mapped to the RBAC
permission the API server would check, and the set must equal what the built role grants:
a new API call without its rule fails, and so does a rule no code needs any more.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import httpx
import pytest
import trio

from diskguard.agent import run as agent_module
from diskguard.config import load_config
from diskguard.kube.access import BASE_ACCESS, SMART_LIMIT_ACCESS, AccessState
from diskguard.model import IOLimits
from diskguard.testing.fakekubelet import FakeKubelet
from diskguard.tools.doctor import required_access
from tests.agent.conftest import Cluster, P, scaled
from tests.agent.test_kubelet_agent import kubelet_env  # noqa: F401 - a fixture used below
from tests.agent.test_kubelet_agent import (
    test_kubelet_pod_source_smart_limit_patches_with_the_api_servers_resource_version as scenario,
)
from tests.agent.test_smart_limit import SMART_ENV, background_fio, wait_annotations

from .kustomize import find
from .manifests import COMPONENTS, built
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
from .test_admission_policy import agent_request
from .test_admission_policy import decide as admitted


def cluster_role(*components: str) -> dict[str, Any]:
    return find(built(*components), "ClusterRole")


# Installs whose role differs: the base, and the smart-limit component. Every other
# component must leave the role as the base has it (test below).
ROLE_INSTALLS = ((), ("smart-limit",))
# Granted by components/smart-limit for kubelet pod-source mode only: there a smart-limit
# patch first GETs the pod's current resourceVersion (the kubelet's copy keeps the first
# one). The API-mode exercise below cannot use it; the kubelet-mode test further down does.
KUBELET_MODE_ONLY = {Permission("", "pods", "get")}


@pytest.mark.parametrize("name", sorted(set(COMPONENTS) - {"smart-limit"}))
def test_other_components_leave_the_role_alone(name: str) -> None:
    assert cluster_role(name) == cluster_role()


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


@pytest.mark.parametrize("components", ROLE_INSTALLS, ids=lambda c: "+".join(("base", *c)))
def test_doctor_checks_exactly_the_agents_permissions(components: tuple[str, ...]) -> None:
    env = {"NODE_NAME": "n"}
    if "smart-limit" in components:
        env["SMART_LIMIT_ENABLED"] = "true"  # what the component sets
    checked: set[AnyPermission] = {
        Permission(a.group, a.resource, a.verb) for a in required_access(load_config(env))
    }
    agent = permissions_granted(cluster_role(*components)) - _doctor_own_permissions()
    problems = compare(checked, agent)
    assert not problems, f"doctor's required_access vs the ClusterRole: {problems}"


def test_only_smart_limit_needs_more_than_the_base_and_not_in_dry_run() -> None:
    base = {"NODE_NAME": "n"}
    assert required_access(load_config(base)) == BASE_ACCESS
    smart = {**base, "SMART_LIMIT_ENABLED": "true"}
    assert required_access(load_config(smart)) == BASE_ACCESS + SMART_LIMIT_ACCESS
    assert required_access(load_config({**smart, "SMART_LIMIT_DRY_RUN": "true"})) == BASE_ACCESS


# -- the real agent --------------------------------------------------------------------


async def _doctor(cluster: Cluster, **env: str) -> dict[str, Any]:
    """`diskguard doctor`, run in the agent's pod with the same service account."""
    doctor = await trio.run_process(
        [sys.executable, "-m", "diskguard", "doctor", "--json"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **cluster.env(**env)},
        capture_stdout=True,
        check=False,
    )
    return {f["check"]: f for f in json.loads(doctor.stdout)}


@pytest.mark.kernel
@pytest.mark.host_only
@pytest.mark.parametrize("components", ROLE_INSTALLS, ids=lambda c: "+".join(("base", *c)))
async def test_cluster_role_grants_exactly_what_the_agent_uses(
    cluster: Cluster, start_agent: Any, components: tuple[str, ...]
) -> None:
    role = cluster_role(*components)
    cluster.api.grant(role["rules"])  # anything else is refused with 403, as RBAC would
    smart = "smart-limit" in components
    # Everything the agent does against the API today, each at least once:
    annotated = cluster.add_pod("annotated", annotations={f"{P}/write-iops": "100"})
    cluster.add_pod("invalid", annotations={f"{P}/read-iops": "abc"})
    running = await start_agent(**(SMART_ENV if smart else {}))
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
    if smart:
        # smart limit: a container busy for a whole window gets its pod patched
        before = cluster.api.get("pods", "default", "annotated")
        load = background_fio(cluster, cg, 20)
        try:
            await wait_annotations(cluster, "annotated", present=True, timeout=15)
        finally:
            load.kill()
            load.wait()
        assert running.agent.ready(), running.agent.readiness_problem()
        # ...and that patch is one components/admission-policy lets through
        after = cluster.api.get("pods", "default", "annotated")
        decision = admitted(agent_request(before, after, cluster.env()["NODE_NAME"]))
        assert decision.applies and decision.allowed, decision.messages
    running.stop()
    found = await _doctor(cluster, **(SMART_ENV if smart else {}))
    assert found["RBAC"]["status"] == "ok", found["RBAC"]
    if smart:
        assert found["RBAC (smart limit)"]["status"] == "ok", found["RBAC (smart limit)"]
    else:
        assert "RBAC (smart limit)" not in found

    requests = cluster.api.requests()
    used = permissions_used(requests)
    # the exercise did reach the watch and doctor's access review
    assert Permission("", "pods", "watch") in used
    assert (Permission("", "pods", "patch") in used) is smart
    assert _doctor_own_permissions() <= used
    granted = permissions_granted(role)
    assert not (used & KUBELET_MODE_ONLY), "API mode uses it now: drop it from the set"
    problems = compare(used | (granted & KUBELET_MODE_ONLY), granted)
    assert not problems, f"the ClusterRole of {components or 'deploy/'} is out of step: {problems}"


@pytest.mark.kernel
@pytest.mark.host_only
async def test_smart_limit_without_its_grant_stays_off_says_so_and_starts_once_granted(
    cluster: Cluster, start_agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "SMART_ACCESS_RECHECK", 0.3)
    cluster.api.grant(cluster_role()["rules"])  # the base install, smart limit on anyway
    busy = cluster.add_pod("busy", annotations={f"{P}/write-iops": "300"})
    running = await start_agent(**SMART_ENV)
    agent = running.agent
    cg = cluster.cgroup(cluster.refs(busy)[0])
    await cluster.wait_kernel(cg, IOLimits(riops=500, wiops=300), timeout=5)  # limits hold
    gate = agent.smart_access
    assert gate is not None
    load = background_fio(cluster, cg, 60)
    try:
        with trio.fail_after(scaled(10)):
            while gate.checks < 3:  # denied, and asked again (no restart needed later)
                await trio.sleep(0.05)
        assert gate.state is AccessState.DENIED
        problem = agent.readiness_problem()
        assert "may not get pods, patch pods" in problem
        assert "deploy/components/smart-limit" in problem
        async with httpx.AsyncClient(base_url=agent.http_binds[0]) as client:
            ready = await client.get("/readyz")
            status = (await client.get("/status")).json()
        assert ready.status_code == 503 and "patch pods" in ready.text
        assert status["smart_limit"]["enabled"] is False
        assert status["smart_limit"]["access"]["state"] == "denied"
        assert status["smart_limit"]["access"]["denied"] == ["get pods", "patch pods"]
        assert agent.smart is None
        assert not [r for r in cluster.api.requests() if r.method == "PATCH"]
        # The administrator installs the component: the agent notices and starts smart limit.
        cluster.api.grant(cluster_role("smart-limit")["rules"])
        with trio.fail_after(scaled(10)):
            await gate.granted.wait()
        await wait_annotations(cluster, "busy", present=True, timeout=20)
    finally:
        load.kill()
        load.wait()
    smart = agent.smart
    assert smart is not None
    with trio.fail_after(scaled(5)):  # the PATCH's answer reaches the agent after the store
        while smart.patches["apply"] < 1:
            await trio.sleep(0.05)
    assert agent.ready(), agent.readiness_problem()
    reviews = [r for r in cluster.api.requests() if r.path.endswith("selfsubjectaccessreviews")]
    assert len(reviews) >= 2 * 3


@pytest.mark.kernel
async def test_doctor_says_when_smart_limit_lacks_its_grant(cluster: Cluster) -> None:
    cluster.api.grant(cluster_role()["rules"])
    found = await _doctor(cluster, SMART_LIMIT_ENABLED="true")
    assert found["RBAC"]["status"] == "ok"
    smart = found["RBAC (smart limit)"]
    assert smart["status"] == "fail"
    assert "get pods, patch pods" in smart["detail"]
    assert "deploy/components/smart-limit" in smart["detail"]
    # dry run patches nothing, so it needs nothing more
    found = await _doctor(cluster, SMART_LIMIT_ENABLED="true", SMART_LIMIT_DRY_RUN="true")
    assert "RBAC (smart limit)" not in found


@pytest.mark.kernel
@pytest.mark.host_only
async def test_smart_limit_role_covers_kubelet_pod_source_mode(
    cluster: Cluster,
    start_agent: Any,
    kubelet_env: tuple[FakeKubelet, dict[str, str]],  # noqa: F811 - the imported fixture
) -> None:
    """The kubelet-mode smart-limit scenario, under exactly components/smart-limit's role:
    its GET of the pod before the patch is granted (a 403 would fail the scenario)."""
    role = cluster_role("smart-limit")
    cluster.api.grant(role["rules"])
    await scenario(cluster, start_agent, kubelet_env)
    used = permissions_used(cluster.api.requests())
    assert used >= KUBELET_MODE_ONLY
    assert used <= permissions_granted(role), compare(used, permissions_granted(role))
