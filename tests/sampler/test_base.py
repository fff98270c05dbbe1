"""Target validation and the hierarchy check every sampler applies before touching a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskguard.sampler.base import Liveness, Target, under_root

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


def test_liveness_is_checked_when_first_seen_and_again_after_recheck(tmp_path: Path) -> None:
    now = [100.0]
    liveness = Liveness(recheck=10.0, clock=lambda: now[0])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Target.of(tmp_path / "a"), Target.of(tmp_path / "b")
    (tmp_path / "b").rmdir()
    assert liveness(a) and not liveness(b)  # both looked at on first sight
    (tmp_path / "a").rmdir()
    now[0] += 9.9
    assert liveness(a)  # trusted within `recheck`: no stat
    now[0] += 0.2
    assert not liveness(a)  # looked at again: gone
    (tmp_path / "a").mkdir()  # the same path, a new directory (another inode)
    assert liveness(a) is (Target.of(tmp_path / "a").cgroup_id == a.cgroup_id)
    (tmp_path / "c").mkdir()
    c = Target.of(tmp_path / "c")
    assert liveness(c)
    liveness.keep_only({c})
    assert liveness._checked.keys() == {c}  # bounded by what is still asked about
