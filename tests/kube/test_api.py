"""CoreApi, the agent's raw JSON calls, against the fake API server over real HTTP.

Each call is checked against the generated `CoreV1Api` doing the same request: the agent
dropped the generated class for memory (kube/api.py), not for different behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from diskguard.kube.api import MAX_ERROR_BODY, CoreApi
from diskguard.kube.watch import _api_exception_status, relist_reason
from diskguard.testing.fakeapi import FakeAPIServer, make_event, make_pod

TIMEOUT = (5.0, 10.0)
PODS = r"^/api/v1/pods$"


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    with FakeAPIServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def api_client(api: FakeAPIServer, tmp_path: Path) -> Iterator[Any]:
    cfg = client.Configuration()
    config.load_kube_config(
        config_file=api.write_kubeconfig(tmp_path / "kubeconfig"), client_configuration=cfg
    )
    cfg.retries = False
    with client.ApiClient(cfg) as api_client:
        yield api_client


def _json(response: Any) -> Any:
    return json.loads(response.data)


def test_pod_list_pages_and_selects_as_the_generated_client_does(
    api: FakeAPIServer, api_client: Any
) -> None:
    for i in range(5):
        api.create("pods", make_pod(f"p{i}", node="node-1"))
    api.create("pods", make_pod("elsewhere", node="node-2"))
    ours, generated = CoreApi(api_client), client.CoreV1Api(api_client)
    names, token = [], None
    while True:
        page = _json(
            ours.list_pod_for_all_namespaces(
                field_selector="spec.nodeName=node-1",
                _continue=token,
                limit=2,
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
        )
        assert len(page["items"]) <= 2
        names += [p["metadata"]["name"] for p in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    want = generated.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")
    want_json = api_client.sanitize_for_serialization(want)
    assert names == [p["metadata"]["name"] for p in want_json["items"]]
    assert names == [f"p{i}" for i in range(5)]
    assert page["metadata"]["resourceVersion"] == want_json["metadata"]["resourceVersion"]
    # The query the server saw is the generated client's, key for key.
    query = api.requests()[0].query
    assert query["fieldSelector"] == "spec.nodeName=node-1" and query["limit"] == "2"


def test_namespace_list_and_watch_stream_changes_and_bookmarks(
    api: FakeAPIServer, api_client: Any
) -> None:
    ours = CoreApi(api_client)
    api.create("pods", make_pod("old", node="node-1"))
    listed = _json(ours.list_namespace(_request_timeout=TIMEOUT))
    rv = listed["metadata"]["resourceVersion"]
    api.create("pods", make_pod("new", node="node-1"))
    response = ours.list_pod_for_all_namespaces(
        watch=True,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _preload_content=False,
        _request_timeout=TIMEOUT,
    )
    try:
        events = [json.loads(line) for line in iter_resp_lines(response)]
    finally:
        response.close()
    kinds = [e["type"] for e in events]
    # From the resourceVersion asked for: "old" came before it and is not replayed.
    added = [e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"]
    assert added == ["new"]
    assert "BOOKMARK" in kinds  # allowWatchBookmarks=true reached the server as "true"
    watch_query = api.requests()[-1].query
    assert watch_query["watch"] == "true" and watch_query["timeoutSeconds"] == "1"
    assert watch_query["resourceVersion"] == rv


def test_read_and_merge_patch_a_pod_guarded_by_its_resource_version(
    api: FakeAPIServer, api_client: Any
) -> None:
    api.create("pods", make_pod("a", annotations={"keep": "1", "drop": "2"}))
    ours = CoreApi(api_client)
    pod = _json(ours.read_namespaced_pod("a", "default", _request_timeout=TIMEOUT))
    generated = client.CoreV1Api(api_client).read_namespaced_pod("a", "default")
    want = api_client.sanitize_for_serialization(generated)["metadata"]
    for key in ("name", "uid", "resourceVersion", "annotations", "labels"):  # not reformatted
        assert pod["metadata"].get(key) == want.get(key)
    rv = pod["metadata"]["resourceVersion"]
    body = {"metadata": {"resourceVersion": rv, "annotations": {"drop": None, "new": "3"}}}
    patched = _json(ours.patch_namespaced_pod("a", "default", body, _request_timeout=TIMEOUT))
    assert patched["metadata"]["annotations"] == {"keep": "1", "new": "3"}
    assert api.requests()[-1].content_type == "application/merge-patch+json"
    # The same patch again holds a resourceVersion that is no longer the pod's: 409.
    with pytest.raises(ApiException) as raised:
        ours.patch_namespaced_pod("a", "default", body, _request_timeout=TIMEOUT)
    assert raised.value.status == 409
    assert _api_exception_status(raised.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as missing:
        ours.read_namespaced_pod("gone", "default", _request_timeout=TIMEOUT)
    assert missing.value.status == 404


def test_events_are_posted_as_json(api: FakeAPIServer, api_client: Any) -> None:
    pod = api.create("pods", make_pod("a"))
    body = make_event(pod, "DiskThrottled", "limited to 500 IOPS", type="Warning")
    ours = CoreApi(api_client)
    created = _json(ours.create_namespaced_event("default", body))
    assert created["reason"] == "DiskThrottled"
    assert api.get("events", "default", created["metadata"]["name"])["message"] == body["message"]
    assert api.requests()[-1].content_type == "application/json"
    # Answers are read whole, so one connection serves every call (no TCP+TLS per Event).
    for i in range(5):
        ours.create_namespaced_event("default", {**body, "metadata": {"name": f"e{i}"}})
        ours.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"n": str(i)}}})
    pools = api_client.rest_client.pool_manager.pools
    [key] = pools.keys()
    assert pools[key].num_connections == 1


def test_access_reviews(api: FakeAPIServer, api_client: Any) -> None:
    ours = CoreApi(api_client)
    api.grant(
        [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews"],
             "verbs": ["create"]},
        ]
    )  # fmt: skip
    assert ours.may("list", "pods", timeout=TIMEOUT)
    assert not ours.may("patch", "pods", timeout=TIMEOUT)
    api.grant([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
    with pytest.raises(ApiException) as raised:  # may not even ask: an error, not a "no"
        ours.may("list", "pods", timeout=TIMEOUT)
    assert raised.value.status == 403


def test_an_error_is_an_api_exception_with_a_bounded_status_body(
    api: FakeAPIServer, api_client: Any
) -> None:
    ours = CoreApi(api_client)
    api.inject_fault("GET", PODS, status=410, watch=True)
    with pytest.raises(ApiException) as gone:
        ours.list_pod_for_all_namespaces(
            watch=True, resource_version="1", _preload_content=False, _request_timeout=TIMEOUT
        )
    assert relist_reason(_api_exception_status(gone.value))  # the watch relists on it
    assert isinstance(gone.value.body, bytes) and len(gone.value.body) <= MAX_ERROR_BODY
    with pytest.raises(TypeError, match="pretty"):
        ours.list_namespace(pretty="true")


def test_the_agent_never_loads_the_generated_core_api() -> None:
    """What the agent imports: without CoreV1Api's ~250 model modules (22 MiB)."""
    probe = (
        "import sys, diskguard.agent.run, diskguard.tools.doctor, diskguard.tools.top\n"
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes.client.models.')"
        " or m.startswith('kubernetes.client.api.core_v1')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
