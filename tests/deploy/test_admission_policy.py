"""deploy/components/admission-policy: its CEL, evaluated with cel-python on recorded
admission requests (tests/deploy/data/admission-requests.yaml), reaches the decision each
one records; and the agent's own smart-limit patches pass it (test_rbac.py)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskguard.policy.annotations import OWN_KEYS

from .admission import Decision, Policy, PolicyError
from .kustomize import find
from .manifests import built

REQUESTS = Path(__file__).parent / "data" / "admission-requests.yaml"
CASES = yaml.safe_load(REQUESTS.read_text())["cases"]
AGENT_USER = yaml.safe_load(REQUESTS.read_text())["x-agent-on-node-1"]


def installed() -> tuple[Policy, dict[tuple[str, str], dict[str, Any]]]:
    """The policy and binding as built, and the ConfigMaps the API server would hold."""
    objects = built("admission-policy")
    policy = Policy(
        find(objects, "ValidatingAdmissionPolicy"),
        find(objects, "ValidatingAdmissionPolicyBinding"),
    )
    configmap = find(objects, "ConfigMap", "diskguard")
    key = (configmap["metadata"]["namespace"], configmap["metadata"]["name"])
    return policy, {key: copy.deepcopy(configmap)}


def decide(request: dict[str, Any], params: dict[str, str] | None = None) -> Decision:
    policy, configmaps = installed()
    if params is not None:
        for configmap in configmaps.values():
            configmap["data"] = params
    return policy.evaluate(request, configmaps)


def agent_request(old: dict[str, Any], new: dict[str, Any], node: str) -> dict[str, Any]:
    """The AdmissionRequest for the agent of `node` updating pod `old` into `new`."""
    user = copy.deepcopy(AGENT_USER)
    user["extra"]["authentication.kubernetes.io/node-name"] = [node]
    return {
        "uid": "00000000-0000-4000-8000-000000000000",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": old["metadata"]["name"],
        "namespace": old["metadata"]["namespace"],
        "operation": "UPDATE",
        "userInfo": user,
        "oldObject": old,
        "object": new,
    }


def test_the_recorded_requests_cover_both_decisions() -> None:
    allowed = [c for c in CASES if c["allowed"]]
    assert len(allowed) >= 6 and len(CASES) - len(allowed) >= 10
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_recorded_request(case: dict[str, Any]) -> None:
    decision = decide(case["request"], case.get("params"))
    assert decision.allowed is case["allowed"], decision.messages
    if not case["allowed"]:
        assert decision.applies
        assert any(case["message"] in m for m in decision.messages), decision.messages


def test_it_applies_to_the_agent_only() -> None:
    applies = {c["name"]: decide(c["request"], c.get("params")).applies for c in CASES}
    for case in CASES:
        agent = case["request"]["userInfo"]["username"].endswith(":diskguard-system:diskguard")
        assert applies[case["name"]] is agent, case["name"]


def test_without_its_parameter_every_agent_write_is_denied() -> None:
    policy, _ = installed()
    allowed_case = next(c for c in CASES if c["allowed"] and "applies a smart limit" in c["name"])
    assert policy.evaluate(allowed_case["request"], {}).allowed is False  # no ConfigMap
    no_key = decide(allowed_case["request"], params={})  # the ConfigMap without the key
    assert not no_key.allowed
    assert any("no SMART_LIMIT_ANNOTATION_PREFIX" in m for m in no_key.messages)


def test_a_policy_that_does_not_compile_is_refused() -> None:
    objects = built("admission-policy")
    broken = copy.deepcopy(find(objects, "ValidatingAdmissionPolicy"))
    broken["spec"]["validations"][0]["expression"] = "request.operation == 'UPDATE' &&"
    with pytest.raises(PolicyError, match="does not compile"):
        Policy(broken, find(objects, "ValidatingAdmissionPolicyBinding"))


def test_a_weakened_policy_fails_the_recorded_requests() -> None:
    """The cases can catch a mistake: drop the label check and a recorded denial passes."""
    objects = built("admission-policy")
    weak = copy.deepcopy(find(objects, "ValidatingAdmissionPolicy"))
    weak["spec"]["validations"] = [
        v for v in weak["spec"]["validations"] if "labels" not in v["expression"]
    ]
    policy = Policy(weak, find(objects, "ValidatingAdmissionPolicyBinding"))
    _, configmaps = installed()
    label_case = next(c for c in CASES if "changes a label" in c["name"])
    assert policy.evaluate(label_case["request"], configmaps).allowed


def test_the_prefix_is_the_agents_own() -> None:
    objects = built("admission-policy")
    configmap = find(objects, "ConfigMap", "diskguard")
    binding = find(objects, "ValidatingAdmissionPolicyBinding")["spec"]["paramRef"]
    assert (binding["namespace"], binding["name"]) == (
        configmap["metadata"]["namespace"],
        configmap["metadata"]["name"],
    )
    daemonset = find(objects, "DaemonSet")
    env = {e["name"]: e for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["SMART_LIMIT_ANNOTATION_PREFIX"]["valueFrom"]["configMapKeyRef"]
    assert ref == {"name": configmap["metadata"]["name"], "key": "SMART_LIMIT_ANNOTATION_PREFIX"}
    account = find(objects, "ServiceAccount")["metadata"]
    (condition,) = find(objects, "ValidatingAdmissionPolicy")["spec"]["matchConditions"]
    assert (
        f"system:serviceaccount:{account['namespace']}:{account['name']}'"
        in (condition["expression"])
    )


def test_the_policys_own_keys_are_the_agents() -> None:
    """The keys the policy lets the agent write are exactly those the agent writes."""
    policy = find(built("admission-policy"), "ValidatingAdmissionPolicy")
    [own] = [v for v in policy["spec"]["variables"] if v["name"] == "ownKeys"]
    assert tuple(re.findall(r"'([a-z-]+)'", own["expression"])) == OWN_KEYS
