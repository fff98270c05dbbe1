"""deploy/profile/: `diskguard profile` on every node, with the agent's own data mount and
node-state directory, from an image that is the agent's plus fio; valid against the
Kubernetes schemas, and a Ready pod per node only once the disks were measured."""

from __future__ import annotations

import re
from typing import Any

import pytest
from click.testing import CliRunner

from diskguard.cli import main
from diskguard.config import known_variables, load_config

from .kustomize import build
from .manifests import (
    DEPLOY,
    KUBERNETES_VERSIONS,
    agent_container,
    check_env_names,
    check_kustomization,
    host_paths,
    literal_env,
    only_daemonset,
    validate_schema,
)

PROFILE = DEPLOY / "profile"
OBJECTS = build(PROFILE)


def test_profile_kustomization_lists_its_manifests() -> None:
    check_kustomization(PROFILE)
    assert sorted(o["kind"] for o in OBJECTS) == ["DaemonSet", "Namespace"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: o["kind"])
def test_profile_objects_are_valid(obj: dict[str, Any], version: str) -> None:
    validate_schema(obj, version)


def test_profile_runs_with_the_agents_data_mount_and_state_dir() -> None:
    ds = only_daemonset(OBJECTS)
    ns = next(o for o in OBJECTS if o["kind"] == "Namespace")
    assert ds["metadata"]["namespace"] == ns["metadata"]["name"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    spec = ds["spec"]["template"]["spec"]
    (profile,) = spec["initContainers"]
    assert profile["args"] == ["profile"]
    assert "profile" in CliRunner().invoke(main, ["--help"]).output
    assert spec["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in spec["tolerations"]
    assert not profile["securityContext"].get("privileged")
    # A CPU quota would throttle fio: the figures would be the quota's, not the disk's.
    assert "cpu" not in profile["resources"]["limits"]
    check_env_names(profile, known_variables())

    agent_ds = only_daemonset(build(DEPLOY))
    agent = agent_container(agent_ds)
    agent_env, env = literal_env(agent), literal_env(profile)
    for name in ("DATA_MOUNT", "STATE_DIR"):
        assert env[name] == agent_env[name], name
    config = load_config({"NODE_NAME": "node-1", **env})
    agent_paths = host_paths(agent_ds["spec"]["template"]["spec"], agent)
    paths = host_paths(spec, profile)
    for path in (config.state_dir, *config.data_mounts):
        assert paths[path] == agent_paths[path], path
    mounts = {m["mountPath"]: m for m in profile["volumeMounts"]}
    assert not mounts[config.state_dir].get("readOnly")  # it writes capacity.json
    for path in config.data_mounts:  # fio's test file goes there
        assert not mounts[path].get("readOnly")
        assert mounts[path]["mountPropagation"] == "HostToContainer"


def test_the_agent_never_limits_the_measurement() -> None:
    """A profile run held to the agent's own limits would record them as the disk's
    capacity, and every percentage would then be a share of the agent's default."""
    agent = literal_env(agent_container(only_daemonset(build(DEPLOY))))
    config = load_config({"NODE_NAME": "node-1", **agent})
    ns = next(o for o in OBJECTS if o["kind"] == "Namespace")["metadata"]["name"]
    assert ns in config.exclusion.namespaces


def test_the_profile_image_is_the_agents_plus_fio() -> None:
    dockerfile = (PROFILE / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=\S+$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE\}$", dockerfile, re.MULTILINE)
    assert "install -y -q --no-install-recommends fio" in dockerfile
    # The agent's own image stays without fio.
    assert "fio" not in (DEPLOY.parent / "Dockerfile").read_text()
    images = {
        c["image"]
        for c in [
            *only_daemonset(OBJECTS)["spec"]["template"]["spec"]["initContainers"],
            *only_daemonset(OBJECTS)["spec"]["template"]["spec"]["containers"],
        ]
    }
    assert len(images) == 1 and "diskguard-profile" in images.pop()
