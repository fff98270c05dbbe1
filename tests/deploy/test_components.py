"""deploy/components/*: each builds on deploy/ (with the Python kustomize subset, checked
against the real `kubectl kustomize` where it is installed), is valid against the schemas
of the Kubernetes versions it claims, and agrees with the agent and the DaemonSet."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from diskguard.config import load_config

from .kustomize import KustomizeError, build, by_key, find
from .manifests import (
    ADMISSION_POLICY_KUBERNETES,
    COMPONENTS,
    DEPLOY,
    KUBERNETES_VERSIONS,
    ManifestError,
    agent_container,
    built,
    check_kustomization,
    literal_env,
    validate_schema,
)

# Every component alone, and all of them together.
INSTALLS = [(), *((name,) for name in COMPONENTS), tuple(COMPONENTS)]
# Kinds the Kubernetes schemas do not hold (CRDs), checked by the tests below instead.
CRD_KINDS = {"PodMonitor", "PrometheusRule"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _id(components: tuple[str, ...]) -> str:
    return "+".join(("base", *components))


def test_the_expected_components_exist() -> None:
    assert set(COMPONENTS) == {"smart-limit", "admission-policy", "network-policy", "podmonitor"}


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_kustomization_lists_every_manifest(name: str) -> None:
    check_kustomization(COMPONENTS[name])


@pytest.mark.parametrize("components", INSTALLS, ids=_id)
def test_every_install_is_valid_against_the_schemas(components: tuple[str, ...]) -> None:
    objects = built(*components)
    needs_130 = "admission-policy" in components
    versions = {
        v
        for v in KUBERNETES_VERSIONS
        if not needs_130 or _version(v) >= _version(ADMISSION_POLICY_KUBERNETES)
    }
    if needs_130:
        versions.add(ADMISSION_POLICY_KUBERNETES)
    for obj, version in itertools.product(objects, sorted(versions)):
        if obj["kind"] not in CRD_KINDS:
            validate_schema(obj, version)


def test_the_admission_policy_does_not_exist_before_1_30() -> None:
    policy = find(built("admission-policy"), "ValidatingAdmissionPolicy")
    validate_schema(policy, ADMISSION_POLICY_KUBERNETES)
    with pytest.raises(ManifestError, match=r"1\.29"):
        validate_schema(policy, "1.29")


@pytest.mark.parametrize("components", INSTALLS, ids=_id)
def test_every_install_configures_an_agent_that_starts(components: tuple[str, ...]) -> None:
    objects = built(*components)
    container = agent_container(find(objects, "DaemonSet"))
    configmap = find(objects, "ConfigMap", "diskguard")["data"]
    env = literal_env(container)
    for entry in container["env"]:  # the values the kubelet fills in from the ConfigMap
        ref = (entry.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == "diskguard", entry
            env[entry["name"]] = configmap[ref["key"]]
    config = load_config({"NODE_NAME": "node-1", **env})
    assert config.smart.enabled is ("smart-limit" in components)
    assert config.annotation_prefix == configmap["SMART_LIMIT_ANNOTATION_PREFIX"]


# -- the Python builder against the real one -------------------------------------------


def _kubectl() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, check=False)
    return kubectl if probe.returncode == 0 else None


@pytest.mark.skipif(_kubectl() is None, reason="no kubectl with kustomize on this machine")
@pytest.mark.parametrize("components", INSTALLS, ids=_id)
def test_the_python_build_equals_kubectl_kustomize(
    components: tuple[str, ...], tmp_path: Path
) -> None:
    # An overlay next to a copy of deploy/, listing it and the components relatively, as a
    # user's overlay would.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../deploy"],
                "components": [f"../deploy/components/{c}" for c in components],
            }
        )
    )
    kubectl = _kubectl()
    assert kubectl is not None
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    real = by_key(d for d in yaml.safe_load_all(out) if d)
    ours = by_key(
        build(tmp_path / "deploy", [tmp_path / "deploy/components" / c for c in components])
    )
    assert sorted(ours) == sorted(real)
    for key, obj in ours.items():
        assert obj == real[key], key


def test_the_builder_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        build(tmp_path)


def test_a_patch_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    component = tmp_path / "c"
    component.mkdir()
    (component / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches:\n"
        "  - target: {kind: ClusterRole, name: misspelt}\n"
        "    patch: '[{op: add, path: /rules/-, value: {}}]'\n"
    )
    with pytest.raises(KustomizeError, match="matches no object"):
        build(DEPLOY, [component])


# -- what the components say -----------------------------------------------------------


def test_smart_limit_adds_exactly_get_and_patch_pods() -> None:
    base = find(built(), "ClusterRole")["rules"]
    smart = find(built("smart-limit"), "ClusterRole")["rules"]
    assert smart[: len(base)] == base
    assert smart[len(base) :] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}
    ]
    # and nothing in the base writes pods
    for rule in base:
        if "pods" in rule.get("resources", []):
            assert set(rule["verbs"]) == {"list", "watch"}


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(find(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"])


def test_network_policy_admits_prometheus_to_the_http_port_only() -> None:
    objects = built("network-policy")
    policy = find(objects, "NetworkPolicy")["spec"]
    daemonset = find(objects, "DaemonSet")
    assert policy["podSelector"]["matchLabels"].items() <= _pod_labels(objects).items()
    assert policy["policyTypes"] == ["Ingress"]  # the agent's own egress is not restricted
    (rule,) = policy["ingress"]
    ports = {p["name"]: p["containerPort"] for p in agent_container(daemonset)["ports"]}
    assert [p["port"] for p in rule["ports"]] == ["http"] and "http" in ports
    (peer,) = rule["from"]  # one peer with both selectors: Prometheus pods in its namespace
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_podmonitor_scrapes_the_agents_metrics() -> None:
    objects = built("podmonitor")
    monitor = find(objects, "PodMonitor")
    daemonset = find(objects, "DaemonSet")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    assert spec["selector"]["matchLabels"].items() <= _pod_labels(objects).items()
    assert spec["namespaceSelector"] == {"matchNames": [daemonset["metadata"]["namespace"]]}
    (endpoint,) = spec["podMetricsEndpoints"]
    # The operator's schema accepts unknown fields (test_operator_schema.py): a misspelt
    # one would be pruned silently, so the fields are listed here.
    assert set(endpoint) == {"port", "path", "interval", "honorLabels", "relabelings"}
    scrape = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert endpoint["port"] == "http" and endpoint["path"] == scrape["prometheus.io/path"]
    # Our per-container series name the monitored container in namespace/pod/container:
    # kept as they are, not renamed exported_*.
    assert endpoint["honorLabels"] is True
    # and the agent pod's own `container` label is not added where a series has none.
    assert endpoint["relabelings"] == [{"action": "labeldrop", "regex": "container"}]


def test_the_alert_rules_live_beside_the_podmonitor() -> None:
    objects = built("podmonitor")
    monitor, rule = find(objects, "PodMonitor"), find(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == monitor["metadata"]["namespace"]
    assert rule["metadata"]["labels"] == monitor["metadata"]["labels"]
    assert set(rule["spec"]) == {"groups"}


def test_the_latest_schemas_are_newer_than_1_30() -> None:
    assert _version(kubernetes_validate.latest_version()) >= _version(ADMISSION_POLICY_KUBERNETES)
