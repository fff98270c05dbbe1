"""`diskguard status`: the running agent's /status, read on its node.

With STATUS_LOCALHOST_ONLY (the default) /status answers only the pod's loopback, so this
runs inside the agent's pod (`kubectl -n diskguard-system exec <pod> -- diskguard status`)
and asks the port HTTP_ADDR names, on loopback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from diskguard.config import Config, ListenAddress
from diskguard.model import LimitField
from diskguard.policy.values import Unlimited, render_limit


class StatusUnavailable(Exception):
    pass


def status_url(address: ListenAddress) -> str:
    """Where to ask: loopback when the agent listens on every address."""
    if address.every_address:
        return f"http://127.0.0.1:{address.port}/status"
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"http://{host}:{address.port}/status"


def fetch_status(
    config: Config, namespace: str | None, pod: str | None, timeout: float = 10.0
) -> dict[str, Any]:
    url = status_url(config.http_addr)
    params = {k: v for k, v in (("namespace", namespace), ("pod", pod)) if v}
    try:
        reply = httpx.get(url, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StatusUnavailable(
            f"no agent answers at {url} ({type(exc).__name__}: {exc}); run this in the "
            f"agent's pod, with its HTTP_ADDR"
        ) from None
    if reply.status_code != 200:
        raise StatusUnavailable(f"{url} answered {reply.status_code}: {reply.text.strip()[:300]}")
    body = reply.json()
    if not isinstance(body, dict):
        raise StatusUnavailable(f"{url} answered something that is not a status object")
    return body


def _limits(limits: Mapping[str, int | None] | None) -> str:
    if not limits:
        return "-"
    return "/".join(render_limit(limits.get(k), Unlimited.TABLE) for k in LimitField)


def render(status: Mapping[str, Any], echo: Callable[[str], None]) -> None:
    """A short human summary; --json prints the whole document instead."""
    ready = "ready" if status.get("ready") else f"NOT READY: {status.get('readiness_problem')}"
    cgroup = status.get("cgroup") or {}
    echo(
        f"node {status.get('node')}  {ready}  diskguard {status.get('version')}  "
        f"cgroup {cgroup.get('version')}"
    )
    for warning in status.get("warnings") or []:
        echo(f"warning: {warning}")
    smart = status.get("smart_limit") or {}
    access = smart.get("access") or {}
    line = f"smart limit: {'on' if smart.get('enabled') else 'off'}"
    if access.get("problem"):
        line += f" ({access['problem']})"
    echo(line)
    echo(f"limits as {'/'.join(LimitField)} ({Unlimited.TABLE} = none)")
    echo(f"{'CONTAINER':<60} {'DESIRED':<28} {'KERNEL':<28} SYNC")
    for c in status.get("containers") or []:
        name = f"{c['namespace']}/{c['pod']}/{c['container']}"
        wanted = (c.get("desired") or {}).get("limits")
        desired = "excluded" if c.get("excluded") else _limits(wanted)
        kernel = ", ".join(_limits(v) for v in (c.get("kernel") or {}).values()) or "-"
        sync = "yes" if c.get("in_sync") else "NO"
        echo(f"{name:<60} {desired:<28} {kernel:<28} {sync}")
        if c.get("error"):
            echo(f"    error: {c['error']}")
