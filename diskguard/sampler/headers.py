"""Find kernel headers BCC can compile against, merging Debian's split header trees.

BCC compiles every program with clang against a kernel header tree, even programs that use
no kernel struct. Our program takes all layout from BTF, so any reasonably recent header
tree works, not only the running kernel's (a node often runs a kernel with no matching
headers package). Debian ships each version in two trees, `linux-headers-<v>-common`
(sources: include/linux/kconfig.h …) and `linux-headers-<v>-<flavour>` (generated files:
include/generated/autoconf.h …); BCC needs both in one directory, so we build a merged tree
of symlinks in a cache directory and point `BCC_KERNEL_SOURCE` at it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

DEFAULT_SEARCH = (Path("/lib/modules"), Path("/usr/src"))

_AUTOCONF = Path("include/generated/autoconf.h")
_KCONFIG = Path("include/linux/kconfig.h")
_UTSRELEASE = Path("include/generated/utsrelease.h")
_MAKEFILE_INCLUDE = re.compile(r"^include\s+(\S+)/Makefile\s*$", re.MULTILINE)
_STAMP = ".diskguard-merged-from"


class HeadersError(Exception):
    """No usable kernel header tree was found (or the merged tree could not be built)."""


@attrs.frozen
class KernelHeaders:
    """A header tree ready for `BCC_KERNEL_SOURCE`."""

    path: Path
    release: str  # UTS_RELEASE of the headers, e.g. "6.1.0-56-amd64"
    sources: tuple[Path, ...]  # the tree(s) `path` was made from
    exact: bool  # the headers belong to the running kernel

    def describe(self) -> str:
        match = "matching" if self.exact else "not matching the running kernel"
        return f"{self.release} ({match}) from {', '.join(map(str, self.sources))}"


@attrs.frozen
class _Tree:
    path: Path  # resolved
    generated: bool  # has include/generated/autoconf.h
    source: bool  # has include/linux/kconfig.h


def _tree(path: Path) -> _Tree | None:
    try:
        real = path.resolve(strict=True)
    except OSError:
        return None
    if not real.is_dir():
        return None
    tree = _Tree(real, (real / _AUTOCONF).is_file(), (real / _KCONFIG).is_file())
    return tree if tree.generated or tree.source else None


def _release_of(tree: Path) -> str | None:
    try:
        text = (tree / _UTSRELEASE).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r'UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else None


def version_key(release: str) -> tuple[int, ...]:
    """Order releases like `6.1.0-56-amd64` < `6.12.3` by their numbers."""
    return tuple(int(n) for n in re.findall(r"\d+", release)[:5])


def _candidates(search: Sequence[Path]) -> Iterator[Path]:
    for root in search:
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        yield root
        for entry in entries:
            yield entry
            # /lib/modules/<release>/{build,source}
            yield entry / "build"
            yield entry / "source"


def _partner(flavour: _Tree, sources: list[_Tree]) -> _Tree | None:
    """The common (source) tree a generated-only Debian tree was built from."""
    # Debian's flavour Makefile is a single `include <common tree>/Makefile`.
    with contextlib.suppress(OSError):
        m = _MAKEFILE_INCLUDE.search((flavour.path / "Makefile").read_text(errors="replace"))
        if m:
            named = _tree(Path(m.group(1)))
            if named is not None and named.source:
                return named
    # Otherwise by name: linux-headers-6.1.0-56-amd64 ↔ linux-headers-6.1.0-56-common.
    stem = re.sub(r"-[A-Za-z][\w.]*$", "", flavour.path.name)
    for tree in sources:
        if tree.path.name.startswith(stem + "-common"):
            return tree
    return None


def find_kernel_headers(
    release: str, cache_dir: Path, search: Sequence[Path] = DEFAULT_SEARCH
) -> KernelHeaders:
    """The best header tree under `search`: the running kernel's if present, else the newest.

    Raises HeadersError naming the directories searched when there is none.
    """
    trees: dict[Path, _Tree] = {}
    for cand in _candidates(search):
        tree = _tree(cand)
        if tree is not None:
            trees.setdefault(tree.path, tree)
    sources = [t for t in trees.values() if t.source and not t.generated]
    usable: list[tuple[str, tuple[_Tree, ...]]] = []
    for tree in trees.values():
        if not tree.generated:
            continue
        rel = _release_of(tree.path)
        if rel is None:
            continue
        if tree.source:
            usable.append((rel, (tree,)))
        else:
            partner = _partner(tree, sources)
            if partner is not None:
                usable.append((rel, (partner, tree)))
    if not usable:
        searched = ", ".join(map(str, search)) or "(nothing)"
        raise HeadersError(f"no kernel headers (include/generated/autoconf.h) under {searched}")
    rel, parts = max(usable, key=lambda u: (u[0] == release, version_key(u[0]), u[0]))
    exact = rel == release
    if len(parts) == 1:
        return KernelHeaders(parts[0].path, rel, (parts[0].path,), exact)
    merged = _merged_tree(cache_dir, rel, [p.path for p in parts])
    return KernelHeaders(merged, rel, tuple(p.path for p in parts), exact)


def _merged_tree(cache_dir: Path, release: str, layers: list[Path]) -> Path:
    """A directory of symlinks overlaying `layers` (later wins), built once and reused."""
    if not re.fullmatch(r"[\w.+-]+", release):
        raise HeadersError(f"unexpected kernel release string {release!r}")
    dest = cache_dir / f"headers-{release}"
    stamp = "\n".join(str(p) for p in layers) + "\n"
    with contextlib.suppress(OSError):
        if (dest / _STAMP).read_text() == stamp:
            return dest
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        # Build beside the destination and rename, so a crash or a concurrent agent never
        # leaves a half-built tree that a later run would trust.
        tmp = Path(tempfile.mkdtemp(prefix=f".headers-{release}.", dir=cache_dir))
        try:
            for layer in layers:
                _overlay(layer, tmp)
            (tmp / _STAMP).write_text(stamp)
            if dest.exists() or dest.is_symlink():
                shutil.rmtree(dest) if dest.is_dir() and not dest.is_symlink() else dest.unlink()
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise HeadersError(f"cannot build merged kernel headers in {cache_dir}: {e}") from e
    return dest


def _overlay(src: Path, dst: Path, depth: int = 0) -> None:
    """Make `src`'s entries visible in `dst`, `src` winning over what is already there.

    An entry only one layer has becomes one symlink, even a whole directory; only
    directories both layers have are made real and merged, so the tree stays small.
    """
    if depth > 32:
        raise OSError(f"directory nesting too deep at {src}")
    with os.scandir(src) as it:
        for entry in it:
            target = dst / entry.name
            link = os.path.abspath(entry.path)
            if not os.path.lexists(target):
                target.symlink_to(link)
                continue
            if entry.is_dir() and target.is_dir():
                if target.is_symlink():
                    # So far one layer's directory: materialise it one level deep.
                    earlier = Path(os.readlink(target))
                    target.unlink()
                    target.mkdir()
                    _overlay(earlier, target, depth + 1)
                _overlay(Path(entry.path), target, depth + 1)
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
            target.symlink_to(link)
