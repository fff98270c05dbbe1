"""The fake API server, exercised over real HTTP with the real `kubernetes` client."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from diskguard.testing.fakeapi import (
    FakeAPIServer,
    make_event,
    make_namespace,
    make_pod,
)
from diskguard.testing.fakeapi.control import Fault, call_kind
from diskguard.testing.fakeapi.objects import container_ids
from diskguard.testing.fakeapi.patching import merge_patch, strategic_merge_patch
from diskguard.testing.fakeapi.resources import PODS
from diskguard.testing.fakeapi.selectors import parse_field_selector, parse_label_selector

# The client as these tests drive the fake: dict bodies, `_preload_content=False` streams,
# fields read without None checks (a None fails the test anyway). Its annotations describe
# typed models with every field Optional, so the tests hold the client as Any.
Client = Any


def error_body(err: ApiException) -> Any:
    """The Status object the server sent with an error (a missing body fails the test)."""
    assert err.body is not None
    return json.loads(err.body)


MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    errors = [
        r for r in caplog.records if r.name.startswith("diskguard") and r.levelno >= logging.ERROR
    ]
    assert not errors, [r.getMessage() for r in errors]


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    with FakeAPIServer(bookmark_interval=0.2) as server:
        yield server


def _core(api: FakeAPIServer, tmp_path: Path) -> Client:
    cfg = client.Configuration()
    config.load_kube_config(
        config_file=api.write_kubeconfig(tmp_path / "kubeconfig"), client_configuration=cfg
    )
    return client.CoreV1Api(client.ApiClient(cfg))


@pytest.fixture
def v1(api: FakeAPIServer, tmp_path: Path) -> Iterator[Client]:
    core = _core(api, tmp_path)
    yield core
    core.api_client.close()


class RawWatch:
    """A watch read line by line, as a client without the `Watch` helper would."""

    def __init__(self, v1: Client, **kwargs: Any) -> None:
        self.resp = v1.list_namespaced_pod(
            "default", watch=True, _preload_content=False, _request_timeout=(5, 5), **kwargs
        )
        self.lines = iter_resp_lines(self.resp)

    def events(self, count: int, *, skip_bookmarks: bool = True) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.lines:
            event = json.loads(line)
            if skip_bookmarks and event["type"] == "BOOKMARK":
                continue
            out.append(event)
            if len(out) == count:
                break
        return out

    def rest(self) -> list[dict[str, Any]]:
        """Everything until the server ends the stream."""
        return [json.loads(line) for line in self.lines]

    def close(self) -> None:
        # What the client's own Watch does when it is done with a stream.
        self.resp.close()
        self.resp.release_conn()


# -- discovery, reads, selectors -------------------------------------------------------------


def test_discovery_version_and_health(api: FakeAPIServer, v1: Client) -> None:
    assert client.CoreApi(v1.api_client).get_api_versions().versions == ["v1"]
    resources = {r.name: r for r in v1.get_api_resources().resources}
    assert resources["pods"].namespaced and resources["pods"].kind == "Pod"
    assert not resources["namespaces"].namespaced
    assert "pods/status" in resources and "events" in resources
    assert client.VersionApi(v1.api_client).get_code().major == "1"
    for path in ("/healthz", "/readyz", "/livez"):
        assert httpx.get(api.url + path).text == "ok"
    missing = httpx.get(api.url + "/api/v1/widgets")
    assert missing.status_code == 404
    assert missing.json()["kind"] == "Status" and missing.json()["reason"] == "NotFound"


def test_list_with_field_and_label_selectors(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a", node="node-1", labels={"app": "web", "tier": "x"}))
    api.create("pods", make_pod("b", node="node-2", labels={"app": "web"}))
    api.create("pods", make_pod("c", "other", node="node-1", labels={"app": "db"}))

    def names(**kw: Any) -> list[str]:
        return [p.metadata.name for p in v1.list_pod_for_all_namespaces(**kw).items]

    assert names(field_selector="spec.nodeName=node-1") == ["a", "c"]
    assert names(field_selector="spec.nodeName==node-1,metadata.namespace=other") == ["c"]
    assert names(field_selector="spec.nodeName!=node-1") == ["b"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app!=web") == ["c"]
    assert names(label_selector="tier") == ["a"]
    assert names(label_selector="!tier,app in (web,db)") == ["b", "c"]
    pods = v1.list_namespaced_pod("default", field_selector="spec.nodeName=node-1")
    assert [p.metadata.name for p in pods.items] == ["a"]
    assert pods.kind == "PodList" and int(pods.metadata.resource_version) > 0
    with pytest.raises(ApiException) as err:
        v1.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
    assert err.value.status == 400
    assert "field label not supported" in error_body(err.value)["message"]


def test_create_stamps_metadata_and_get_round_trips(api: FakeAPIServer, v1: Client) -> None:
    body = make_pod("web-0", node="node-1")
    del body["metadata"]["uid"]
    created = v1.create_namespaced_pod("default", body)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.namespace == "default"
    got = v1.read_namespaced_pod("web-0", "default")
    assert got.metadata.resource_version == created.metadata.resource_version
    assert got.spec.node_name == "node-1"
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("default", body)
    status = error_body(err.value)
    assert err.value.status == 409 and status["reason"] == "AlreadyExists"
    assert status["kind"] == "Status" and status["status"] == "Failure"
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("nope", "default")
    assert err.value.status == 404 and error_body(err.value)["reason"] == "NotFound"
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("ghost-ns", make_pod("x", "ghost-ns"))
    assert err.value.status == 404  # like the real server: the namespace must exist


# -- watch -----------------------------------------------------------------------------------


def test_raw_watch_from_list_rv_sees_changes_and_bookmarks(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a"))
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    w = RawWatch(v1, resource_version=rv, allow_watch_bookmarks=True)
    try:
        api.create("pods", make_pod("b"))
        api.patch_annotations("pods", "default", "a", {"k": "v"})
        api.delete("pods", "default", "b")
        lines = []
        for line in w.lines:
            lines.append(json.loads(line))
            if lines[-1]["type"] == "BOOKMARK" and len(lines) > 3:
                break
    finally:
        w.close()
    kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in lines[:3]]
    assert kinds == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in lines[:3]]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert lines[1]["object"]["metadata"]["annotations"] == {"k": "v"}
    bookmark = lines[-1]["object"]
    assert bookmark["kind"] == "Pod" and bookmark["apiVersion"] == "v1"
    assert bookmark["metadata"]["resourceVersion"] == api.resource_version


def test_watch_helper_filters_by_selector_and_reports_bookmarks(
    api: FakeAPIServer, v1: Client
) -> None:
    api.create("pods", make_pod("mine", node="node-1", labels={"watched": "yes"}))
    listed = v1.list_namespaced_pod("default", field_selector="spec.nodeName=node-1")
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    stream = w.stream(
        v1.list_namespaced_pod,
        "default",
        field_selector="spec.nodeName=node-1",
        label_selector="watched=yes",
        resource_version=listed.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    for event in stream:  # a BOOKMARK comes first: nothing changed since the list
        seen.append((event["type"], event["raw_object"]["metadata"].get("name", "")))
        if len(seen) == 1:
            api.create("pods", make_pod("elsewhere", node="node-2", labels={"watched": "yes"}))
            api.create("pods", make_pod("late", node="node-1", labels={"watched": "yes"}))
            api.patch_annotations("pods", "default", "late", {"a": "1"})
            # Losing the label takes the pod out of this watch: the watcher sees DELETED.
            api.update("pods", "default", "mine", lambda p: p["metadata"]["labels"].pop("watched"))
        if event["type"] == "BOOKMARK" and len(seen) > 4:
            w.stop()
    assert seen[0][0] == "BOOKMARK"
    assert seen[1:4] == [("ADDED", "late"), ("MODIFIED", "late"), ("DELETED", "mine")]
    assert w.resource_version == api.resource_version
    assert isinstance(seen, list) and ("ADDED", "elsewhere") not in seen


def test_watch_without_rv_starts_with_synthetic_added(api: FakeAPIServer, v1: Client) -> None:
    for name in ("a", "b"):
        api.create("pods", make_pod(name))
    for rv in (None, "0"):
        kwargs = {} if rv is None else {"resource_version": rv}
        w = RawWatch(v1, **kwargs)
        try:
            events = w.events(2)
        finally:
            w.close()
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
        ]


def test_send_initial_events_ends_with_marked_bookmark(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a"))
    w = RawWatch(
        v1,
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
    )
    try:
        events = w.events(2, skip_bookmarks=False)
    finally:
        w.close()
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_from_compacted_rv_gets_410_error_event(api: FakeAPIServer, v1: Client) -> None:
    old = v1.list_namespaced_pod("default").metadata.resource_version
    api.create("pods", make_pod("a"))
    current = api.compact()
    w = RawWatch(v1, resource_version=old)
    try:
        lines = w.rest()  # the server ends the stream after the error
    finally:
        w.close()
    assert len(lines) == 1 and lines[0]["type"] == "ERROR"
    status = lines[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"] == f"too old resource version: {old} ({current})"
    # The client helper retries once, then reports the 410 to its caller.
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=old):
            pass
    assert err.value.status == 410
    # A watch from the compaction point itself is fine.
    w = RawWatch(v1, resource_version=current)
    try:
        api.create("pods", make_pod("b"))
        assert w.events(1)[0]["object"]["metadata"]["name"] == "b"
    finally:
        w.close()


def test_bounded_history_expires_old_versions(tmp_path: Path) -> None:
    with FakeAPIServer(history_limit=3) as api:
        v1 = _core(api, tmp_path)
        start = api.resource_version
        for i in range(5):
            api.create("pods", make_pod(f"p{i}"))
        w = RawWatch(v1, resource_version=start)
        assert [e["object"]["code"] for e in w.rest()] == [410]
        w.close()
        v1.api_client.close()


def test_drop_watches_cuts_streams_mid_way(api: FakeAPIServer, v1: Client) -> None:
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    w = RawWatch(v1, resource_version=rv)
    api.create("pods", make_pod("a"))
    assert w.events(1)[0]["type"] == "ADDED"
    assert api.drop_watches() == 1
    with pytest.raises(urllib3.exceptions.ProtocolError):
        w.rest()
    w.close()

    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv):
                pass
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    api.wait_for_watches(1)
    api.drop_watches()
    t.join(timeout=5)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], urllib3.exceptions.ProtocolError)
    assert api.open_watches() == 0


def test_client_leaving_mid_stream_closes_the_watch(api: FakeAPIServer, v1: Client) -> None:
    rv = api.resource_version
    for i in range(200):
        api.create("pods", make_pod(f"p{i}"))
    w = RawWatch(v1, resource_version=rv, allow_watch_bookmarks=True)
    assert w.events(1)[0]["object"]["metadata"]["name"] == "p0"
    assert api.open_watches() == 1
    w.close()
    _wait_until(lambda: api.open_watches() == 0)


def test_timeout_seconds_ends_the_stream_cleanly(api: FakeAPIServer, v1: Client) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(v1.list_namespaced_pod, "default", timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert events == [] and 0.9 <= elapsed < 4
    assert api.open_watches() == 0


def test_concurrent_writers_and_one_watcher_agree(api: FakeAPIServer, v1: Client) -> None:
    for i in range(4):
        api.create("pods", make_pod(f"p{i}"))
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    w = RawWatch(v1, resource_version=rv)

    def writer(i: int) -> None:
        for n in range(25):
            api.patch_annotations("pods", "default", f"p{i}", {"n": str(n)})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = w.events(100)
    w.close()
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == list(range(int(rv) + 1, int(rv) + 101))
    for i in range(4):
        assert api.get("pods", "default", f"p{i}")["metadata"]["annotations"] == {"n": "24"}


# -- writes ----------------------------------------------------------------------------------


def test_merge_and_strategic_patches_of_annotations(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a", annotations={"keep": "1", "drop": "2"}))
    merged = v1.patch_namespaced_pod(
        "a",
        "default",
        {"metadata": {"annotations": {"drop": None, "new": "3"}}},
        _content_type=MERGE,
    )
    assert merged.metadata.annotations == {"keep": "1", "new": "3"}
    # The client's default for a dict body is a strategic merge patch.
    smp = v1.patch_namespaced_pod("a", "default", {"metadata": {"annotations": {"new": None}}})
    assert smp.metadata.annotations == {"keep": "1"}
    patches = [r for r in api.requests() if r.method == "PATCH"]
    assert [r.content_type for r in patches] == [MERGE, "application/strategic-merge-patch+json"]
    assert patches[0].body == {"metadata": {"annotations": {"drop": None, "new": "3"}}}
    # Strategic merge patches merge the containers list by name; a merge patch replaces it.
    smp = v1.patch_namespaced_pod(
        "a", "default", {"spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]}}
    )
    assert [(c.name, c.image, c.image_pull_policy) for c in smp.spec.containers] == [
        ("app", "busybox:1.37", "IfNotPresent")
    ]


def test_json_patch_and_noop_patch(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a"))
    patched = v1.patch_namespaced_pod(
        "a", "default", [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]
    )
    assert patched.metadata.labels == {"x": "y"}
    assert api.requests()[-1].content_type == JSONPATCH
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod(
            "a", "default", [{"op": "test", "path": "/metadata/labels/x", "value": "z"}]
        )
    assert err.value.status == 422
    # A patch that changes nothing bumps nothing, as on a real server.
    again = v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "y"}}})
    assert again.metadata.resource_version == patched.metadata.resource_version


def test_stale_resource_version_is_a_conflict(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a"))
    stale = v1.read_namespaced_pod("a", "default")
    api.patch_annotations("pods", "default", "a", {"moved": "on"})
    stale.metadata.annotations = {"mine": "1"}
    with pytest.raises(ApiException) as err:
        v1.replace_namespaced_pod("a", "default", stale)
    status = error_body(err.value)
    assert err.value.status == 409 and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod(
            "a",
            "default",
            {
                "metadata": {
                    "resourceVersion": stale.metadata.resource_version,
                    "labels": {"a": "b"},
                }
            },
            _content_type=MERGE,
        )
    assert err.value.status == 409
    fresh = v1.read_namespaced_pod("a", "default")
    fresh.metadata.annotations["mine"] = "1"
    replaced = v1.replace_namespaced_pod("a", "default", fresh)
    assert replaced.metadata.annotations == {"moved": "on", "mine": "1"}
    assert int(replaced.metadata.resource_version) > int(fresh.metadata.resource_version)


def test_status_subresource_is_separate(api: FakeAPIServer, v1: Client) -> None:
    api.create("pods", make_pod("a"))
    v1.patch_namespaced_pod("a", "default", {"status": {"phase": "Failed"}}, _content_type=MERGE)
    assert v1.read_namespaced_pod("a", "default").status.phase == "Running"
    out = v1.patch_namespaced_pod_status(
        "a",
        "default",
        {"status": {"phase": "Succeeded"}, "metadata": {"labels": {"z": "1"}}},
        _content_type=MERGE,
    )
    assert out.status.phase == "Succeeded" and not out.metadata.labels


def test_namespaces_and_cascading_delete(api: FakeAPIServer, v1: Client) -> None:
    ns = v1.create_namespace(make_namespace("team-a", annotations={"a": "1"}))
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "team-a"}
    assert ns.status.phase == "Active"
    v1.create_namespaced_pod("team-a", make_pod("p", "team-a"))
    patched = v1.patch_namespace("team-a", {"metadata": {"annotations": {"a": None}}})
    assert not patched.metadata.annotations
    names = {n.metadata.name for n in v1.list_namespace().items}
    assert {"default", "kube-system", "team-a"} <= names
    v1.delete_namespace("team-a")
    assert api.list("pods", "team-a") == []
    with pytest.raises(ApiException) as err:
        v1.read_namespace("team-a")
    assert err.value.status == 404


def test_delete_with_preconditions(api: FakeAPIServer, v1: Client) -> None:
    pod = api.create("pods", make_pod("a"))
    with pytest.raises(ApiException) as err:
        v1.delete_namespaced_pod(
            "a",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-it")),
        )
    assert err.value.status == 409
    gone = v1.delete_namespaced_pod(
        "a",
        "default",
        body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=pod["metadata"]["uid"])
        ),
    )
    assert gone.metadata.name == "a"
    assert api.list("pods") == []


def test_events_are_logged_and_listed(api: FakeAPIServer, v1: Client) -> None:
    pod = api.create("pods", make_pod("a"))
    body = make_event(pod, "DiskThrottled", "limited to 500 IOPS", type="Warning")
    created = v1.create_namespaced_event("default", body)
    assert (
        created.reason == "DiskThrottled" and created.involved_object.uid == pod["metadata"]["uid"]
    )
    posts = [r for r in api.requests() if r.method == "POST" and r.path.endswith("/events")]
    assert len(posts) == 1 and posts[0].body["reason"] == "DiskThrottled"
    assert posts[0].path == "/api/v1/namespaces/default/events"
    listed = v1.list_namespaced_event("default", field_selector="involvedObject.name=a")
    assert [e.reason for e in listed.items] == ["DiskThrottled"]
    assert [e.reason for e in v1.list_event_for_all_namespaces().items] == ["DiskThrottled"]
    v1.patch_namespaced_event(created.metadata.name, "default", {"count": 2})
    assert api.get("events", "default", created.metadata.name)["count"] == 2
    found = api.wait_for_request(lambda r: r.method == "PATCH", timeout=1)
    assert found.body == {"count": 2}


def test_pagination_with_limit_and_continue(api: FakeAPIServer, v1: Client) -> None:
    for i in range(7):
        api.create("pods", make_pod(f"p{i}"))
    first = v1.list_namespaced_pod("default", limit=3)
    assert [p.metadata.name for p in first.items] == ["p0", "p1", "p2"]
    assert first.metadata.remaining_item_count == 4
    # Changes after the first page do not leak into the rest of a consistent list.
    api.delete("pods", "default", "p5")
    api.create("pods", make_pod("p9"))
    second = v1.list_namespaced_pod("default", limit=3, _continue=first.metadata._continue)
    third = v1.list_namespaced_pod("default", limit=3, _continue=second.metadata._continue)
    assert [p.metadata.name for p in second.items + third.items] == ["p3", "p4", "p5", "p6"]
    assert third.metadata._continue is None
    assert second.metadata.resource_version == first.metadata.resource_version
    api.compact()
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default", limit=3, _continue=first.metadata._continue)
    assert err.value.status == 410 and error_body(err.value)["reason"] == "Expired"
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default", limit=3, _continue="garbage")
    assert err.value.status == 400


# -- faults and outages ----------------------------------------------------------------------


def test_injected_fault_then_clears_after_count(api: FakeAPIServer, v1: Client) -> None:
    api.inject_fault(method="GET", path_regex=r"/pods$", status=500, count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            v1.list_namespaced_pod("default")
        assert err.value.status == 500
        assert error_body(err.value)["reason"] == "InternalError"
    assert v1.list_namespaced_pod("default").items == []
    # Only matching requests are hit.
    api.inject_fault(method="POST", path_regex="/events$", status=503)
    assert v1.list_namespaced_pod("default").items == []
    api.clear_faults()
    assert v1.list_namespaced_event("default").items == []


def test_delay_and_hang_faults(api: FakeAPIServer, v1: Client) -> None:
    api.inject_fault(path_regex="/pods$", status=None, delay=0.3, count=1)
    started = time.monotonic()
    v1.list_namespaced_pod("default")
    assert time.monotonic() - started >= 0.3
    api.inject_fault(path_regex="/pods$", status=None, hang=True)
    # urllib3 retries the timed-out GET three times, and every try hangs.
    with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
        v1.list_namespaced_pod("default", _request_timeout=(1, 0.2))
    assert isinstance(err.value.reason, urllib3.exceptions.ReadTimeoutError)
    results: list[int] = []
    t = threading.Thread(
        target=lambda: results.append(len(v1.list_namespaced_pod("default").items))
    )
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    api.clear_faults()
    t.join(timeout=5)
    assert results == [0]
    with pytest.raises(ValueError):
        api.inject_fault(path_regex="(", status=500)


def test_go_down_refuses_connections_and_come_back_keeps_state(
    api: FakeAPIServer, v1: Client
) -> None:
    api.create("pods", make_pod("a"))
    rv, port = api.resource_version, api.port
    w = RawWatch(v1, resource_version=rv)
    api.go_down()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        w.rest()
    w.close()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
        v1.list_namespaced_pod("default")
    assert isinstance(err.value.reason, urllib3.exceptions.NewConnectionError)
    api.create("pods", make_pod("b"))  # state stays writable while down
    api.come_back()
    assert api.port == port
    assert [p.metadata.name for p in v1.list_namespaced_pod("default").items] == ["a", "b"]
    assert int(api.resource_version) == int(rv) + 1


async def test_controls_work_from_inside_a_trio_test(api: FakeAPIServer, tmp_path: Path) -> None:
    # pytest-trio tests call the blocking controls straight from their own loop.
    v1 = _core(api, tmp_path)
    api.create("pods", make_pod("a"))
    api.go_down()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        await trio.to_thread.run_sync(v1.list_namespaced_pod, "default")
    api.come_back()
    pods = await trio.to_thread.run_sync(v1.list_namespaced_pod, "default")
    assert [p.metadata.name for p in pods.items] == ["a"]
    v1.api_client.close()


# -- HTTP controls, standalone process, lifecycle -------------------------------------------


def test_http_controls(api: FakeAPIServer, v1: Client) -> None:
    http = httpx.Client(base_url=api.url)
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    api.create("pods", make_pod("a"))
    assert http.post("/_fake/compact").json()["resourceVersion"] == api.resource_version
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv):
            pass
    assert err.value.status == 410
    r = http.post(
        "/_fake/faults", json={"method": "GET", "path_regex": "/pods$", "count": 1, "status": 503}
    )
    assert r.status_code == 201
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default")
    assert err.value.status == 503
    assert http.post("/_fake/faults", json={"bogus": 1}).status_code == 400
    http.post("/_fake/faults", json={"path_regex": "/pods$", "status": 500})
    assert http.delete("/_fake/faults").status_code == 200
    v1.list_namespaced_pod("default")
    logged = http.get("/_fake/requests").json()["requests"]
    assert logged[-1]["method"] == "GET" and logged[-1]["path"] == "/api/v1/namespaces/default/pods"
    assert not any(r["path"].startswith("/_fake") for r in logged)
    w = RawWatch(v1)
    api.wait_for_watches(1)
    assert http.post("/_fake/drop-watches").json() == {"dropped": 1}
    with pytest.raises(urllib3.exceptions.ProtocolError):
        w.rest()
    w.close()
    # Down for 3 s: long enough that polling sees the port closed even when the server's
    # thread waits for a CPU; then it listens again by itself.
    assert http.post("/_fake/outage", json={"seconds": 3}).status_code == 202
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(api.url + "/healthz", timeout=1)
        except httpx.ConnectError:
            break
        assert time.monotonic() < deadline, "the outage never closed the port"
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while True:
        try:
            assert httpx.get(api.url + "/healthz").text == "ok"
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    http.close()


def test_standalone_process_with_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        yaml.safe_dump([make_namespace("apps"), make_pod("web", "apps", node="node-7")])
    )
    kubeconfig = tmp_path / "kc"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diskguard.testing.fakeapi",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fakeapi listening on http://127.0.0.1:"), line
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        with client.ApiClient(cfg) as ac:
            core: Client = client.CoreV1Api(ac)
            pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-7")
            assert [p.metadata.name for p in pods.items] == ["web"]
        url = line.split()[-1]
        assert httpx.post(url + "/_fake/compact").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "diskguard.testing.fakeapi",
            "--seed",
            str(tmp_path / "missing.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


def test_stop_ends_server_thread_and_tasks(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    api = FakeAPIServer(bookmark_interval=0.1).start()
    v1 = _core(api, tmp_path)
    w = RawWatch(v1, allow_watch_bookmarks=True)
    api.inject_fault(path_regex="/namespaces$", status=None, hang=True)
    failures: list[BaseException] = []

    def list_namespaces() -> None:
        try:
            v1.list_namespace()
        except BaseException as exc:
            failures.append(exc)

    hung = threading.Thread(target=list_namespaces)
    hung.start()
    api.wait_for_watches(1)
    api.wait_for_request(lambda r: r.path == "/api/v1/namespaces")
    api.stop()
    hung.join(timeout=5)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        w.rest()
    w.close()
    v1.api_client.close()
    assert not hung.is_alive()
    # The held request was cut when the server stopped, and its retries were refused.
    assert failures and isinstance(failures[0], urllib3.exceptions.HTTPError)
    assert set(threading.enumerate()) - before == set()
    assert api.open_watches() == 0
    api.stop()  # idempotent
    with pytest.raises(RuntimeError):
        api.go_down()


# -- builders and pure pieces ----------------------------------------------------------------


def test_make_pod_is_realistic_and_validated() -> None:
    cid = "ab" * 32
    pod = make_pod(
        "p",
        "ns",
        "node-3",
        containers=(("a", "img:1"), ("b", "img:2")),
        init_containers=(("init", "img:0"),),
        runtime="cri-o",
        qos="Guaranteed",
        container_ids={"a": cid},
    )
    assert pod["spec"]["nodeName"] == "node-3" and pod["status"]["qosClass"] == "Guaranteed"
    statuses = pod["status"]["containerStatuses"]
    assert statuses[0]["containerID"] == f"cri-o://{cid}"
    assert "running" in statuses[0]["state"]
    assert container_ids(pod)["a"] == cid and len(container_ids(pod)) == 3
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == (
        "Completed"
    )
    docker = make_pod("d", runtime="docker", qos="BestEffort")
    assert docker["status"]["containerStatuses"][0]["containerID"].startswith("docker://")
    assert docker["spec"]["containers"][0]["resources"] == {}
    for bad in (
        {"runtime": "rkt"},
        {"qos": "Gold"},
        {"container_ids": {"app": "xyz"}},
        {"container_ids": {"ghost": cid}},
        {"containers": ()},
        {"phase": "Dancing"},
    ):
        with pytest.raises(ValueError):
            make_pod("x", **bad)
    # The client's own model accepts what the builders make.
    api_client = client.ApiClient()
    model = api_client.deserialize(json.dumps(pod), "V1Pod", "application/json")
    assert model.status.container_statuses[0].restart_count == 0


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    # RFC 7386 appendix A.
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386_vectors(target: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(target, patch) == expected


def test_strategic_merge_patch_directives() -> None:
    target: dict[str, Any] = {
        "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]},
        "metadata": {"finalizers": ["x"]},
    }
    out = strategic_merge_patch(
        target,
        {
            "spec": {
                "containers": [{"name": "b", "$patch": "delete"}, {"name": "c", "image": "3"}],
                "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}],
            },
            "metadata": {"finalizers": ["y"]},
        },
    )
    assert out == {
        "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "c", "image": "3"}]},
        "metadata": {"finalizers": ["x", "y"]},
    }
    replaced = strategic_merge_patch(target, {"spec": {"$patch": "replace", "x": 1}})
    assert replaced["spec"] == {"x": 1}
    assert target["spec"]["containers"][1] == {"name": "b", "image": "2"}  # inputs untouched


def test_selector_parsing_errors_are_clear() -> None:
    from diskguard.testing.fakeapi.errors import ApiError

    for text in ("nope", "spec.nodeName"):
        with pytest.raises(ApiError) as err:
            parse_field_selector(text, PODS.field_getters)
        assert err.value.code == 400
    for text in ("a in (b", "bad key!=x", "a=b=c d"):
        with pytest.raises(ApiError):
            parse_label_selector(text)
    assert parse_label_selector("a notin (x)").matches({"metadata": {}})
    # The agent's own parser: `>`/`<` (which a regex-based copy lacked) work like the server's.
    newer = parse_label_selector("gen>1,gen<10")
    assert newer.matches({"metadata": {"labels": {"gen": "2"}}})
    assert not newer.matches({"metadata": {"labels": {"gen": "1"}}})
    assert not newer.matches({"metadata": {"labels": {"gen": "x"}}})
    assert Fault.from_json({"method": "get", "path_regex": "x"}).method == "GET"


@pytest.mark.parametrize(
    ("method", "path", "query", "kind"),
    [
        ("GET", "/api/v1/pods", {}, "list pods"),
        ("GET", "/api/v1/pods", {"watch": "true"}, "watch pods"),
        ("GET", "/api/v1/watch/namespaces", {}, "watch namespaces"),
        ("GET", "/api/v1/namespaces", {}, "list namespaces"),
        ("GET", "/api/v1/namespaces/default", {}, "get namespaces"),
        ("GET", "/api/v1/namespaces/default/pods/a", {}, "get pods"),
        ("PATCH", "/api/v1/namespaces/default/pods/a", {}, "patch pods"),
        ("POST", "/api/v1/namespaces/default/events", {}, "create events"),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {},
            "create selfsubjectaccessreviews",
        ),
        ("GET", "/version", {}, "get /version"),
    ],
)
def test_call_kinds_use_the_kubernetes_verbs(
    method: str, path: str, query: dict[str, str], kind: str
) -> None:
    assert call_kind(method, path, query) == kind


def test_traffic_meter_counts_requests_and_body_bytes_of_lists_and_watches(
    api: FakeAPIServer, v1: Client
) -> None:
    api.create("pods", make_pod("a"))
    listed = v1.list_namespaced_pod("default", _preload_content=False)
    body = listed.data
    rv = json.loads(body)["metadata"]["resourceVersion"]
    w = RawWatch(v1, resource_version=rv, allow_watch_bookmarks=True)
    try:
        api.patch_annotations("pods", "default", "a", {"k": "v"})
        event = next(iter(w.lines))
    finally:
        w.close()
    traffic = api.traffic()
    assert traffic["list pods"].requests == 1
    assert traffic["list pods"].bytes_out == len(body)
    assert traffic["watch pods"].requests == 1
    # the MODIFIED event's line (and its newline) went out on the watch
    assert traffic["watch pods"].bytes_out >= len(event) + 1
    assert traffic["list pods"].bytes_in == traffic["watch pods"].bytes_in == 0
