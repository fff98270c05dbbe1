"""The few API calls the agent makes, as raw JSON requests through the official client.

`kubernetes.client.CoreV1Api` is one generated class over the whole core/v1 group: importing
it loads about 250 pydantic model modules (22 MiB of the agent's RSS, measured with
`bench/import_memory.py`) that the agent never uses, since every response it reads is parsed
as raw JSON at the API edge (kube/pods.py, kube/namespaces.py). `CoreApi` keeps what the
official client does well — the `ApiClient` with its configuration (in-cluster or kubeconfig,
TLS, bearer-token refresh, proxies) and its `ApiException` — and builds the handful of
requests itself with the client's `param_serialize`/`call_api` (the OpenAPI Generator 7
client, kubernetes 37 and later: pyproject's lower bound). The list, read, patch and Event
methods keep the generated client's names and keyword arguments, so tests can check the two
against each other.

Every call returns the raw urllib3 response (its `.data` read, or, for a watch, the stream)
and raises `ApiException` on a non-2xx status with `.status`, `.reason` and the error body
as bytes, bounded (the generated client reads it whole and raises subclasses per status;
callers here look at `.status` only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

# An error body (a Status object) is read up to this size: enough for any Status the API
# server writes, bounded so a misbehaving proxy cannot make us buffer megabytes.
MAX_ERROR_BODY = 65536

# The generated client's keyword arguments for list and watch, and their query names.
_LIST_QUERY = {
    "_continue": "continue",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "field_selector": "fieldSelector",
    "label_selector": "labelSelector",
    "limit": "limit",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
}
MERGE_PATCH = "application/merge-patch+json"
Timeout = float | tuple[float, float] | None


class CoreApi:
    """list+watch pods and namespaces, read and patch a pod, post an Event, ask the
    authorizer: each one request, JSON in and out."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._list("/api/v1/pods", kwargs)

    def list_namespace(self, **kwargs: Any) -> Any:
        return self._list("/api/v1/namespaces", kwargs)

    def read_namespaced_pod(
        self,
        name: str,
        namespace: str,
        *,
        _request_timeout: Timeout = None,
        _preload_content: bool = False,
    ) -> Any:
        return self._request(
            "GET",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            path={"namespace": namespace, "name": name},
            timeout=_request_timeout,
        )

    def patch_namespaced_pod(
        self,
        name: str,
        namespace: str,
        body: Mapping[str, Any],
        *,
        _request_timeout: Timeout = None,
        _content_type: str = MERGE_PATCH,
    ) -> Any:
        """A JSON merge patch by default: `metadata.annotations` merges key by key, a None
        value removes a key (the same as a strategic merge patch for a map)."""
        return self._request(
            "PATCH",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            path={"namespace": namespace, "name": name},
            body=body,
            content_type=_content_type,
            timeout=_request_timeout,
        )

    def create_namespaced_event(
        self, namespace: str, body: Mapping[str, Any], *, _request_timeout: Timeout = None
    ) -> Any:
        return self._request(
            "POST",
            "/api/v1/namespaces/{namespace}/events",
            path={"namespace": namespace},
            body=body,
            timeout=_request_timeout,
        )

    def may(self, verb: str, resource: str, group: str = "", *, timeout: Timeout = None) -> bool:
        """Whether this client's user may `verb` `resource` in every namespace (a
        SelfSubjectAccessReview)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "group": group}},
        }
        response = self._request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body=review,
            timeout=timeout,
        )
        answer = json.loads(response.data)
        status = answer.get("status") if isinstance(answer, Mapping) else None
        return isinstance(status, Mapping) and status.get("allowed") is True

    def _list(self, path: str, kwargs: Mapping[str, Any]) -> Any:
        query = []
        for name, value in kwargs.items():
            if name in ("_preload_content", "_request_timeout") or value is None:
                continue
            if name not in _LIST_QUERY:
                raise TypeError(f"unexpected list parameter {name!r}")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            query.append((_LIST_QUERY[name], text))
        return self._request(
            "GET",
            path,
            query=query,
            timeout=kwargs.get("_request_timeout"),
            stream=bool(kwargs.get("watch")),
        )

    def _request(
        self,
        method: str,
        resource_path: str,
        *,
        path: Mapping[str, str] | None = None,
        query: list[tuple[str, str]] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: Timeout = None,
        stream: bool = False,
    ) -> Any:
        """The response; its body read already (`.data`) and its connection back in the
        pool, unless `stream` (a watch: the caller reads it line by line, then closes it)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        # param_serialize adds the default headers and the bearer token (refreshed by the
        # configuration where it expires), quotes path parameters and encodes the query.
        request = self.api_client.param_serialize(
            method=method,
            resource_path=resource_path,
            path_params=dict(path) if path else None,
            query_params=query or None,
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=timeout).response
        if 200 <= response.status <= 299:
            if not stream:
                _ = response.data  # read whole: urllib3 hands the connection back to the pool
                response.release_conn()
            return response
        error = ApiException(status=response.status, reason=response.reason)
        error.headers = response.headers
        try:
            error.body = response.read(MAX_ERROR_BODY)
        except Exception:  # a broken error body: still an HTTP error, not a network one
            error.body = None
        finally:
            # Closed, not returned to the pool: a longer body may be left unread on it.
            response.close()
        raise error
