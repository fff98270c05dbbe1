"""A Docker engine and the `debian:bookworm-slim` base on a machine without a registry.

Facts measured on the development VMs: Debian's `docker.io` (20.10) daemon has to be
started by hand where systemd is not PID 1 (`dockerd --iptables=false --bridge=none`; the
overlay2 driver works there and runs a container in under a second, where vfs copies the
whole image for each one); no image registry is reachable, so the base is made with
`mmdebstrap --variant=minbase bookworm` from the Debian archive (reachable) and imported
under the name the Dockerfile uses. The tarball is cached between runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

BASE_IMAGE = "debian:bookworm-slim"
CACHE = Path(os.environ.get("DISKGUARD_IMAGE_CACHE", "/var/cache/diskguard-image"))
# A cached base tarball older than this is made again, so security updates reach the
# lane's images when the engine does not have the base yet.
BASE_MAX_AGE = 7 * 24 * 3600


@attrs.frozen
class BuiltImage:
    tag: str
    version: str
    build_seconds: float
    size_bytes: int
    labels: dict[str, str]


def docker_cli() -> str:
    """Debian's client matches Debian's daemon; another `docker` on PATH may be newer."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError("docker: install docker.io (scripts/install-system-deps.sh dev)")


def docker(
    *argv: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # The classic builder: BuildKit may fetch a frontend image from a registry, and none
    # is reachable here.
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    done = subprocess.run(
        [docker_cli(), *argv], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(argv)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done


def docker_streaming(
    *argv: str, progress: Callable[[str], None], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`docker` whose output lines are also handed to `progress` as they come (a cold image
    build takes minutes: the lane shows its steps instead of silence)."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    proc = subprocess.Popen(
        [docker_cli(), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            progress(line.rstrip("\n"))
        code = proc.wait()
    finally:
        killer.cancel()
    out = "".join(lines)
    if code != 0:
        raise AssertionError(f"docker {' '.join(argv)} exited {code}\n--- output\n{out[-12000:]}")
    return subprocess.CompletedProcess(proc.args, code, out, "")


def engine_answers() -> bool:
    try:
        return (
            docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode
            == 0
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@contextmanager
def docker_engine(log: Path, start_timeout: float = 90) -> Iterator[None]:
    """Use a running engine, or start one for the duration and stop it afterwards (the
    test command must not leave a daemon behind)."""
    if engine_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise FileNotFoundError("dockerd: install docker.io (scripts/install-system-deps.sh dev)")
    with log.open("wb") as out:
        # Its own session: stopping it takes its containerd child along (killpg below).
        proc = subprocess.Popen(
            [dockerd, "--iptables=false", "--bridge=none", "--storage-driver=overlay2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while not engine_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield
    finally:
        # Rebuilds leave the previous image untagged: drop it, or the disk fills run by run.
        docker("image", "prune", "--force", check=False, timeout=300)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ensure_base_image() -> None:
    """Import the cached mmdebstrap tarball as debian:bookworm-slim (making it if needed)."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return  # never replace an engine's own image of that name
    tarball = CACHE / "bookworm-minbase.tar"
    fresh = tarball.exists() and time.time() - tarball.stat().st_mtime < BASE_MAX_AGE
    if not fresh:
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        done = subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--format=tar",
                "bookworm",
                str(partial),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"mmdebstrap failed:\n{done.stderr[-4000:]}")
        partial.replace(tarball)
    docker("import", str(tarball), BASE_IMAGE, timeout=600)
