"""Prometheus' own `promtool` over the rules and queries in deploy/, fully offline.

promtool comes with Debian's prometheus package (scripts/install-system-deps.sh dev); a test
that needs it is skipped, saying so, where it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from .kustomize import find
from .manifests import built

MISSING = "needs promtool (Debian's prometheus package: scripts/install-system-deps.sh dev)"


def promtool() -> str:
    """The promtool binary; skips the calling test when there is none."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(MISSING)
    return found


def alert_rules() -> dict[str, Any]:
    """The plain rule file (`groups: [...]`) that the podmonitor component's PrometheusRule
    holds: what the operator hands Prometheus."""
    rule = find(built("podmonitor"), "PrometheusRule")
    return dict(rule["spec"])


def write_rules(path: Path, rules: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(rules), sort_keys=False))
    return path


def run(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS` in `cwd`; the result, whatever its exit status."""
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def check_rules(path: Path) -> None:
    """`promtool check rules`: every expression parses, every rule is well formed, no two
    rules are duplicates. Raises AssertionError with promtool's output otherwise."""
    done = run(["check", "rules", path.name], path.parent)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Duplicates are only a warning to promtool; here they are a mistake.
    assert "duplicate" not in output.lower(), output
