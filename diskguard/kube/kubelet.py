"""The kubelet's read-only HTTPS API: `/pods` and `/metrics/cadvisor`.

httpx's AsyncClient runs natively on trio (httpcore picks its trio backend), so a request
is cancelled with its task and its timeouts are enforced on the loop: no worker thread to
shut down, unlike the sync kubernetes client in watch.py. TLS is one `ssl.SSLContext` built
at start-up (CA, client certificate); the bearer token is re-read on every request because
projected service-account tokens rotate under a running pod.

Every failure becomes a `KubeletError` whose message says what to check.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
import trio

from diskguard.config import KubeletSettings
from diskguard.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0

# RFC 6750 b64token: what can follow "Bearer " in a header without smuggling anything.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


# -- errors -------------------------------------------------------------------------------


class KubeletError(Exception):
    """A kubelet request that failed: one subclass per kind of failure, the message says
    what to check."""


class KubeletCredentialsError(KubeletError):
    """Our own TLS material or token file is unusable."""


class KubeletTLSError(KubeletError):
    """The server certificate is not trusted, or the handshake was refused."""


class KubeletUnauthorized(KubeletError):
    """401: the kubelet did not accept our credentials."""


class KubeletForbidden(KubeletError):
    """403: authenticated but not authorized (RBAC)."""


class KubeletUnreachable(KubeletError):
    """Refused, no route, DNS."""


class KubeletDropped(KubeletError):
    """Connected, then cut without an answer (often: our client certificate refused)."""


class KubeletTimeout(KubeletError):
    pass


class KubeletHTTPError(KubeletError):
    """Any other non-200 status."""


class KubeletBadResponse(KubeletError):
    """200 with a body we cannot use."""


# The kubelet authorizes each path as a subresource of `nodes` (kubelet authz docs).
_SUBRESOURCE = {"/pods": "proxy", "/metrics/cadvisor": "metrics"}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes/contexts, and the members of any exception group on the way."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                stack.append(nxt)


def _first(exc: BaseException, kind: type[T]) -> T | None:
    for e in _causes(exc):
        if isinstance(e, kind):
            return e
    return None


def _client_cert_hint(settings: KubeletSettings) -> str:
    if settings.client_cert_path:
        return (
            "check that the kubelet trusts our client certificate "
            f"KUBELET_CLIENT_CERT_PATH={settings.client_cert_path}"
        )
    return (
        "if it requires a TLS client certificate, set KUBELET_CLIENT_CERT_PATH and "
        "KUBELET_CLIENT_KEY_PATH"
    )


def describe_transport_error(
    exc: httpx.HTTPError, settings: KubeletSettings, url: str
) -> KubeletError:
    """Map an httpx failure to what went wrong and what to check."""
    where = f"kubelet request GET {url}"
    verify = _first(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        trusted = (
            f"the CA bundle KUBELET_CA_PATH={settings.ca_path}"
            if settings.ca_path
            else "the system trust store (no KUBELET_CA_PATH and no in-cluster CA)"
        )
        return KubeletTLSError(
            f"{where}: TLS verification of the kubelet's serving certificate failed "
            f"({verify.verify_message or verify}); it was checked against {trusted} for the "
            f"name {settings.host!r}. Set KUBELET_CA_PATH to the CA that signed the kubelet's "
            "serving certificate and KUBELET_HOST to a name the certificate holds (often the "
            "node IP), or KUBELET_SKIP_VERIFY=true to trust it blindly"
        )
    tls = _first(exc, ssl.SSLError)
    if tls is not None:
        alert = str(tls.reason or tls)
        if "CERTIFICATE_REQUIRED" in alert and not settings.client_cert_path:
            hint = (
                "the kubelet requires a TLS client certificate and none is configured: set "
                "KUBELET_CLIENT_CERT_PATH and KUBELET_CLIENT_KEY_PATH"
            )
        else:
            hint = _client_cert_hint(settings)
        return KubeletTLSError(f"{where}: TLS handshake failed ({alert}): {hint}")
    if isinstance(exc, httpx.TimeoutException):
        return KubeletTimeout(
            f"{where}: timed out after {settings.timeout:g}s ({type(exc).__name__})"
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        # A server that requires a client certificate refuses it after a TLS 1.3 handshake
        # has already completed on our side: the client may only see the connection drop.
        hint = _client_cert_hint(settings)
        return KubeletDropped(
            f"{where}: the kubelet dropped the connection without answering "
            f"({type(exc).__name__}); {hint}"
        )
    if _first(exc, ConnectionRefusedError) is not None:
        return KubeletUnreachable(
            f"{where}: connection refused: is the kubelet listening on "
            f"{settings.host}:{settings.port}? (KUBELET_HOST, KUBELET_PORT)"
        )
    detail = next((str(e) for e in _causes(exc) if str(e)), type(exc).__name__)
    return KubeletUnreachable(f"{where}: {detail}")


def describe_status(response: httpx.Response, settings: KubeletSettings, path: str) -> KubeletError:
    where = f"kubelet request GET {settings.base_url}{path}"
    body = response.text.strip().replace("\n", " ")[:300]
    status = response.status_code
    if status == 401:
        auth = []
        if settings.token_path:
            auth.append(f"the bearer token in KUBELET_TOKEN_PATH={settings.token_path}")
        if settings.client_cert_path:
            auth.append(
                f"the client certificate KUBELET_CLIENT_CERT_PATH={settings.client_cert_path}"
            )
        sent = " and ".join(auth) if auth else "no credentials (no token, no client certificate)"
        return KubeletUnauthorized(
            f"{where}: 401 unauthorized: the kubelet did not accept {sent}; check the token / "
            "client certificate (the kubelet needs --authentication-token-webhook for tokens)"
        )
    if status == 403:
        sub = _SUBRESOURCE.get(path, "proxy")
        return KubeletForbidden(
            f"{where}: 403 forbidden: authenticated but not authorized: check RBAC, the agent's "
            f"service account needs `get` on nodes/{sub} ({body})"
        )
    return KubeletHTTPError(f"{where}: HTTP {status}: {body or response.reason_phrase}")


# -- the client ---------------------------------------------------------------------------


def build_ssl_context(settings: KubeletSettings) -> ssl.SSLContext:
    """Verification against the CA (or none), plus the client certificate if configured."""
    if settings.skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=settings.ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise KubeletCredentialsError(
                f"KUBELET_CA_PATH={settings.ca_path}: cannot load the CA bundle: {exc}"
            ) from None
    if settings.client_cert_path and settings.client_key_path:
        try:
            context.load_cert_chain(settings.client_cert_path, settings.client_key_path)
        except (OSError, ssl.SSLError) as exc:
            raise KubeletCredentialsError(
                f"KUBELET_CLIENT_CERT_PATH={settings.client_cert_path} / KUBELET_CLIENT_KEY_PATH="
                f"{settings.client_key_path}: cannot load the client certificate and key: {exc}"
            ) from None
    return context


class KubeletClient:
    """Async client for one kubelet. Build it at start-up (loads TLS files), then
    `async with client:` or `await client.aclose()` at the end."""

    def __init__(self, settings: KubeletSettings) -> None:
        self.settings = settings
        if settings.skip_verify:
            risk = "anyone who can intercept it can impersonate the kubelet"
            if settings.token_path:
                risk += " and read the bearer token we send"
            log.warning(
                "KUBELET_SKIP_VERIFY=true: the kubelet's serving certificate is NOT verified",
                kubelet=settings.base_url,
                risk=risk,
            )
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            verify=build_ssl_context(settings),
            timeout=httpx.Timeout(settings.timeout, connect=min(CONNECT_TIMEOUT, settings.timeout)),
            # The kubelet is local: proxy variables of the pod must not reroute it.
            trust_env=False,
            follow_redirects=False,
        )

    async def __aenter__(self) -> KubeletClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def pods(self) -> list[dict[str, Any]]:
        """`GET /pods`: the pods the kubelet runs (a PodList's items)."""
        response = await self._get("/pods", "application/json")
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            raise KubeletBadResponse(f"kubelet GET /pods: the answer is not JSON: {exc}") from None
        items = body.get("items") if isinstance(body, dict) else None
        if items is None and isinstance(body, dict) and body.get("kind") == "PodList":
            items = []  # an empty list may come without `items`
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise KubeletBadResponse("kubelet GET /pods: the answer is not a PodList")
        return items

    async def cadvisor_metrics(self) -> str:
        """`GET /metrics/cadvisor`: the Prometheus text exposition of cAdvisor's metrics."""
        response = await self._get("/metrics/cadvisor", "text/plain;version=0.0.4")
        return response.text

    async def _token(self) -> str | None:
        path = self.settings.token_path
        if path is None:
            return None
        try:
            token = (await trio.Path(path).read_text(encoding="utf-8")).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KubeletCredentialsError(
                f"KUBELET_TOKEN_PATH={path}: cannot read the bearer token: {exc}"
            ) from None
        if not _TOKEN.fullmatch(token):
            raise KubeletCredentialsError(
                f"KUBELET_TOKEN_PATH={path}: the file holds no usable bearer token "
                "(empty, or characters a token cannot have)"
            )
        return token

    async def _get(self, path: str, accept: str) -> httpx.Response:
        headers = {"Accept": accept}
        token = await self._token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self._http.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise describe_transport_error(
                exc, self.settings, self.settings.base_url + path
            ) from exc
        if response.status_code != 200:
            raise describe_status(response, self.settings, path)
        return response
