"""Fixtures of the install lane: a fresh clone and virtualenvs built the way users build them.

The clone is of the checkout's committed HEAD (`git clone`), so what is tested is exactly
what a user who clones the repository gets: an uncommitted file cannot hide a missing one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_logged(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 840
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its whole output when it fails (the default timeout is
    below the install lane's per-test budget, so the command's output is not lost)."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}"
        f"\n--- stderr\n{done.stderr[-6000:]}"
    )
    return done


def user_env(**extra: str) -> dict[str, str]:
    """A root shell's environment: none of the test run's venv or Python settings leak in."""
    keep = ("PATH", "HOME", "LANG", "TERM", "http_proxy", "https_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if k in keep}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:  # drop the dev venv from PATH, as a fresh shell would not have it
        env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if not p.startswith(venv))
    return {**env, **extra}


@pytest.fixture(scope="session")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the install lane clones the repository")
    target = tmp_path_factory.mktemp("clone") / "diskguard"
    run_logged(["git", "clone", "--quiet", str(REPO), str(target)], cwd=REPO, timeout=120)
    yield target


@pytest.fixture(scope="session")
def runtime_venv(fresh_clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` (not editable) with runtime dependencies only, into a venv of
    Debian's python3 with system site-packages (bcc), as the README and the image do."""
    venv = tmp_path_factory.mktemp("venv") / "runtime"
    run_logged(
        ["bash", "scripts/setup-venv.sh", "runtime"],
        cwd=fresh_clone,
        env=user_env(DISKGUARD_VENV=str(venv)),
    )
    return venv
