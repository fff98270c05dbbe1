"""Construction of the (sync) Kubernetes API client: in-cluster first, else kubeconfig."""

from __future__ import annotations

import os
from collections.abc import Mapping

from kubernetes import client, config


class KubeConfigError(RuntimeError):
    pass


def make_api_client(env: Mapping[str, str]) -> client.ApiClient:
    """In-cluster service account when running in a pod, else KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    if env.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        config.load_incluster_config(client_configuration=configuration)
    else:
        path = env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            config.load_kube_config(config_file=path, client_configuration=configuration)
        except Exception as exc:  # the loader raises several unrelated types
            raise KubeConfigError(
                f"no in-cluster service account and no usable kubeconfig at {path}: {exc}"
            ) from exc
    # Every caller retries with its own backoff (watch, Events); urllib3's silent retries
    # would only hide outages and stretch shutdown.
    configuration.retries = False
    return client.ApiClient(configuration)
