"""Kernel header discovery and the merged tree built from Debian's split packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diskguard.sampler.headers import (
    DEFAULT_SEARCH,
    HeadersError,
    find_kernel_headers,
    version_key,
)


def _common(root: Path, name: str) -> Path:
    tree = root / name
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/linux/kconfig.h").write_text("/* common */\n")
    (tree / "include/linux/shared.h").write_text("common version\n")
    (tree / "arch/x86/include/asm").mkdir(parents=True)
    (tree / "arch/x86/include/asm/a.h").write_text("asm\n")
    (tree / "Makefile").write_text("# real makefile\n")
    return tree


def _flavour(root: Path, name: str, release: str, common: Path | None) -> Path:
    tree = root / name
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/generated/autoconf.h").write_text("#define CONFIG_X 1\n")
    (tree / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/linux/shared.h").write_text("flavour version\n")
    (tree / "arch/x86/include/generated").mkdir(parents=True)
    if common is not None:
        (tree / "Makefile").write_text(f"include {common}/Makefile\n")
    return tree


def test_split_debian_trees_are_merged_newest_first(tmp_path: Path) -> None:
    src = tmp_path / "usr-src"
    old_common = _common(src, "linux-headers-5.10.0-9-common")
    _flavour(src, "linux-headers-5.10.0-9-amd64", "5.10.0-9-amd64", old_common)
    common = _common(src, "linux-headers-6.1.0-56-common")
    # No Makefile include: paired by name instead.
    flavour = _flavour(src, "linux-headers-6.1.0-56-amd64", "6.1.0-56-amd64", None)

    headers = find_kernel_headers("6.18.44-custom", tmp_path / "cache", [src])
    assert headers.release == "6.1.0-56-amd64"
    assert not headers.exact
    assert headers.sources == (common, flavour)
    merged = headers.path
    assert (merged / "include/linux/kconfig.h").read_text() == "/* common */\n"
    assert (merged / "include/generated/autoconf.h").is_file()
    assert (merged / "arch/x86/include/asm/a.h").is_file()
    assert (merged / "arch/x86/include/generated").is_dir()
    # The flavour tree is the later layer and wins where both have a file.
    assert (merged / "include/linux/shared.h").read_text() == "flavour version\n"
    # Nothing was copied: the tree is symlinks into the packages.
    assert (merged / "include/linux/kconfig.h").is_symlink()

    stamp_mtime = (merged / ".diskguard-merged-from").stat().st_mtime_ns
    again = find_kernel_headers("6.18.44-custom", tmp_path / "cache", [src])
    assert again == headers
    assert (merged / ".diskguard-merged-from").stat().st_mtime_ns == stamp_mtime


def test_running_kernel_headers_win_and_complete_trees_are_used_in_place(
    tmp_path: Path,
) -> None:
    modules = tmp_path / "lib-modules"
    build = modules / "5.15.0-1-generic" / "build"
    _common(build.parent, "build")
    _flavour(build.parent, "build-gen", "5.15.0-1-generic", None)
    # Make one complete tree (Ubuntu style) out of the two halves.
    for f in (build.parent / "build-gen").rglob("*"):
        dest = build / f.relative_to(build.parent / "build-gen")
        if f.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.write_text(f.read_text())
    src = tmp_path / "usr-src"
    newer_common = _common(src, "linux-headers-6.5.0-1-common")
    _flavour(src, "linux-headers-6.5.0-1-amd64", "6.5.0-1-amd64", newer_common)

    headers = find_kernel_headers("5.15.0-1-generic", tmp_path / "cache", [modules, src])
    assert headers.exact
    assert headers.path == build.resolve()
    assert headers.sources == (build.resolve(),)
    assert not (tmp_path / "cache").exists()  # nothing to merge


def test_no_headers_names_the_search_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HeadersError, match=f"no kernel headers .* under {empty}"):
        find_kernel_headers("6.18.0", tmp_path / "cache", [empty, tmp_path / "missing"])


def test_flavour_tree_without_its_common_half_is_unusable(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _flavour(src, "linux-headers-6.1.0-56-amd64", "6.1.0-56-amd64", None)
    with pytest.raises(HeadersError):
        find_kernel_headers("6.1.0-56-amd64", tmp_path / "cache", [src])


def test_version_ordering() -> None:
    assert version_key("6.1.0-56-amd64") < version_key("6.12.3") < version_key("6.18.44-fc")
    assert version_key("5.10.0-9-amd64") < version_key("6.1.0-1-amd64")


@pytest.mark.kernel  # this host's kernel headers
def test_host_headers_build_a_tree_bcc_can_use(tmp_path: Path) -> None:
    try:
        headers = find_kernel_headers(os.uname().release, tmp_path, DEFAULT_SEARCH)
    except HeadersError as e:
        pytest.skip(f"no kernel headers on this host: {e}")
    for needed in ("include/linux/kconfig.h", "include/generated/autoconf.h"):
        assert (headers.path / needed).resolve().is_file(), needed
    arch = os.uname().machine.replace("x86_64", "x86").replace("aarch64", "arm64")
    assert (headers.path / "arch" / arch / "include").is_dir()
