"""The container exclusion filter."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import ContainerInfo, PodInfo, QoSClass
from diskguard.policy.exclusion import Exclusion, ExclusionFilter, ExclusionRule, FilterConfigError
from diskguard.policy.labels import parse_selector

NS = ExclusionRule.NAMESPACE
LABELS = ExclusionRule.LABEL_SELECTOR
KW = ExclusionRule.KEYWORD


def pod(
    namespace: str = "default",
    name: str = "web-0",
    labels: dict[str, str] | None = None,
    containers: tuple[ContainerInfo, ...] = (),
) -> PodInfo:
    return PodInfo(
        uid="0b9e4c1e-6f2a-4f5e-9d35-2f3c0a1b2c3d",
        namespace=namespace,
        name=name,
        node_name="node-1",
        qos=QoSClass.BURSTABLE,
        labels=labels or {},
        containers=containers,
    )


APP = ContainerInfo(name="app", image="registry.example.com/team/app:1.2")
SIDECAR = ContainerInfo(name="istio-proxy", image="docker.io/istio/proxyv2:1.20")
PAUSE_IMAGE = ContainerInfo(name="main", image="registry.k8s.io/pause:3.9")


# --- from_strings --------------------------------------------------------------------------


def test_from_strings_all_blank_excludes_nothing() -> None:
    f = ExclusionFilter.from_strings("", "", "", "")
    assert f == ExclusionFilter()
    assert f.label_selector is None  # not the empty selector, which would match every pod
    assert f.regex is None
    p = pod(namespace="kube-system", labels={"a": "b"})
    assert f.pod_exclusion(p) is None
    assert f.container_exclusion(p, SIDECAR) is None


@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        ("pause,istio-proxy", ("pause", "istio-proxy")),
        ("  pause , istio-proxy  ", ("pause", "istio-proxy")),
        (",pause,,istio-proxy,", ("pause", "istio-proxy")),
        (" , ,\t", ()),
        ("pause,pause", ("pause",)),
        ("a b", ("a b",)),
    ],
)
def test_from_strings_keywords(keywords: str, expected: tuple[str, ...]) -> None:
    assert ExclusionFilter.from_strings(keywords, "", "", "").keywords == expected


@pytest.mark.parametrize(
    ("namespaces", "expected"),
    [
        ("kube-system", {"kube-system"}),
        (" kube-system ,monitoring, ", {"kube-system", "monitoring"}),
        (",,", set()),
        ("a" * 63, {"a" * 63}),
        ("0ns", {"0ns"}),
    ],
)
def test_from_strings_namespaces(namespaces: str, expected: set[str]) -> None:
    assert ExclusionFilter.from_strings("", namespaces, "", "").namespaces == frozenset(expected)


@pytest.mark.parametrize(
    "namespaces", ["Kube-System", "kube system", "kube_system", "-ns", "ns-", "a" * 64, "ns/x"]
)
def test_from_strings_rejects_impossible_namespace(namespaces: str) -> None:
    with pytest.raises(FilterConfigError) as info:
        ExclusionFilter.from_strings("", f"ok,{namespaces}", "", "")
    assert info.value.field == "namespaces"
    assert repr(namespaces) in str(info.value)


def test_from_strings_selector() -> None:
    f = ExclusionFilter.from_strings("", "", "  diskguard.io/exclude in (true, yes) ", "")
    assert f.label_selector == parse_selector("diskguard.io/exclude in (true,yes)")


@pytest.mark.parametrize("selector", ["env in (a,b", "x==a==b", "A/b", "!x=a", ",", "x\x00"])
def test_from_strings_bad_selector(selector: str) -> None:
    with pytest.raises(FilterConfigError) as info:
        ExclusionFilter.from_strings("", "", selector, "")
    assert info.value.field == "label_selector"
    message = str(info.value)
    assert message.startswith("label_selector: invalid label selector: ")
    assert "position" in message
    assert isinstance(info.value, ValueError)


def test_from_strings_regex() -> None:
    f = ExclusionFilter.from_strings("", "", "", "  ^batch/.*/worker$ ")
    assert f.regex is not None
    assert f.regex.pattern == "^batch/.*/worker$"


@pytest.mark.parametrize("regex", ["a(", "[z-a]", "*x", "(?P<n>a)(?P<n>b)"])
def test_from_strings_bad_regex(regex: str) -> None:
    with pytest.raises(FilterConfigError) as info:
        ExclusionFilter.from_strings("", "", "", regex)
    assert info.value.field == "regex"
    assert str(info.value).startswith(f"regex: invalid regular expression {regex!r}: ")


@given(st.text(), st.text(), st.text(), st.text())
def test_from_strings_never_raises_anything_else(a: str, b: str, c: str, d: str) -> None:
    try:
        f = ExclusionFilter.from_strings(a, b, c, d)
    except FilterConfigError as exc:
        assert exc.field in ("keywords", "namespaces", "label_selector", "regex")
        return
    # Whatever was accepted can be evaluated without error.
    p = pod(labels={"app": "web"})
    f.container_exclusion(p, APP)


# --- decisions ---------------------------------------------------------------------------

DEFAULTISH = ExclusionFilter.from_strings(
    "pause,istio-proxy,psmdb", "kube-system,monitoring", "diskguard.io/exclude=true", ""
)


@pytest.mark.parametrize(
    ("p", "container", "expected"),
    [
        (pod(), APP, None),
        (pod(namespace="kube-system"), APP, Exclusion(NS, "namespace kube-system is excluded")),
        (pod(namespace="monitoring"), APP, Exclusion(NS, "namespace monitoring is excluded")),
        (pod(namespace="kube-system-2"), APP, None),  # namespaces match exactly
        (pod(namespace="system"), APP, None),
        (
            pod(labels={"diskguard.io/exclude": "true"}),
            APP,
            Exclusion(LABELS, "pod labels match exclusion selector 'diskguard.io/exclude=true'"),
        ),
        (pod(labels={"diskguard.io/exclude": "false"}), APP, None),
        (
            pod(),
            SIDECAR,
            Exclusion(KW, "container name istio-proxy contains excluded keyword 'istio-proxy'"),
        ),
        (
            pod(),
            PAUSE_IMAGE,
            Exclusion(KW, "image registry.k8s.io/pause:3.9 contains excluded keyword 'pause'"),
        ),
        (
            pod(),
            ContainerInfo(name="mongo", image="percona/percona-server-psmdb:7"),
            Exclusion(KW, "image percona/percona-server-psmdb:7 contains excluded keyword 'psmdb'"),
        ),
        (pod(), ContainerInfo(name="mongo", image="mongo:7"), None),
        (
            pod(),
            ContainerInfo(name="psmdb-backup", image="x"),
            Exclusion(KW, "container name psmdb-backup contains excluded keyword 'psmdb'"),
        ),
        (pod(), ContainerInfo(name="Pause", image="x"), None),  # keywords are case-sensitive
        # A pod-level reason wins over a container-level one.
        (pod(namespace="kube-system"), SIDECAR, Exclusion(NS, "namespace kube-system is excluded")),
    ],
)
def test_container_exclusion(
    p: PodInfo, container: ContainerInfo, expected: Exclusion | None
) -> None:
    assert DEFAULTISH.container_exclusion(p, container) == expected


def test_pod_exclusion_ignores_container_rules() -> None:
    f = ExclusionFilter.from_strings("istio", "", "", "web")
    assert f.pod_exclusion(pod(name="web-0", containers=(SIDECAR,))) is None
    assert f.container_exclusion(pod(name="web-0"), SIDECAR) is not None


@pytest.mark.parametrize(
    ("selector", "labels", "excluded"),
    [
        ("tier=batch", {"tier": "batch"}, True),
        ("tier=batch", {"tier": "web"}, False),
        ("tier=batch", {}, False),
        ("tier!=web", {}, True),  # a negative requirement matches an unlabelled pod
        ("tier notin (web)", {}, True),
        ("tier notin (web)", {"tier": "web"}, False),
        ("!keep", {}, True),
        ("!keep", {"keep": ""}, False),
        ("tier in (batch,etl),team", {"tier": "etl", "team": "x"}, True),
        ("tier in (batch,etl),team", {"tier": "etl"}, False),
        ("priority<10", {"priority": "3"}, True),
        ("priority<10", {"priority": "high"}, False),
    ],
)
def test_label_selector_exclusion(selector: str, labels: dict[str, str], excluded: bool) -> None:
    f = ExclusionFilter.from_strings("", "", selector, "")
    p = pod(labels=labels)
    assert (f.pod_exclusion(p) is not None) is excluded
    assert (f.container_exclusion(p, APP) is not None) is excluded


@pytest.mark.parametrize(
    ("regex", "namespace", "pod_name", "container", "excluded"),
    [
        ("worker", "batch", "job-1", "worker", True),
        ("^batch/", "batch", "job-1", "worker", True),
        ("^batch/", "prod", "batch", "worker", False),
        ("^prod/batch/", "prod", "batch", "worker", True),
        ("/job-\\d+/", "batch", "job-17", "c", True),
        ("/job-\\d+/", "batch", "job-x", "c", False),
        ("^batch/job-1$", "batch", "job-1", "c", False),  # the container is part of the path
        ("^batch/job-1/c$", "batch", "job-1", "c", True),
        ("WORKER", "batch", "job-1", "worker", False),  # case-sensitive unless (?i)
        ("(?i)WORKER", "batch", "job-1", "worker", True),
    ],
)
def test_regex_exclusion(
    regex: str, namespace: str, pod_name: str, container: str, excluded: bool
) -> None:
    f = ExclusionFilter.from_strings("", "", "", regex)
    p = pod(namespace=namespace, name=pod_name)
    reason = f.container_exclusion(p, ContainerInfo(name=container, image="img"))
    assert (reason is not None) is excluded
    if excluded:
        assert reason == Exclusion(
            ExclusionRule.REGEX,
            f"{namespace}/{pod_name}/{container} matches exclusion regex '{regex}'",
        )
    assert f.pod_exclusion(p) is None


def test_direct_construction() -> None:
    f = ExclusionFilter(
        keywords=("envoy",),
        namespaces=frozenset({"infra"}),
        label_selector=parse_selector("skip"),
        regex=re.compile("/db-"),
    )
    assert f.container_exclusion(pod(), APP) is None
    assert f.container_exclusion(pod(namespace="infra"), APP) == Exclusion(
        NS, "namespace infra is excluded"
    )
    assert f.container_exclusion(pod(labels={"skip": ""}), APP) is not None
    assert f.container_exclusion(pod(), ContainerInfo("c", "envoyproxy/envoy:v1")) is not None
    assert f.container_exclusion(pod(name="db-0"), APP) is not None


def test_only_the_namespace_rule_is_the_administrators() -> None:
    assert [r for r in ExclusionRule if not r.tenant_controlled] == [NS]


def test_namespace_rule_wins_over_tenant_rules() -> None:
    """A pod in an excluded namespace that also matches tenant rules is reported as
    excluded by its namespace: the planner lifts limits only for that rule."""
    f = ExclusionFilter.from_strings("app", "infra", "x", "app")
    p = pod(namespace="infra", labels={"x": ""})
    exclusion = f.container_exclusion(p, APP)
    assert exclusion is not None and exclusion.rule is NS
    assert f.container_exclusion(pod(labels={"x": ""}), APP) == Exclusion(
        LABELS, "pod labels match exclusion selector 'x'"
    )


def test_filter_is_immutable_and_hashable() -> None:
    f = ExclusionFilter.from_strings("a", "b", "c", "d")
    assert f == ExclusionFilter.from_strings(" a ", "b,", "c", " d")
    assert hash(f) == hash(ExclusionFilter.from_strings("a", "b", "c", "d"))
    with pytest.raises(AttributeError):
        f.keywords = ()  # type: ignore[misc]
