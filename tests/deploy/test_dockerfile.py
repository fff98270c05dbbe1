"""The Dockerfile, checked without a Docker engine.

The build is modelled from the parsed Dockerfile and the build context that .dockerignore
lets through (docker-py's own implementation of its rules): which repository file lands
at which image path, and which files exist when each RUN step runs. The tests then ask of
that model what the agent needs at run time.
"""

from __future__ import annotations

import json
import os
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import attrs
import pytest
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

import diskguard
from diskguard.cli import main as cli_main
from diskguard.sampler.bpf import default_source

from .manifests import DEPLOY, REPO, agent_container, load_manifests, one

DOCKERFILE = REPO / "Dockerfile"


@attrs.frozen
class Run:
    command: str
    cwd: PurePosixPath
    files: frozenset[PurePosixPath]  # what the image holds when the step runs


@attrs.define
class ImageModel:
    base: str = ""
    workdir: PurePosixPath = attrs.Factory(lambda: PurePosixPath("/"))
    files: dict[PurePosixPath, str] = attrs.Factory(dict)  # image path -> repository path
    copy_sources: list[str] = attrs.Factory(list)
    runs: list[Run] = attrs.Factory(list)
    env: dict[str, str] = attrs.Factory(dict)
    user: str = "root"
    entrypoint: list[str] = attrs.Factory(list)
    cmd: list[str] = attrs.Factory(list)


def build_context(root: Path = REPO) -> set[str]:
    """Repository-relative paths that `docker build` would send (files and directories)."""
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    return set(exclude_paths(str(root), patterns))


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)  # the shell form would wrap the agent in `sh -c`
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def model_image(dockerfile: Path = DOCKERFILE, root: Path = REPO) -> ImageModel:
    context = build_context(root)
    image = ImageModel()
    with dockerfile.open("rb") as f:
        structure = DockerfileParser(fileobj=f).structure
    for step in structure:
        instruction, value = step["instruction"], step["value"]
        if instruction == "FROM":
            assert not image.base, "one build stage is expected"
            image.base = value
        elif instruction == "WORKDIR":
            image.workdir = image.workdir / value
        elif instruction == "COPY":
            _copy(image, value, context, root)
        elif instruction == "RUN":
            image.runs.append(Run(value, image.workdir, frozenset(image.files)))
        elif instruction == "ENV":
            key, _, val = value.partition("=")
            image.env[key.strip()] = val.strip()
        elif instruction == "USER":
            image.user = value.strip()
        elif instruction == "ENTRYPOINT":
            image.entrypoint = _exec_form(value)
        elif instruction == "CMD":
            image.cmd = _exec_form(value)
    return image


def _copy(image: ImageModel, value: str, context: set[str], root: Path) -> None:
    *sources, dest = shlex.split(value)
    assert not any(s.startswith("--") for s in sources), f"COPY flags are not modelled: {value}"
    target = image.workdir / dest
    for source in sources:
        image.copy_sources.append(source)
        rel = os.path.normpath(source)
        if (root / rel).is_dir():
            for path in context:
                if path.startswith(rel + "/") and (root / path).is_file():
                    image.files[target / os.path.relpath(path, rel)] = path
        elif rel in context:
            into_dir = dest.endswith("/") or len(sources) > 1
            image.files[(target / Path(rel).name) if into_dir else target] = rel


@pytest.fixture(scope="module")
def image() -> ImageModel:
    return model_image()


def _runs_invoking(image: ImageModel, script: str, argument: str) -> list[Run]:
    found = []
    for run in image.runs:
        words = shlex.split(run.command)
        for i, word in enumerate(words[:-1]):
            if word.endswith(script) and words[i + 1] == argument:
                found.append(run)
    return found


# ---------------------------------------------------------------------------------------


def test_base_is_debian_bookworm_slim(image: ImageModel) -> None:
    assert image.base == "debian:bookworm-slim"


def test_every_copy_source_is_in_the_repository_and_the_build_context(
    image: ImageModel,
) -> None:
    context = build_context()
    assert image.copy_sources, "the Dockerfile copies nothing"
    for source in image.copy_sources:
        rel = os.path.normpath(source)
        assert (REPO / rel).exists(), f"COPY {source}: no such path in the repository"
        assert rel in context, f"COPY {source}: .dockerignore leaves it out of the context"
        if (REPO / rel).is_dir():
            on_disk = {
                str(p.relative_to(REPO))
                for p in (REPO / rel).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            }
            left_out = sorted(on_disk - context)
            assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out}"


def test_build_context_leaves_out_the_venv_git_and_tests() -> None:
    context = build_context()
    for bulky in (".venv", ".git", "tests", "deploy", "bench"):
        assert not any(p == bulky or p.startswith(bulky + "/") for p in context), bulky


def test_system_packages_come_from_the_shared_install_script(image: ImageModel) -> None:
    runs = _runs_invoking(image, "scripts/install-system-deps.sh", "runtime")
    assert len(runs) == 1, "install-system-deps.sh runtime must run exactly once"
    run = runs[0]
    script = run.cwd / "scripts/install-system-deps.sh"
    assert script in run.files, "the install script is run before it is copied in"
    assert image.files[script] == "scripts/install-system-deps.sh"
    # One list of packages: the script's. An apt-get install elsewhere would drift from CI.
    for other in image.runs:
        assert "apt-get install" not in other.command, other.command


def test_venv_comes_from_the_shared_script_and_holds_the_entrypoint(
    image: ImageModel,
) -> None:
    runs = _runs_invoking(image, "scripts/setup-venv.sh", "runtime")
    assert len(runs) == 1, "setup-venv.sh runtime must run exactly once"
    run = runs[0]
    script = run.cwd / "scripts/setup-venv.sh"
    assert script in run.files, "setup-venv.sh is run before it is copied in"
    assert run.cwd / "pyproject.toml" in run.files, "the venv is built without pyproject.toml"
    assert "DISKGUARD_VENV" not in image.env
    # setup-venv.sh puts the venv at <its directory>/../.venv; pyproject names the script.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("diskguard") == "diskguard.cli:main"
    venv_bin = script.parent.parent / ".venv/bin"
    assert image.entrypoint == [str(venv_bin / "diskguard")]
    assert image.entrypoint == ["/opt/diskguard/.venv/bin/diskguard"]
    # `diskguard doctor` by name in `kubectl exec`
    assert image.env["PATH"].split(":")[0] == str(venv_bin)


def test_image_holds_the_package_and_the_bpf_program_where_the_code_looks(
    image: ImageModel,
) -> None:
    package = Path(diskguard.__file__).parent
    workdir = image.workdir
    modules = [p for p in package.rglob("*") if p.suffix in (".py", ".typed")]
    assert modules
    for module in modules:
        image_path = workdir / module.relative_to(REPO)
        assert image.files.get(image_path) == str(module.relative_to(REPO)), image_path
    # The sampler finds its C source relative to the package it runs from.
    bpf = workdir / default_source().relative_to(REPO)
    assert bpf in image.files, f"{bpf} is not in the image"


def test_cmd_runs_the_agent_and_the_daemonset_agrees(image: ImageModel) -> None:
    assert image.cmd == ["run"]
    assert image.cmd[0] in cli_main.commands
    container = agent_container(one(load_manifests(DEPLOY), "DaemonSet").doc)
    assert "command" not in container, "the DaemonSet must not bypass the ENTRYPOINT"
    assert container.get("args") == image.cmd


def test_runs_as_root(image: ImageModel) -> None:
    assert image.user in ("root", "0", "0:0")
