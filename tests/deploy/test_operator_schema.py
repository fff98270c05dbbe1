"""The Prometheus Operator objects of components/podmonitor against the operator's own
schemas, offline: the Kubernetes schemas (test_components.py) do not know CRDs.

tests/deploy/operator-schema/ is a tiny node project pinning
@kubernetes-models/prometheus-operator (ajv validators generated from the operator's CRDs);
`scripts/setup-venv.sh dev` runs `npm ci` there. Without node the test is skipped; with node
but without that install it fails, since a dev setup should have it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from .manifests import REPO, built, mutated

PROJECT = Path(__file__).parent / "operator-schema"
OPERATOR_GROUP = "monitoring.coreos.com/"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node (scripts/install-system-deps.sh dev installs Debian's nodejs)")
    installed = PROJECT / "node_modules" / "@kubernetes-models" / "prometheus-operator"
    if not installed.is_dir():
        pytest.fail(
            f"{installed.relative_to(REPO)} is missing: run scripts/setup-venv.sh dev "
            "(npm ci --prefix tests/deploy/operator-schema)"
        )
    return node


def validate(objects: Iterable[Mapping[str, Any]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_node(), str(PROJECT / "validate.mjs")],
        input=json.dumps(list(objects)),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _operator_objects() -> list[dict[str, Any]]:
    objects = [o for o in built("podmonitor") if o["apiVersion"].startswith(OPERATOR_GROUP)]
    assert {o["kind"] for o in objects} == {"PodMonitor", "PrometheusRule"}
    return objects


def test_the_podmonitor_and_the_rules_are_valid_for_the_operator() -> None:
    done = validate(_operator_objects())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("valid: ") == 2, done.stdout


@pytest.mark.parametrize(
    ("kind", "path", "value", "error"),
    [
        ("PodMonitor", "spec.podMetricsEndpoints.0.honorLabels", "yes", "must be boolean"),
        ("PodMonitor", "spec.podMetricsEndpoints.0.interval", "30 s", "must match pattern"),
        ("PrometheusRule", "spec.groups.0.rules.0.for", "five minutes", "must match pattern"),
    ],
)
def test_an_invalid_field_is_refused(kind: str, path: str, value: Any, error: str) -> None:
    objects = [
        mutated(o, path, value=value) if o["kind"] == kind else o for o in _operator_objects()
    ]
    done = validate(objects)
    assert done.returncode == 1, done.stdout + done.stderr
    field = "/".join(path.split("."))
    assert f"invalid: {OPERATOR_GROUP}v1/{kind} diskguard: data/{field} {error}" in done.stdout


def test_a_kind_the_validator_does_not_know_is_an_error() -> None:
    done = validate([{"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitr"}])
    assert done.returncode == 2 and "not a kind this script validates" in done.stderr
