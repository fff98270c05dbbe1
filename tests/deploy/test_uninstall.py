"""deploy/uninstall/: `diskguard reset-all` on every node, with the agent's own host
paths and settings, valid against the Kubernetes schemas, and a Ready pod per node only
once reset-all succeeded there."""

from __future__ import annotations

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

UNINSTALL = DEPLOY / "uninstall"
OBJECTS = build(UNINSTALL)


def test_uninstall_kustomization_lists_its_manifests() -> None:
    check_kustomization(UNINSTALL)
    assert sorted(o["kind"] for o in OBJECTS) == ["DaemonSet", "Namespace"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: o["kind"])
def test_uninstall_objects_are_valid(obj: dict[str, Any], version: str) -> None:
    validate_schema(obj, version)


def test_its_own_namespace_outlives_the_agents() -> None:
    agent_ns = {o["metadata"]["name"] for o in build(DEPLOY) if o["kind"] == "Namespace"}
    ns = next(o for o in OBJECTS if o["kind"] == "Namespace")
    assert ns["metadata"]["name"] not in agent_ns
    assert only_daemonset(OBJECTS)["metadata"]["namespace"] == ns["metadata"]["name"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_reset_all_runs_with_the_agents_paths_and_settings() -> None:
    spec = only_daemonset(OBJECTS)["spec"]["template"]["spec"]
    (reset,) = spec["initContainers"]
    assert reset["args"][0] == "reset-all"
    assert "reset-all" in CliRunner().invoke(main, ["--help"]).output
    assert reset["securityContext"]["privileged"] is True
    assert spec["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in spec["tolerations"]
    check_env_names(reset, known_variables())

    agent_ds = only_daemonset(build(DEPLOY))
    agent_spec = agent_ds["spec"]["template"]["spec"]
    agent = agent_container(agent_ds)
    agent_env, env = literal_env(agent), literal_env(reset)
    for name in ("CGROUP_ROOT", "KUBELET_CGROUP_ROOT", "DATA_MOUNT", "STATE_DIR"):
        assert env[name] == agent_env[name], name
    config = load_config({"NODE_NAME": "node-1", **env})
    agent_paths, paths = host_paths(agent_spec, agent), host_paths(spec, reset)
    for path in (config.cgroup_root, config.state_dir, *config.data_mounts):
        assert paths[path] == agent_paths[path], path
    mounts = {m["mountPath"]: m for m in reset["volumeMounts"]}
    assert not mounts[config.state_dir].get("readOnly")  # it empties the record
    assert not mounts[config.cgroup_root].get("readOnly")


def test_the_agent_keeps_its_record_on_a_host_path() -> None:
    agent_ds = only_daemonset(build(DEPLOY))
    spec = agent_ds["spec"]["template"]["spec"]
    agent = agent_container(agent_ds)
    config = load_config({"NODE_NAME": "node-1", **literal_env(agent)})
    (volume,) = [
        v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == config.state_dir
    ]
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    assert host_paths(spec, agent)[config.state_dir] == config.state_dir
    assert config.data_mount_allow_unmounted is False  # the shipped default, said in YAML
