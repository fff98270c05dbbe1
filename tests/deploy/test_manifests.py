"""deploy/: every manifest valid against the Kubernetes schemas (offline, strict), and
consistent with the code: env vars it reads, paths it uses, names that refer to each other.

Each check also runs on a manifest broken on purpose, to show it can fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from diskguard.config import known_variables, load_config, startup_warnings
from diskguard.sampler.bpf import BpfOptions

from .manifests import (
    DEPLOY,
    KUBERNETES_VERSIONS,
    Manifest,
    ManifestError,
    agent_container,
    check_env_names,
    check_kustomization,
    check_paths_mounted,
    kubernetes_objects,
    literal_env,
    load_manifests,
    mutated,
    one,
    validate_schema,
)

MANIFESTS = load_manifests()
OBJECTS = kubernetes_objects(MANIFESTS)

# Env entries that deliberately differ from the code's default (each says why in the YAML).
CEILINGS = {
    "LIMIT_CEILING_READ_IOPS",
    "LIMIT_CEILING_WRITE_IOPS",
    "LIMIT_CEILING_READ_BPS",
    "LIMIT_CEILING_WRITE_BPS",
}
NOT_DEFAULT = {"EXCLUDE_NAMESPACES", *CEILINGS}


def daemonset() -> dict[str, Any]:
    return one(OBJECTS, "DaemonSet").doc


# -- schemas ---------------------------------------------------------------------------


def test_deploy_holds_the_expected_objects() -> None:
    kinds = sorted(m.kind for m in OBJECTS)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
        ]
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", OBJECTS, ids=str)
def test_manifest_is_valid_against_the_kubernetes_schema(manifest: Manifest, version: str) -> None:
    validate_schema(manifest.doc, version)


@pytest.mark.parametrize(
    ("kind", "path", "change"),
    [
        # a misspelt field, at several depths
        ("DaemonSet", "spec.template.spec.serviceAccountName", {"rename_to": "serviceAcountName"}),
        (
            "DaemonSet",
            "spec.template.spec.containers.0.imagePullPolicy",
            {"rename_to": "imagePulPolicy"},
        ),
        (
            "DaemonSet",
            "spec.template.spec.containers.0.volumeMounts.0.mountPath",
            {"rename_to": "mountpath"},
        ),
        # a value of the wrong type
        (
            "DaemonSet",
            "spec.template.spec.containers.0.ports.0.containerPort",
            {"value": "two thousand"},
        ),
        ("DaemonSet", "spec.template.spec.terminationGracePeriodSeconds", {"value": "30s"}),
        # a required field missing (renamed away)
        ("DaemonSet", "spec.selector", {"rename_to": "selectr"}),
        ("ClusterRoleBinding", "roleRef", {"rename_to": "roleref"}),
        ("ClusterRole", "rules.0.verbs", {"rename_to": "verb"}),
        # an apiVersion the kind does not exist in
        ("Namespace", "apiVersion", {"value": "v1beta1"}),
    ],
)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_broken_manifest_fails_validation(
    kind: str, path: str, change: dict[str, Any], version: str
) -> None:
    doc = one(OBJECTS, kind).doc
    validate_schema(doc, version)  # the real one passes...
    with pytest.raises(ManifestError):  # ...the broken copy does not
        validate_schema(mutated(doc, path, **change), version)


# -- kustomization ---------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    check_kustomization()


def test_kustomization_check_catches_a_missing_and_a_stale_entry(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    (copy / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ManifestError, match=r"not listed \['extra.yaml'\]"):
        check_kustomization(copy)
    (copy / "extra.yaml").unlink()
    (copy / "namespace.yaml").unlink()
    with pytest.raises(ManifestError, match=r"listed but absent \['namespace.yaml'\]"):
        check_kustomization(copy)


# -- the DaemonSet against the code ----------------------------------------------------


def test_every_env_var_the_daemonset_sets_is_read_by_diskguard() -> None:
    check_env_names(agent_container(daemonset()), known_variables())


def test_a_misspelt_env_var_is_caught() -> None:
    container = agent_container(daemonset())
    container["env"] = [*container["env"], {"name": "CONTAINER_WRITE_IOPS_LIMT", "value": "5"}]
    with pytest.raises(ManifestError, match="CONTAINER_WRITE_IOPS_LIMT"):
        check_env_names(container, known_variables())


def test_node_name_comes_from_the_downward_api() -> None:
    env = {e["name"]: e for e in agent_container(daemonset())["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_daemonset_env_is_accepted_and_spells_out_the_defaults() -> None:
    env = literal_env(agent_container(daemonset()))
    load_config({"NODE_NAME": "node-1", **env})  # raises ConfigError on a bad value
    defaults_only = {k: v for k, v in env.items() if k not in NOT_DEFAULT}
    assert load_config({"NODE_NAME": "node-1", **defaults_only}) == load_config(
        {"NODE_NAME": "node-1"}
    ), "an env entry presented as a default differs from the code's default"


def test_every_ceiling_is_set_so_no_tenant_gets_unlimited_out_of_the_box() -> None:
    env = literal_env(agent_container(daemonset()))
    config = load_config({"NODE_NAME": "node-1", **env})
    assert set(env) >= CEILINGS
    ceilings = config.guardrails.ceilings
    assert all(getattr(ceilings, f) > 0 for f in ("riops", "wiops", "rbps", "wbps")), ceilings
    # the defaults fit under the ceilings (a default above its ceiling would be clamped)
    for field in ("riops", "wiops", "rbps", "wbps"):
        default = getattr(config.defaults, field)
        assert default <= getattr(ceilings, field), field
    assert not startup_warnings(config)


def test_the_annotation_prefix_comes_from_the_shared_configmap() -> None:
    env = {e["name"]: e for e in agent_container(daemonset())["env"]}
    ref = env["SMART_LIMIT_ANNOTATION_PREFIX"]["valueFrom"]["configMapKeyRef"]
    configmap = one(OBJECTS, "ConfigMap")
    assert ref["name"] == configmap.name
    assert configmap.doc["metadata"]["namespace"] == daemonset()["metadata"]["namespace"]
    prefix = configmap.doc["data"][ref["key"]]
    assert load_config({"NODE_NAME": "n", ref["key"]: prefix}).annotation_prefix == prefix


def test_the_agents_own_namespace_is_excluded() -> None:
    env = literal_env(agent_container(daemonset()))
    config = load_config({"NODE_NAME": "node-1", **env})
    own = daemonset()["metadata"]["namespace"]
    assert own in config.exclusion.namespaces


def test_every_host_path_the_agent_uses_is_mounted() -> None:
    container = agent_container(daemonset())
    config = load_config({"NODE_NAME": "node-1", **literal_env(container)})
    bpf = BpfOptions()  # where the eBPF sampler looks by default
    used = [
        config.cgroup_root,
        *config.data_mounts,
        *map(str, bpf.header_search),  # kernel headers for BCC
        str(bpf.tracefs[0]),
        str(bpf.cache_dir),  # the merged header tree is built here
    ]
    check_paths_mounted(container, used)
    with pytest.raises(ManifestError, match="/data2"):
        check_paths_mounted(container, [*used, "/data2"])


def test_data_mount_sees_host_mounts_made_later() -> None:
    container = agent_container(daemonset())
    config = load_config({"NODE_NAME": "node-1", **literal_env(container)})
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in config.data_mounts:
        assert mounts[path].get("mountPropagation") == "HostToContainer", path


def test_host_paths_keep_their_paths_in_the_container() -> None:
    """The code's defaults (/sys/fs/cgroup, /lib/modules, ...) name host paths: each
    hostPath volume must be mounted at the path it has on the host."""
    spec = daemonset()["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for mount in agent_container(daemonset())["volumeMounts"]:
        if mount["name"] in host:
            assert mount["mountPath"] == host[mount["name"]], mount


def test_probes_and_metrics_use_the_port_the_agent_listens_on() -> None:
    container = agent_container(daemonset())
    config = load_config({"NODE_NAME": "node-1", **literal_env(container)})
    listen_port = config.http_addr.port
    assert config.http_addr.every_address  # dual-stack: every IPv6 and IPv4 address
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": listen_port}
    scrape = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/port"] == str(listen_port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_runs_on_every_node_and_is_not_evicted_first() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in spec["tolerations"]  # every taint, every effect
    assert spec["priorityClassName"] == "system-node-critical"
    assert agent_container(daemonset())["securityContext"]["privileged"] is True


# -- names that refer to each other ----------------------------------------------------


def test_objects_refer_to_each_other_by_the_right_names() -> None:
    namespace = one(OBJECTS, "Namespace").name
    account = one(OBJECTS, "ServiceAccount")
    role = one(OBJECTS, "ClusterRole")
    binding = one(OBJECTS, "ClusterRoleBinding").doc
    ds = daemonset()

    for m in OBJECTS:
        if m.kind in ("ServiceAccount", "DaemonSet", "ConfigMap"):
            assert m.doc["metadata"]["namespace"] == namespace, m
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == account.name
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role.name,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account.name, "namespace": namespace}
    ]
    # The API server rejects a DaemonSet whose selector does not match its pods.
    selector = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
