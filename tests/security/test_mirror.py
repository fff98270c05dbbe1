"""A tenant cannot pick the cgroup its limits go to with `kubernetes.io/config.mirror`:
only a pod owned by its Node (the kubelet's mirror of a static pod) is trusted with it."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from diskguard.kube.pods import MIRROR_ANNOTATION, parse_pod
from diskguard.model import IOLimits
from diskguard.testing.fakeapi.objects import make_pod

from .conftest import NODE, Cluster, P

HASH = "3f6b1c2d4e5f60718293a4b5c6d7e8f9"
NODE_OWNER = {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "n1", "controller": True}


def _pod(owners: list[dict[str, Any]] | None) -> dict[str, Any]:
    pod = make_pod("web", "default", NODE, annotations={MIRROR_ANNOTATION: HASH})
    if owners is not None:
        pod["metadata"]["ownerReferences"] = owners
    return pod


@pytest.mark.pure
@pytest.mark.parametrize(
    "owners",
    [
        None,
        [],
        [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "r"}],
        [{**NODE_OWNER, "name": "another-node"}],  # another node's
        [{**NODE_OWNER, "apiVersion": "example.com/v1"}],  # a look-alike kind
        "Node",
    ],
)
def test_mirror_annotation_of_a_pod_not_owned_by_its_node_is_ignored(owners: Any) -> None:
    pod = parse_pod(_pod(owners))
    assert pod.cgroup_uid == ""


@pytest.mark.pure
def test_mirror_annotation_of_a_node_owned_pod_names_the_cgroup() -> None:
    assert parse_pod(_pod([NODE_OWNER])).cgroup_uid == HASH


@pytest.mark.kernel
async def test_tenant_mirror_annotation_cannot_move_limits_to_another_cgroup(
    cluster: Cluster, start_agent: Any
) -> None:
    """The tenant names the static pod's hash: its own cgroup still gets its limits and
    the static pod's cgroup (under the hash) gets nothing from the tenant's pod."""
    pod = make_pod(
        "tenant", "default", NODE, annotations={MIRROR_ANNOTATION: HASH, f"{P}/iops": "90"}
    )
    ref = cluster.refs(pod)[0]
    own = cluster.kubelet.create(ref, cluster.driver)
    victim = cluster.kubelet.create(attrs.evolve(ref, cgroup_uid=HASH), cluster.driver)
    cluster.api.create("pods", pod)
    await start_agent()
    await cluster.wait_kernel(own, IOLimits(90, 90))
    assert cluster.kernel(victim) == IOLimits()
