"""The kubelet client, pod source and cAdvisor rates, against a fake kubelet over real TLS.

Certificates are made per test with trustme: the fake serves a certificate for
localhost/127.0.0.1 from one CA, and the client verifies against the CA file it is given,
so a wrong CA, a missing client certificate or a wrong token fail in the TLS stack and the
HTTP server exactly as they would against a kubelet.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme
from kubernetes import client, config

from diskguard.config import (
    IN_CLUSTER_CA,
    IN_CLUSTER_TOKEN,
    ConfigError,
    KubeletSettings,
    load_config,
)
from diskguard.kube.api import CoreApi
from diskguard.kube.cadvisor import (
    CadvisorParseError,
    CadvisorRateTracker,
    ContainerIO,
    PodContainer,
    parse_cadvisor,
)
from diskguard.kube.kubelet import (
    KubeletBadResponse,
    KubeletClient,
    KubeletCredentialsError,
    KubeletDropped,
    KubeletError,
    KubeletForbidden,
    KubeletHTTPError,
    KubeletTimeout,
    KubeletTLSError,
    KubeletUnauthorized,
    KubeletUnreachable,
)
from diskguard.kube.kubelet_source import (
    KubeletSourceHealth,
    PodListChanges,
    Source,
    SourceSelector,
    run_kubelet_pod_source,
    run_pod_source,
)
from diskguard.kube.watch import Changed, ListWatcher, Relisted, WatchEvent
from diskguard.model import Counters, Rates
from diskguard.testing.fakeapi import FakeAPIServer, make_pod
from diskguard.testing.fakekubelet import FakeKubelet, server_tls_context

NODE = "node-1"
TOKEN = "kubelet-token-1"


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    errors = [
        r for r in caplog.records if r.name.startswith("diskguard") and r.levelno >= logging.ERROR
    ]
    assert not errors, [r.getMessage() for r in errors]


@attrs.frozen
class Pki:
    ca: trustme.CA
    ca_path: str
    client_ca: trustme.CA
    client_cert_path: str
    client_key_path: str
    token_path: str


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, client_ca = trustme.CA(), trustme.CA()
    ca_path = tmp_path / "kubelet-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf = client_ca.issue_cert("diskguard.test", common_name="diskguard")
    cert_path, key_path = tmp_path / "client.crt", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    leaf.private_key_pem.write_to_path(str(key_path))
    token_path = tmp_path / "token"
    token_path.write_text(TOKEN + "\n")
    return Pki(ca, str(ca_path), client_ca, str(cert_path), str(key_path), str(token_path))


@pytest.fixture
def kubelet(pki: Pki) -> Iterator[FakeKubelet]:
    """Token auth, server cert from pki.ca."""
    with FakeKubelet(server_tls_context(pki.ca), token=TOKEN) as fake:
        yield fake


def settings_for(fake: FakeKubelet, pki: Pki, **overrides: Any) -> KubeletSettings:
    base = KubeletSettings(
        host="localhost", port=fake.port, ca_path=pki.ca_path, token_path=pki.token_path
    )
    return attrs.evolve(base, **overrides)


async def kubelet_error(settings: KubeletSettings, call: str = "pods") -> KubeletError:
    async with KubeletClient(settings) as kc:
        with pytest.raises(KubeletError) as info:
            await getattr(kc, call)()
    return info.value


def pod(name: str, uid: str, container_id: str | None = None, node: str = NODE) -> dict[str, Any]:
    ids = {"app": container_id} if container_id else None
    return make_pod(name, node=node, uid=uid, container_ids=ids)


UID_A = "0b9c6f1e-3a52-4a87-9d5e-2f1b7c3e4d01"
UID_B = "5d2e8a40-7c1b-4f6e-8a39-1e0f2d3c4b02"
CID_1 = "a" * 64
CID_2 = "b" * 64


# -- configuration --------------------------------------------------------------------------


def kubelet_settings_from_env(
    env: dict[str, str], *, exists: Callable[[str], bool] = os.path.exists
) -> KubeletSettings:
    """The KUBELET_* part of the configuration (parsed in diskguard.config with the rest)."""
    return load_config({"NODE_NAME": "n", **env}, exists=exists).kubelet


def test_settings_defaults_outside_a_cluster() -> None:
    s = kubelet_settings_from_env({}, exists=lambda _: False)
    assert s == KubeletSettings()
    assert (s.host, s.port, s.ca_path, s.token_path) == ("localhost", 10250, None, None)
    assert not s.skip_verify and not s.pod_source and s.poll_interval == 5.0
    assert s.base_url == "https://localhost:10250"


def test_settings_in_cluster_defaults_and_overrides() -> None:
    s = kubelet_settings_from_env({}, exists=lambda p: p in (IN_CLUSTER_CA, IN_CLUSTER_TOKEN))
    assert (s.ca_path, s.token_path) == (IN_CLUSTER_CA, IN_CLUSTER_TOKEN)
    env = {
        "KUBELET_HOST": "[fd00::5]",
        "KUBELET_PORT": "10255",
        "KUBELET_CA_PATH": "/etc/kubelet-ca.pem",
        "KUBELET_CLIENT_CERT_PATH": "/certs/tls.crt",
        "KUBELET_CLIENT_KEY_PATH": "/certs/tls.key",
        "KUBELET_TOKEN_PATH": "/tokens/kubelet",
        "KUBELET_SKIP_VERIFY": "True",
        "KUBELET_POD_SOURCE": "yes",
        "KUBELET_POLL_INTERVAL": "2.5",
    }
    s = kubelet_settings_from_env(env, exists=lambda _: True)
    assert s.base_url == "https://[fd00::5]:10255"
    assert (s.ca_path, s.client_cert_path, s.client_key_path, s.token_path) == (
        "/etc/kubelet-ca.pem",
        "/certs/tls.crt",
        "/certs/tls.key",
        "/tokens/kubelet",
    )
    assert s.skip_verify and s.pod_source and s.poll_interval == 2.5
    assert kubelet_settings_from_env({"KUBELET_HOST": "Node-1.Example"}).host == "node-1.example"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KUBELET_HOST", "https://node-1"),
        ("KUBELET_HOST", "node-1:10250"),
        ("KUBELET_HOST", "node 1"),
        ("KUBELET_HOST", "user@node-1"),
        ("KUBELET_PORT", "0"),
        ("KUBELET_PORT", "65536"),
        ("KUBELET_PORT", "https"),
        ("KUBELET_CA_PATH", "ca.crt"),
        ("KUBELET_TOKEN_PATH", "./token"),
        ("KUBELET_SKIP_VERIFY", "maybe"),
        ("KUBELET_POD_SOURCE", "on-sundays"),
        ("KUBELET_POLL_INTERVAL", "0"),
        ("KUBELET_POLL_INTERVAL", "-5"),
        ("KUBELET_POLL_INTERVAL", "nan"),
        ("KUBELET_POLL_INTERVAL", "5 s"),
    ],
)
def test_settings_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        kubelet_settings_from_env({variable: value}, exists=lambda _: False)
    assert info.value.variable == variable
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{variable}={value!r} is invalid")


def test_client_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError) as info:
        kubelet_settings_from_env({"KUBELET_CLIENT_CERT_PATH": "/c.crt"})
    assert info.value.variable == "KUBELET_CLIENT_KEY_PATH"
    assert "KUBELET_CLIENT_CERT_PATH is set" in str(info.value)
    with pytest.raises(ConfigError) as info:
        kubelet_settings_from_env({"KUBELET_CLIENT_KEY_PATH": "/c.key"})
    assert info.value.variable == "KUBELET_CLIENT_CERT_PATH"


def test_unloadable_tls_files_are_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(KubeletError) as info:
        KubeletClient(KubeletSettings(ca_path=str(tmp_path / "missing.pem")))
    assert isinstance(info.value, KubeletCredentialsError)
    assert "KUBELET_CA_PATH" in str(info.value) and "missing.pem" in str(info.value)
    with pytest.raises(KubeletError) as info:
        KubeletClient(
            KubeletSettings(
                ca_path=pki.ca_path,
                client_cert_path=pki.client_cert_path,
                client_key_path=pki.ca_path,  # not a key
            )
        )
    assert isinstance(info.value, KubeletCredentialsError)
    assert "KUBELET_CLIENT_CERT_PATH" in str(info.value)


# -- authentication and TLS -----------------------------------------------------------------


async def test_token_auth_ok_and_token_reread_each_request(kubelet: FakeKubelet, pki: Pki) -> None:
    kubelet.set_pods([pod("a", UID_A)])
    async with KubeletClient(settings_for(kubelet, pki)) as kc:
        pods = await kc.pods()
        assert [p["metadata"]["uid"] for p in pods] == [UID_A]
        # A projected token rotates under the running agent: the next request uses the new one.
        await trio.Path(pki.token_path).write_text("kubelet-token-2")
        kubelet.set_token("kubelet-token-2")
        assert len(await kc.pods()) == 1
    assert [r.authorization for r in kubelet.requests()] == [
        f"Bearer {TOKEN}",
        "Bearer kubelet-token-2",
    ]


async def test_wrong_token_is_401_with_a_clear_message(kubelet: FakeKubelet, pki: Pki) -> None:
    await trio.Path(pki.token_path).write_text("not-the-token")
    err = await kubelet_error(settings_for(kubelet, pki))
    assert isinstance(err, KubeletUnauthorized)
    assert "401 unauthorized" in str(err)
    assert f"KUBELET_TOKEN_PATH={pki.token_path}" in str(err)


async def test_no_credentials_is_401_saying_none_were_sent(kubelet: FakeKubelet, pki: Pki) -> None:
    err = await kubelet_error(settings_for(kubelet, pki, token_path=None))
    assert isinstance(err, KubeletUnauthorized)
    assert "no credentials" in str(err)
    assert kubelet.requests()[0].authorization is None


async def test_forbidden_names_the_rbac_subresource(kubelet: FakeKubelet, pki: Pki) -> None:
    kubelet.fail_next(2, status=403)
    err = await kubelet_error(settings_for(kubelet, pki))
    assert isinstance(err, KubeletForbidden)
    assert "RBAC" in str(err) and "nodes/proxy" in str(err)
    # The kubelet's own denial text is kept: it names the user the kubelet saw.
    assert "system:serviceaccount:kube-system:diskguard" in str(err)
    err = await kubelet_error(settings_for(kubelet, pki), "cadvisor_metrics")
    assert "nodes/metrics" in str(err)


async def test_unreadable_or_empty_token_file(kubelet: FakeKubelet, pki: Pki) -> None:
    err = await kubelet_error(settings_for(kubelet, pki, token_path=pki.token_path + ".gone"))
    assert isinstance(err, KubeletCredentialsError) and "KUBELET_TOKEN_PATH" in str(err)
    await trio.Path(pki.token_path).write_text("\n")
    err = await kubelet_error(settings_for(kubelet, pki))
    assert isinstance(err, KubeletCredentialsError) and "no usable bearer token" in str(err)
    await trio.Path(pki.token_path).write_text("abc\r\nX-Injected: 1")
    err = await kubelet_error(settings_for(kubelet, pki))
    assert isinstance(err, KubeletCredentialsError)
    assert kubelet.requests() == []  # nothing left the agent


async def test_client_certificate_auth(pki: Pki) -> None:
    with FakeKubelet(server_tls_context(pki.ca, client_ca=pki.client_ca)) as fake:
        fake.set_pods([pod("a", UID_A)])
        ok = settings_for(
            fake,
            pki,
            token_path=None,
            client_cert_path=pki.client_cert_path,
            client_key_path=pki.client_key_path,
        )
        async with KubeletClient(ok) as kc:
            assert len(await kc.pods()) == 1

        # Hypercorn drops the connection without flushing the TLS alert: all the client
        # sees is a connection cut before any answer.
        err = await kubelet_error(settings_for(fake, pki, token_path=None))
        assert isinstance(err, KubeletTLSError | KubeletDropped)
        assert "client certificate" in str(err) and "KUBELET_CLIENT_CERT_PATH" in str(err)


@pytest.fixture
def alerting_server(pki: Pki) -> Iterator[int]:
    """A TLS server requiring a client certificate that, like Go's, delivers the TLS alert
    before it closes (hypercorn does not). Yields its port."""
    context = server_tls_context(pki.ca, client_ca=pki.client_ca)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the loop sees `stop`: close() does not wake accept()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            with tls, contextlib.suppress(ssl.SSLError, OSError):
                try:
                    tls.do_handshake()  # sends the alert: no client certificate
                finally:
                    # Closing at once would reset the connection before the client reads
                    # the alert (it has sent a request nobody read).
                    time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


async def test_tls_alert_for_a_missing_client_certificate(alerting_server: int, pki: Pki) -> None:
    s = KubeletSettings(host="localhost", port=alerting_server, ca_path=pki.ca_path)
    err = await kubelet_error(s)
    assert isinstance(err, KubeletTLSError)
    assert "CERTIFICATE_REQUIRED" in str(err)
    assert "requires a TLS client certificate and none is configured" in str(err)


async def test_client_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    stranger = trustme.CA().issue_cert("someone")
    cert, key = tmp_path / "s.crt", tmp_path / "s.key"
    stranger.cert_chain_pems[0].write_to_path(str(cert))
    stranger.private_key_pem.write_to_path(str(key))
    with FakeKubelet(server_tls_context(pki.ca, client_ca=pki.client_ca)) as fake:
        err = await kubelet_error(
            settings_for(
                fake, pki, token_path=None, client_cert_path=str(cert), client_key_path=str(key)
            )
        )
    assert isinstance(err, KubeletTLSError | KubeletDropped)
    assert f"KUBELET_CLIENT_CERT_PATH={cert}" in str(err)


async def test_wrong_ca_is_a_tls_verification_error(
    kubelet: FakeKubelet, pki: Pki, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    err = await kubelet_error(settings_for(kubelet, pki, ca_path=str(other)))
    assert isinstance(err, KubeletTLSError)
    message = str(err)
    assert "TLS verification of the kubelet's serving certificate failed" in message
    assert f"KUBELET_CA_PATH={other}" in message and "KUBELET_SKIP_VERIFY" in message
    assert kubelet.requests() == []  # the token never left: the handshake failed first


async def test_certificate_for_another_name_is_a_tls_verification_error(pki: Pki) -> None:
    with FakeKubelet(server_tls_context(pki.ca, names=("node-7.example",)), token=TOKEN) as fake:
        err = await kubelet_error(settings_for(fake, pki, host="127.0.0.1"))
    assert isinstance(err, KubeletTLSError)
    assert "TLS verification" in str(err) and "'127.0.0.1'" in str(err)
    assert "KUBELET_HOST" in str(err)


async def test_skip_verify_trusts_any_certificate_and_warns_once(
    kubelet: FakeKubelet, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    kubelet.set_pods([pod("a", UID_A), pod("b", UID_B)])
    caplog.set_level(logging.WARNING, logger="diskguard.kube.kubelet")
    async with KubeletClient(
        settings_for(kubelet, pki, ca_path=str(other), skip_verify=True)
    ) as kc:
        for _ in range(3):
            assert len(await kc.pods()) == 2
    warnings = [r for r in caplog.records if "KUBELET_SKIP_VERIFY" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].kubelet == f"https://localhost:{kubelet.port}"  # type: ignore[attr-defined]
    assert "bearer token" in warnings[0].risk  # type: ignore[attr-defined]


async def test_down_kubelet_is_connection_refused(kubelet: FakeKubelet, pki: Pki) -> None:
    kubelet.go_down()
    err = await kubelet_error(settings_for(kubelet, pki))
    assert isinstance(err, KubeletUnreachable)
    assert "connection refused" in str(err) and "KUBELET_PORT" in str(err)


async def test_timeout_server_error_and_bad_bodies(kubelet: FakeKubelet, pki: Pki) -> None:
    s = settings_for(kubelet, pki, timeout=0.3)
    kubelet.fail_next(status=None, delay=3.0)
    err = await kubelet_error(s)
    assert isinstance(err, KubeletTimeout) and "timed out after 0.3s" in str(err)
    kubelet.clear_faults()

    kubelet.fail_next(status=500, body="boom")
    err = await kubelet_error(s)
    assert isinstance(err, KubeletHTTPError) and "HTTP 500: boom" in str(err)

    kubelet.fail_next(status=200, body="<html>not json</html>")
    err = await kubelet_error(s)
    assert isinstance(err, KubeletBadResponse) and "not JSON" in str(err)

    kubelet.fail_next(status=200, body='{"kind": "Status", "items": "nope"}')
    err = await kubelet_error(s)
    assert isinstance(err, KubeletBadResponse) and "not a PodList" in str(err)


async def test_cadvisor_metrics_over_tls(kubelet: FakeKubelet, pki: Pki) -> None:
    kubelet.set_metrics(CADVISOR)
    async with KubeletClient(settings_for(kubelet, pki)) as kc:
        text = await kc.cadvisor_metrics()
    assert text == CADVISOR
    assert kubelet.requests()[0].path == "/metrics/cadvisor"


# -- the pod source -------------------------------------------------------------------------


async def next_event(receive: trio.MemoryReceiveChannel[WatchEvent], timeout: float = 10) -> Any:
    with trio.fail_after(timeout):
        return await receive.receive()


async def requests_reach(fake: FakeKubelet, count: int) -> None:
    # Waiting blocks a thread, not this test's loop (the source polls on this loop).
    await trio.to_thread.run_sync(fake.wait_for_requests, count, 10.0)


def assert_quiet(receive: trio.MemoryReceiveChannel[WatchEvent]) -> None:
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_pod_source_relists_only_on_change(kubelet: FakeKubelet, pki: Pki) -> None:
    kubelet.set_pods([pod("a", UID_A, CID_1), pod("elsewhere", UID_B, node="node-2")])
    send, receive = trio.open_memory_channel[WatchEvent](10)
    health = KubeletSourceHealth()
    async with KubeletClient(settings_for(kubelet, pki)) as kc, trio.open_nursery() as nursery:
        nursery.start_soon(run_kubelet_pod_source, kc, NODE, send, 0.02, health)

        first = await next_event(receive)
        assert isinstance(first, Relisted)
        assert (first.resource_version, first.resource) == ("", "pods")
        assert [p["metadata"]["name"] for p in first.objects] == ["a"]  # other node dropped

        await requests_reach(kubelet, 6)
        assert_quiet(receive)  # five more polls, same content: nothing sent

        # A new container ID in the status (no new resourceVersion) is a change.
        kubelet.set_pods([pod("a", UID_A, CID_2)])
        changed = await next_event(receive)
        assert changed.objects[0]["status"]["containerStatuses"][0]["containerID"].endswith(CID_2)

        # Failed polls send nothing (the reconciler keeps its view), then recover quietly.
        seen = len(kubelet.requests())
        kubelet.fail_next(2, status=503)
        await requests_reach(kubelet, seen + 4)
        assert_quiet(receive)
        assert health.failures == 2 and health.failing_since is None
        assert health.relists == 2

        kubelet.set_pods([])
        emptied = await next_event(receive)
        assert emptied.objects == ()
        nursery.cancel_scope.cancel()


def test_pod_list_changes_ignores_order() -> None:
    a, b = pod("a", UID_A, CID_1), pod("b", UID_B, CID_2)
    changes = PodListChanges()
    assert changes.changed([a, b])
    assert not changes.changed([b, a])
    assert changes.changed([a])
    changes.reset()
    assert changes.changed([a])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def active(selector: SourceSelector) -> Source:
    # Read through a call: mypy would keep the narrowing of an earlier assert.
    return selector.active


def test_selector_falls_back_after_n_consecutive_failures_and_probes() -> None:
    clock = FakeClock()
    sel = SourceSelector(clock, failures_to_fall_back=3, retry_interval=30.0)
    assert sel.active is Source.KUBELET
    # Failures that are not consecutive never add up.
    for _ in range(5):
        assert not sel.kubelet_failed()
        assert not sel.kubelet_failed()
        assert not sel.kubelet_succeeded()
    assert sel.active is Source.KUBELET and not sel.probe_due()

    assert not sel.kubelet_failed()
    assert not sel.kubelet_failed()
    assert sel.kubelet_failed()  # the third in a row
    assert active(sel) is Source.API and sel.switches == 1
    assert sel.probe_at == 1030.0

    clock.now = 1029.9
    assert not sel.probe_due()
    clock.now = 1030.0
    assert sel.probe_due()
    assert not sel.kubelet_failed()  # a failed probe waits another interval
    assert active(sel) is Source.API and sel.probe_at == 1060.0 and not sel.probe_due()

    clock.now = 1060.0
    assert sel.probe_due()
    assert sel.kubelet_succeeded()
    assert active(sel) is Source.KUBELET and sel.switches == 2
    assert sel.probe_at is None and sel.consecutive_failures == 0 and not sel.probe_due()

    # Back on the kubelet, it again takes three failures in a row to fall back.
    assert not sel.kubelet_failed() and not sel.kubelet_failed()
    assert sel.kubelet_failed() and sel.switches == 3


def test_selector_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="failures_to_fall_back"):
        SourceSelector(FakeClock(), failures_to_fall_back=0)
    with pytest.raises(ValueError, match="retry_interval"):
        SourceSelector(FakeClock(), retry_interval=0)


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    with FakeAPIServer(bookmark_interval=0.2) as server:
        yield server


async def test_falls_back_to_the_api_watch_and_switches_back(
    kubelet: FakeKubelet, pki: Pki, api: FakeAPIServer, tmp_path: Path
) -> None:
    # Different pods on each side so every event shows which source sent it.
    kubelet.set_pods([pod("from-kubelet", UID_A, CID_1)])
    api.create("pods", pod("from-api", UID_B, CID_2))
    cfg = client.Configuration()
    config.load_kube_config(
        config_file=api.write_kubeconfig(tmp_path / "kubeconfig"), client_configuration=cfg
    )
    core = CoreApi(client.ApiClient(cfg))

    send, receive = trio.open_memory_channel[WatchEvent](100)
    watcher = ListWatcher(
        "pods",
        functools.partial(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={NODE}"),
        send.clone(),
    )
    selector = SourceSelector(trio.current_time, failures_to_fall_back=3, retry_interval=0.3)
    health = KubeletSourceHealth()
    watch_runs: list[str] = []
    switched: list[Source] = []

    async def api_watch() -> None:
        watch_runs.append("started")
        try:
            await watcher.run()
        finally:
            watch_runs.append("ended")

    def names(event: Relisted[Any]) -> list[str]:
        return [p["metadata"]["name"] for p in event.objects]

    try:
        async with KubeletClient(settings_for(kubelet, pki)) as kc, trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    run_pod_source,
                    kc,
                    NODE,
                    send,
                    interval=0.05,
                    health=health,
                    selector=selector,
                    api_watch=api_watch,
                    on_switch=switched.append,
                )
            )
            first = await next_event(receive)
            assert isinstance(first, Relisted) and names(first) == ["from-kubelet"]
            assert first.resource_version == ""
            assert watch_runs == []  # the API is not watched while the kubelet answers

            kubelet.go_down()
            fallback = await next_event(receive)
            assert isinstance(fallback, Relisted) and names(fallback) == ["from-api"]
            assert watch_runs == ["started"] and switched == [Source.API]
            assert fallback.resource_version != ""  # the API server's list, in full
            assert selector.active is Source.API and selector.switches == 1
            assert health.failures >= 3 and "connection refused" in health.last_error

            # While on the API, its changes flow as watch events.
            await trio.to_thread.run_sync(api.wait_for_watches, 1)
            api.create("pods", pod("added-later", "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"))
            added = await next_event(receive)
            assert isinstance(added, Changed) and added.kind == "ADDED"
            assert added.object["metadata"]["name"] == "added-later"

            kubelet.come_back()
            back = await next_event(receive)
            assert isinstance(back, Relisted) and names(back) == ["from-kubelet"]
            assert back.resource_version == "" and active(selector) is Source.KUBELET
            assert selector.switches == 2 and switched == [Source.API, Source.KUBELET]

            # The watch ended before the kubelet's snapshot was sent; API changes no longer
            # reach the channel while kubelet polls go on.
            assert watch_runs == ["started", "ended"]
            api.create("pods", pod("ignored", "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"))
            seen = len(kubelet.requests())
            await requests_reach(kubelet, seen + 5)
            assert_quiet(receive)
            nursery.cancel_scope.cancel()
    finally:
        core.api_client.close()


# -- cAdvisor ------------------------------------------------------------------------------

# A kubelet's /metrics/cadvisor (containerd, systemd cgroup driver), trimmed to two pods:
# HELP/TYPE lines, sorted labels, ms timestamps, the root cgroup "/", a pod-level series
# (container=""), the sandbox ("POD"), two disks, a series without a device label (whose
# `name` label holds an escaped `pod="evil"`) and unrelated metrics around them.
CADVISOR = (Path(__file__).parent / "data" / "kubelet_metrics_cadvisor.prom").read_text()
T1 = 1728588770767

DB = PodContainer("shop", "db-0", "app")
SIDECAR = PodContainer("shop", "db-0", "log-shipper")
REDIS = PodContainer("cache", "db-0", "app")  # same pod and container names, other namespace


def test_cadvisor_sums_devices_and_skips_pod_level_and_sandbox_series() -> None:
    parsed = parse_cadvisor(CADVISOR)
    assert set(parsed) == {DB, SIDECAR, REDIS}  # no root "/", no container="" or "POD"
    assert parsed[REDIS].counters == Counters(rios=4, wios=2, rbytes=512, wbytes=8192)
    assert parsed[DB] == ContainerIO(
        Counters(rios=9 + 2048, wios=10240, rbytes=36864 + 8388608, wbytes=41943040),
        T1 / 1000,
    )
    # No device label: counted when every device counts (and the `name` label's embedded
    # `pod=` did not confuse the labels).
    assert parsed[SIDECAR].counters == Counters(rios=10, wios=5, rbytes=1000, wbytes=500)


def test_cadvisor_device_filter() -> None:
    for names in ({"vdb"}, {"/dev/vdb"}, ["vdb", "/dev/nvme0n1"]):
        parsed = parse_cadvisor(CADVISOR, devices=names)
        # Only the data disk; the sidecar's series cannot be placed on a disk: left out.
        assert set(parsed) == {DB, REDIS}
        assert parsed[DB].counters == Counters(
            rios=2048, wios=10240, rbytes=8388608, wbytes=41943040
        )
    assert parse_cadvisor(CADVISOR, devices={"sdz"}) == {}


def test_cadvisor_without_timestamps_and_odd_values() -> None:
    text = (
        "# TYPE container_fs_reads_total counter\n"
        'container_fs_reads_total{container="c",device="/dev/vdb",namespace="n",pod="p"} 5\n'
        'container_fs_reads_total{container="c",device="/dev/vdc",namespace="n",pod="p"} NaN\n'
        'container_fs_reads_total{container="c",device="/dev/vdd",namespace="n",pod="p"} -3\n'
    )
    parsed = parse_cadvisor(text)
    assert parsed == {PodContainer("n", "p", "c"): ContainerIO(Counters(rios=5), None)}
    assert parse_cadvisor("") == {}


def test_cadvisor_garbage_is_a_parse_error() -> None:
    with pytest.raises(CadvisorParseError, match="not valid Prometheus text"):
        parse_cadvisor('container_fs_reads_total{container="c" 5 oops\n')


def io(rios: int, wbytes: int, at: float | None) -> ContainerIO:
    return ContainerIO(Counters(rios=rios, wbytes=wbytes), at)


def test_rate_tracker_uses_cadvisor_collection_times() -> None:
    clock = FakeClock()
    tracker = CadvisorRateTracker(clock)
    assert tracker.update({DB: io(100, 1000, 50.0)}) == {}  # a baseline only
    clock.now += 5
    assert tracker.update({DB: io(100, 1000, 50.0)}) == {}  # scraped, not re-collected
    clock.now += 5
    rates = tracker.update({DB: io(300, 6000, 60.0)})  # collected 10 s after the baseline
    assert rates == {DB: Rates(riops=20.0, wbps=500.0)}
    assert tracker.latest()[DB].interval == 10.0

    # cAdvisor restarted: its clock is fine but the counters start over -> never negative.
    clock.now += 10
    rates = tracker.update({DB: io(40, 200, 70.0)})
    assert rates == {DB: Rates(riops=4.0, wbps=20.0)}
    assert all(v >= 0 for v in attrs.astuple(rates[DB]))

    # A collection time going backwards is a new baseline, not a rate.
    clock.now += 10
    assert tracker.update({DB: io(50, 300, 10.0)}) == {}
    clock.now += 10
    assert tracker.update({DB: io(60, 400, 20.0)}) == {DB: Rates(riops=1.0, wbps=10.0)}


def test_rate_tracker_clock_fallback_and_containers_coming_and_going() -> None:
    clock = FakeClock()
    tracker = CadvisorRateTracker(clock)
    tracker.update({DB: io(0, 0, None)})
    clock.now += 2
    assert tracker.update({DB: io(10, 100, None), SIDECAR: io(5, 5, None)}) == {
        DB: Rates(riops=5.0, wbps=50.0)
    }
    assert tracker.containers == {DB, SIDECAR}
    clock.now += 2
    # DB left; SIDECAR gets its first rate.
    assert tracker.update({SIDECAR: io(9, 25, None)}) == {SIDECAR: Rates(riops=2.0, wbps=10.0)}
    assert tracker.containers == {SIDECAR} and DB not in tracker.latest()
    clock.now += 2
    # DB is back (a new container in the same slot): a fresh baseline, no huge first rate.
    assert tracker.update({DB: io(1_000_000, 0, None), SIDECAR: io(9, 25, None)}) == {
        SIDECAR: Rates()
    }
    # No time passed: nothing to measure, the baseline stays.
    assert tracker.update({DB: io(1_000_010, 0, None)}) == {}
    clock.now += 1
    assert tracker.update({DB: io(1_000_010, 0, None)})[DB].riops == 10.0


async def test_cadvisor_end_to_end_from_the_fake_kubelet(kubelet: FakeKubelet, pki: Pki) -> None:
    clock = FakeClock()
    tracker = CadvisorRateTracker(clock)
    later = CADVISOR.replace(str(T1), str(T1 + 15_000)).replace("4.194304e+07", "8.388608e+07")
    async with KubeletClient(settings_for(kubelet, pki)) as kc:
        for text in (CADVISOR, later):
            kubelet.set_metrics(text)
            payload = await kc.cadvisor_metrics()
            snapshot = await trio.to_thread.run_sync(parse_cadvisor, payload, {"/dev/vdb"})
            rates = tracker.update(snapshot)
    assert set(rates) == {DB, REDIS}
    assert math.isclose(rates[DB].wbps, 41943040 / 15)
    assert rates[REDIS] == Rates()
    assert rates[DB].riops == 0.0
