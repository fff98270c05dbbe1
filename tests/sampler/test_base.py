"""Target validation and the hierarchy check every sampler applies before touching a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskguard.sampler.base import Target, under_root

ROOT = Path("/sys/fs/cgroup/blkio")


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/sys/fs/cgroup/blkio/kubepods/pod1/c1", True),
        ("/sys/fs/cgroup/blkio/a", True),
        ("/sys/fs/cgroup/blkio", False),  # the root itself is no container
        ("/sys/fs/cgroup/blkio/", False),
        ("/sys/fs/cgroup/blkiox/a", False),  # a sibling sharing the prefix
        ("/sys/fs/cgroup/memory/a", False),
        ("/sys/fs/cgroup//blkio//a", True),  # Path normalises separators
    ],
)
def test_under_root(path: str, inside: bool) -> None:
    assert under_root(ROOT, Path(path)) is inside
    assert under_root(Path(str(ROOT) + "/"), Path(path)) is inside


def test_target_refuses_what_could_escape_the_hierarchy() -> None:
    assert Target(7, "/sys/fs/cgroup/blkio/a").path == Path("/sys/fs/cgroup/blkio/a")
    for bad in ("a/b", "/sys/fs/cgroup/blkio/../../../etc", "../x"):
        with pytest.raises(ValueError):
            Target(7, Path(bad))
    for bad_id in (0, -1):
        with pytest.raises(ValueError):
            Target(bad_id, ROOT / "a")


def test_target_of_reads_the_inode(tmp_path: Path) -> None:
    d = tmp_path / "cg"
    d.mkdir()
    assert Target.of(d).cgroup_id == d.stat().st_ino
    with pytest.raises(OSError):
        Target.of(tmp_path / "missing")
