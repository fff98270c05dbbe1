"""The profile image (deploy/profile/Dockerfile: the agent's image plus fio), built from
the image this lane built and run the way deploy/profile's DaemonSet runs it: it measures
a loop disk and records the figures where the agent reads them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskguard.node.capacity import disk_identity, read_capacity
from diskguard.node.state import StateDir
from diskguard.testing.lab import LoopDisk

from .daemonset_run import container_args, docker_run_args
from .docker_lab import BuiltImage, docker

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "deploy" / "profile"
TAG = "diskguard-profile:image-lane"


def profile_daemonset() -> dict[str, Any]:
    return dict(yaml.safe_load((PROFILE / "daemonset.yaml").read_text()))


@pytest.fixture(scope="module")
def profile_image(image: BuiltImage, fresh_clone: Path) -> Iterator[str]:
    started = time.monotonic()
    docker(
        "build",
        "--network=host",
        f"--build-arg=BASE={image.tag}",
        f"--file={fresh_clone / 'deploy' / 'profile' / 'Dockerfile'}",
        f"--tag={TAG}",
        str(fresh_clone / "deploy" / "profile"),
        timeout=900,
    )
    size = int(json.loads(docker("image", "inspect", TAG).stdout)[0]["Size"])
    # The figures the README quotes (pytest -m image -s prints them).
    print(
        f"\nimage {TAG}: built in {time.monotonic() - started:.0f} s, "
        f"{(size - image.size_bytes) / 2**20:.0f} MiB over the agent's image"
    )
    yield TAG
    docker("image", "rm", "--force", TAG, check=False)


def test_the_profile_image_measures_a_disk_like_the_daemonset(
    profile_image: str, loop_disk: LoopDisk, tmp_path: Path
) -> None:
    assert loop_disk.mount is not None
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # HostToContainer (rslave) needs a shared source mount, as a systemd host's are.
    subprocess.run(["mount", "--make-shared", str(loop_disk.mount)], check=True)
    ds = profile_daemonset()
    options = docker_run_args(
        ds,
        node_name="image-lane-node",
        host_paths={"data": str(loop_disk.mount), "state": str(state_dir)},
        container="profile",
    )
    # Short runs on a small file: the loop disk is 256 MiB.
    args = [*container_args(ds, "profile"), "--seconds", "1", "--size", "32Mi", "--json"]
    done = docker("run", "--rm", *options, profile_image, *args, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    identity = disk_identity(loop_disk.device)
    assert identity is not None
    recorded = read_capacity(StateDir(state_dir))[identity]
    limits = recorded.as_limits()
    assert all(limits.get(f) > 0 for f in limits.as_dict()), recorded
    # What it printed is what it recorded, under the identity the agent computes on the host.
    [result] = json.loads(done.stdout)
    assert result["identity"] == identity and result["recorded"], result
    assert result["capacity"] == recorded.as_json(), (result, recorded)
    # Only the record is left behind: fio's test file is gone from the data disk.
    assert not [p for p in loop_disk.mount.iterdir() if p.name != "lost+found"]
