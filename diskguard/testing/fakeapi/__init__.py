"""A faithful fake Kubernetes API server (core/v1 pods, namespaces, events) for tests and the demo.

Typical use: `with FakeAPIServer() as api:` then `api.write_kubeconfig(path)` for the client
under test and `api.create("pods", make_pod("web-0", node="node-1"))` to set the scene.
"""

from .control import Fault, RecordedRequest
from .errors import ApiError
from .objects import container_ids, make_event, make_namespace, make_pod, random_container_id
from .patching import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH
from .server import FakeAPIServer

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "ApiError",
    "FakeAPIServer",
    "Fault",
    "RecordedRequest",
    "container_ids",
    "make_event",
    "make_namespace",
    "make_pod",
    "random_container_id",
]
