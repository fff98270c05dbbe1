"""The one HTTP listener model: dual-stack on every address (IPv4 alone where there is no
IPv6), /status only for loopback clients with STATUS_LOCALHOST_ONLY, /metrics and the
probes for everyone, and `diskguard status` reading /status on the node."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import pytest
import trio

from diskguard.config import ListenAddress
from diskguard.model import IOLimits
from diskguard.web import server as web
from tests.agent.conftest import Cluster, P


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of the dual-stack socket
        ("10.244.1.7", False),
        ("::ffff:10.244.1.7", False),
        ("fd00::17", False),
        ("fe80::1%eth0", False),
        ("", False),
        (None, False),
        ("localhost", False),  # peers are addresses, never names
    ],
)
def test_loopback_peers(host: str | None, loopback: bool) -> None:
    assert web.is_loopback(host) is loopback


def test_without_ipv6_every_address_means_ipv4() -> None:
    families = []

    def no_ipv6(family: int, kind: int) -> socket.socket:
        families.append(family)
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return socket.socket(family, kind)

    # Port 0 on every address is never listened on here, only bound and closed.
    sock = web.listen_socket(ListenAddress("", 0), make_socket=no_ipv6)
    with sock:
        assert families == [socket.AF_INET6, socket.AF_INET]
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"


def test_other_socket_errors_are_not_taken_for_missing_ipv6() -> None:
    def busy(family: int, kind: int) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(OSError, match="Too many open files"):
        web.listen_socket(ListenAddress("", 0), make_socket=busy)


def test_a_named_address_gets_its_own_family() -> None:
    with web.listen_socket(ListenAddress("127.0.0.1", 0)) as v4:
        assert v4.family == socket.AF_INET
    with web.listen_socket(ListenAddress("::1", 0)) as v6:
        assert v6.family == socket.AF_INET6


# Runs in a network namespace of its own (only its loopback exists there), so listening on
# every address exposes nothing: both families reach the one socket.
_DUAL_STACK = textwrap.dedent(
    """
    import json, socket
    from diskguard.web import server as web
    from diskguard.config import ListenAddress
    sock = web.listen_socket(ListenAddress("", 0))
    sock.listen()
    port = sock.getsockname()[1]
    seen = {}
    for host in ("127.0.0.1", "::1"):
        client = socket.create_connection((host, port), timeout=5)
        peer = sock.accept()[0]
        seen[host] = [peer.getpeername()[0], web.is_loopback(peer.getpeername()[0])]
        peer.close(); client.close()
    v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    print(json.dumps({"family": int(sock.family), "v6only": v6only, "seen": seen}))
    """
)


@pytest.mark.kernel
@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")),
    reason="needs root, unshare and ip for a network namespace",
)
def test_every_address_is_one_dual_stack_socket() -> None:
    script = f"ip link set lo up && exec {sys.executable} -c '{_DUAL_STACK}'"
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["family"] == socket.AF_INET6 and found["v6only"] == 0
    assert found["seen"] == {
        "127.0.0.1": ["::ffff:127.0.0.1", True],
        "::1": ["::1", True],
    }


# -- /status for loopback clients only ---------------------------------------------------


async def _get(agent: Any, path: str, client: str) -> httpx.Response:
    """`path` from the real agent's app, as a peer at address `client` sees it."""
    transport = httpx.ASGITransport(app=web.build_app(agent), client=(client, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
        return await http.get(path)


@pytest.mark.kernel
async def test_status_answers_loopback_only_and_the_rest_answers_everyone(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    running = await start_agent()
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 100))
    agent = running.agent
    assert agent.config.status_localhost_only  # the default
    # over the real socket, from loopback
    async with httpx.AsyncClient(base_url=agent.http_binds[0]) as http:
        assert (await http.get("/status")).status_code == 200
    for peer in ("::ffff:127.0.0.1", "::1"):
        assert (await _get(agent, "/status", peer)).status_code == 200
    for peer in ("10.244.1.7", "::ffff:10.244.1.7", "fd00::17"):
        refused = await _get(agent, "/status?namespace=default", peer)
        assert refused.status_code == 403, peer
        assert "STATUS_LOCALHOST_ONLY" in refused.text and "web" not in refused.text
        for path in ("/metrics", "/healthz", "/readyz"):
            assert (await _get(agent, path, peer)).status_code == 200, (path, peer)


@pytest.mark.kernel
async def test_status_for_everyone_when_the_administrator_says_so(
    cluster: Cluster, start_agent: Any
) -> None:
    cluster.add_pod("web")
    running = await start_agent(STATUS_LOCALHOST_ONLY="false")
    reply = await _get(running.agent, "/status", "10.244.1.7")
    assert reply.status_code == 200 and reply.json()["node"] == "node-1"


# -- `diskguard status` -----------------------------------------------------------------


async def _status_cli(cluster: Cluster, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **cluster.env(HTTP_ADDR=f":{port}"),
    }
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "diskguard", "status", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )


@pytest.mark.kernel
async def test_status_command_reads_the_agent_on_this_node(
    cluster: Cluster, start_agent: Any
) -> None:
    pod = cluster.add_pod("web", annotations={f"{P}/write-iops": "100"})
    cluster.add_pod("other", namespace="shop")
    running = await start_agent()  # on 127.0.0.1:<free port>
    await cluster.wait_kernel(cluster.cgroup(cluster.refs(pod)[0]), IOLimits(500, 100))
    port = int(running.agent.http_binds[0].rpartition(":")[2])

    shown = await _status_cli(cluster, port)
    assert shown.returncode == 0, shown.stderr
    assert "node node-1  ready" in shown.stdout
    assert "default/web/" in shown.stdout and "500/100/-/-" in shown.stdout
    assert "warning: no ceiling configured" in shown.stdout  # the test env sets none

    filtered = await _status_cli(cluster, port, "--json", "--namespace", "shop")
    document = json.loads(filtered.stdout)
    assert {c["pod"] for c in document["containers"]} == {"other"}
    assert document["warnings"] and document["smart_limit"]["access"] is None


@pytest.mark.kernel
async def test_status_command_says_when_no_agent_answers(cluster: Cluster) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        failed = await _status_cli(cluster, port)
    assert failed.returncode == 1
    assert f"no agent answers at http://127.0.0.1:{port}/status" in failed.stderr
