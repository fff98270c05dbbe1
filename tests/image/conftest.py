"""Fixtures of the image lane: an engine, the base image, and the image built from the
Dockerfile of a fresh clone (what a user who clones the repository builds)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .docker_lab import BuiltImage, docker, docker_engine, docker_streaming, ensure_base_image

VERSION = "0.0.0+imagelane"
TAG = "diskguard:image-lane"
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the image lane needs root (dockerd, loop disks, cgroups)")
    with docker_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
        yield


@pytest.fixture(scope="session")
def image(engine: None, fresh_clone: Path, request: pytest.FixtureRequest) -> BuiltImage:
    ensure_base_image()
    # Like a user behind a TLS-intercepting proxy: the machine's own extra CAs go where the
    # builder stage trusts them (deploy/build-ca/README.md).
    for crt in HOST_EXTRA_CAS.glob("*.crt"):
        shutil.copy(crt, fresh_clone / "deploy" / "build-ca" / crt.name)
    started = time.monotonic()
    # --network host: the build's apt and pip reach the archive and PyPI through the VM's
    # network (the engine here runs without a bridge).
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def progress(line: str) -> None:
        # The build's steps reach the terminal past pytest's capture: minutes of silence
        # look like a hang.
        if line.startswith("Step ") and capture is not None:
            with capture.global_and_fixture_disabled():
                print(f"  image build: {line[:120]}", flush=True)

    docker_streaming(
        "build",
        "--network=host",
        f"--build-arg=VERSION={VERSION}",
        f"--tag={TAG}",
        str(fresh_clone),
        progress=progress,
        timeout=1500,
    )
    seconds = time.monotonic() - started
    inspect = json.loads(docker("image", "inspect", TAG).stdout)[0]
    built = BuiltImage(
        tag=TAG,
        version=VERSION,
        build_seconds=seconds,
        size_bytes=int(inspect["Size"]),
        labels=dict(inspect["Config"].get("Labels") or {}),
    )
    # The figures the README quotes (pytest -m image -s prints them).
    print(f"\nimage {TAG}: built in {seconds:.0f} s, {built.size_bytes / 2**20:.0f} MiB")
    return built
