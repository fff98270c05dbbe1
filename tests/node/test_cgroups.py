"""cgroup detection, the kubelet cgroup layout, ID validation and cgroup ids."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path, PurePosixPath

import pytest

from diskguard.model import CgroupDriver, CgroupVersion, ContainerRef, QoSClass, Runtime
from diskguard.node.cgroups import CgroupError, CgroupHierarchy, cgroup_id, detect_cgroup
from diskguard.node.kubepods import (
    container_cgroup_candidates,
    container_cgroup_path,
    parse_container_id,
    pod_cgroup_path,
    resolve_container_cgroup,
    validate_container_id,
    validate_pod_uid,
)

CGROUP_ROOT = os.environ.get("DISKGUARD_TEST_CGROUP_ROOT", "/sys/fs/cgroup")

UID = "0b3c5e2a-1d4f-4a6b-9c8d-7e6f5a4b3c2d"
UID_ = "0b3c5e2a_1d4f_4a6b_9c8d_7e6f5a4b3c2d"
CID = "4f1e9c0d2b7a8e6f5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e"


def ref(
    runtime: Runtime = Runtime.CONTAINERD,
    qos: QoSClass = QoSClass.BURSTABLE,
    pod_uid: str = UID,
    container_id: str = CID,
) -> ContainerRef:
    return ContainerRef("ns", "pod", pod_uid, "app", container_id, runtime, qos)


# ---------------------------------------------------------------- layout (pure)

POD_DIRS = {
    (CgroupDriver.CGROUPFS, QoSClass.GUARANTEED): f"kubepods/pod{UID}",
    (CgroupDriver.CGROUPFS, QoSClass.BURSTABLE): f"kubepods/burstable/pod{UID}",
    (CgroupDriver.CGROUPFS, QoSClass.BESTEFFORT): f"kubepods/besteffort/pod{UID}",
    (CgroupDriver.SYSTEMD, QoSClass.GUARANTEED): f"kubepods.slice/kubepods-pod{UID_}.slice",
    (CgroupDriver.SYSTEMD, QoSClass.BURSTABLE): (
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
    ),
    (CgroupDriver.SYSTEMD, QoSClass.BESTEFFORT): (
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
    ),
}

CONTAINER_LEAVES = {
    (CgroupDriver.CGROUPFS, Runtime.CONTAINERD): CID,
    (CgroupDriver.CGROUPFS, Runtime.DOCKER): CID,
    (CgroupDriver.CGROUPFS, Runtime.CRIO): f"crio-{CID}",
    (CgroupDriver.SYSTEMD, Runtime.CONTAINERD): f"cri-containerd-{CID}.scope",
    (CgroupDriver.SYSTEMD, Runtime.DOCKER): f"docker-{CID}.scope",
    (CgroupDriver.SYSTEMD, Runtime.CRIO): f"crio-{CID}.scope",
}


@pytest.mark.parametrize("driver", list(CgroupDriver))
@pytest.mark.parametrize("runtime", list(Runtime))
@pytest.mark.parametrize("qos", list(QoSClass))
def test_layout_matches_kubelet_and_runtime(
    driver: CgroupDriver, runtime: Runtime, qos: QoSClass
) -> None:
    expected = f"{POD_DIRS[driver, qos]}/{CONTAINER_LEAVES[driver, runtime]}"
    assert str(container_cgroup_path(ref(runtime, qos), driver)) == expected
    assert str(pod_cgroup_path(UID, qos, driver)) == POD_DIRS[driver, qos]


def test_layout_spot_checks_in_full() -> None:
    assert str(container_cgroup_path(ref(), CgroupDriver.SYSTEMD)) == (
        "kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-pod0b3c5e2a_1d4f_4a6b_9c8d_7e6f5a4b3c2d.slice/"
        f"cri-containerd-{CID}.scope"
    )
    assert str(
        container_cgroup_path(ref(Runtime.CRIO, QoSClass.GUARANTEED), CgroupDriver.CGROUPFS)
    ) == (f"kubepods/pod0b3c5e2a-1d4f-4a6b-9c8d-7e6f5a4b3c2d/crio-{CID}")


@pytest.mark.parametrize(
    ("root", "driver", "expected"),
    [
        ("/", CgroupDriver.CGROUPFS, f"kubepods/besteffort/pod{UID}/{CID}"),
        ("", CgroupDriver.CGROUPFS, f"kubepods/besteffort/pod{UID}/{CID}"),
        ("/custom", CgroupDriver.CGROUPFS, f"custom/kubepods/besteffort/pod{UID}/{CID}"),
        ("/a/b/", CgroupDriver.CGROUPFS, f"a/b/kubepods/besteffort/pod{UID}/{CID}"),
        (
            "/custom",
            CgroupDriver.SYSTEMD,
            "custom.slice/custom-kubepods.slice/custom-kubepods-besteffort.slice/"
            f"custom-kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope",
        ),
        (
            # kubelet escapes '-' inside a component to '_' before expanding slices
            "/my-root",
            CgroupDriver.SYSTEMD,
            "my_root.slice/my_root-kubepods.slice/my_root-kubepods-besteffort.slice/"
            f"my_root-kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope",
        ),
    ],
)
def test_layout_under_a_kubelet_cgroup_root(root: str, driver: CgroupDriver, expected: str) -> None:
    r = ref(Runtime.DOCKER, QoSClass.BESTEFFORT)
    assert str(container_cgroup_path(r, driver, root)) == expected


def test_candidates_auto_tries_both_drivers_in_order() -> None:
    r = ref()
    assert container_cgroup_candidates(r, None) == (
        container_cgroup_path(r, CgroupDriver.SYSTEMD),
        container_cgroup_path(r, CgroupDriver.CGROUPFS),
    )
    assert container_cgroup_candidates(r, CgroupDriver.CGROUPFS) == (
        PurePosixPath(f"kubepods/burstable/pod{UID}/{CID}"),
    )


def test_static_pod_hash_uid_is_accepted() -> None:
    static_uid = "5c1b0e4f0a6d4b0c9f0e2a3b4c5d6e7f"
    path = container_cgroup_path(ref(pod_uid=static_uid), CgroupDriver.SYSTEMD)
    assert f"kubepods-burstable-pod{static_uid}.slice" in path.parts


BAD_UIDS = ["", "../etc", "abc/def", "pod", "-abc", "a" * 65, "0b3c 5e2a", "0b3c\n", "é"]
BAD_CIDS = [
    "",
    "abc",  # too short
    "ABCDEF0123456789",  # uppercase
    "../../x",
    "0123456789ab/..",
    "0123456789abg",
    "a" * 129,
    "0123456789ab\n",
]


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_invalid_pod_uid_never_reaches_a_path(uid: str) -> None:
    with pytest.raises(ValueError, match="invalid pod UID"):
        validate_pod_uid(uid)
    # Defense in depth: the layout function validates again on its own.
    for driver in CgroupDriver:
        with pytest.raises(ValueError, match="invalid pod UID"):
            container_cgroup_path(ref(pod_uid=uid), driver)


@pytest.mark.parametrize("cid", BAD_CIDS)
def test_invalid_container_id_never_reaches_a_path(cid: str) -> None:
    with pytest.raises(ValueError, match="invalid container ID"):
        validate_container_id(cid)
    for driver in CgroupDriver:
        with pytest.raises(ValueError, match="invalid container ID"):
            container_cgroup_path(ref(container_id=cid), driver)
    with pytest.raises(ValueError):
        container_cgroup_candidates(ref(container_id=cid), None)


@pytest.mark.parametrize("root", ["/../etc", "/a/../b", "/.", "/a b", "/-x"])
def test_invalid_kubelet_root_is_rejected(root: str) -> None:
    with pytest.raises(ValueError, match="invalid kubelet cgroup root"):
        container_cgroup_path(ref(), CgroupDriver.CGROUPFS, root)


@pytest.mark.parametrize(
    ("raw", "runtime"),
    [
        (f"containerd://{CID}", Runtime.CONTAINERD),
        (f"docker://{CID}", Runtime.DOCKER),
        (f"cri-o://{CID}", Runtime.CRIO),
    ],
)
def test_parse_container_id(raw: str, runtime: Runtime) -> None:
    assert parse_container_id(raw) == (runtime, CID)


@pytest.mark.parametrize(
    "raw",
    [
        "containerd://../../x",
        f"rkt://{CID}",
        CID,
        f"containerd:/{CID}",
        f"containerd://{CID}/..",
        "containerd://",
        f"CONTAINERD://{CID}",
        "",
    ],
)
def test_parse_container_id_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_container_id(raw)


# ---------------------------------------------------------------- detection


def _fake_tree(base: Path, *, v2_at: str | None, v2_controllers: str, v1: bool) -> Path:
    if v2_at is not None:
        v2 = base / v2_at
        v2.mkdir(parents=True, exist_ok=True)
        (v2 / "cgroup.controllers").write_text(v2_controllers + "\n")
    if v1:
        (base / "blkio").mkdir(parents=True)
        (base / "blkio" / "blkio.throttle.read_iops_device").write_text("")
    return base


def test_detect_rules_on_hierarchy_shapes(tmp_path: Path) -> None:
    # File shapes only; the real hierarchies are checked below.
    hybrid = _fake_tree(tmp_path / "h", v2_at="unified", v2_controllers="", v1=True)
    assert detect_cgroup(str(hybrid), None) == CgroupHierarchy(CgroupVersion.V1, hybrid / "blkio")
    with pytest.raises(CgroupError, match="io controller"):
        detect_cgroup(str(hybrid), CgroupVersion.V2)

    unified_io = _fake_tree(tmp_path / "u", v2_at="unified", v2_controllers="cpu io", v1=True)
    assert detect_cgroup(str(unified_io), None) == CgroupHierarchy(
        CgroupVersion.V2, unified_io / "unified"
    )
    assert detect_cgroup(str(unified_io), CgroupVersion.V1).version is CgroupVersion.V1

    pure = _fake_tree(tmp_path / "p", v2_at=".", v2_controllers="cpuset cpu io memory", v1=False)
    assert detect_cgroup(str(pure), None) == CgroupHierarchy(CgroupVersion.V2, pure)
    with pytest.raises(CgroupError, match=r"blkio\.throttle\.read_iops_device"):
        detect_cgroup(str(pure), CgroupVersion.V1)

    no_io = _fake_tree(tmp_path / "n", v2_at=".", v2_controllers="cpu memory", v1=False)
    with pytest.raises(CgroupError, match="no IO-limit cgroup hierarchy"):
        detect_cgroup(str(no_io), None)


@pytest.mark.v1
def test_detect_on_a_v1_host_picks_blkio() -> None:
    found = detect_cgroup(CGROUP_ROOT, None)
    assert found == CgroupHierarchy(CgroupVersion.V1, Path(CGROUP_ROOT, "blkio"))
    assert detect_cgroup(CGROUP_ROOT, CgroupVersion.V1) == found
    # What the kernel says this mount is.
    assert "blkio" in _mount_options(found.path)
    with pytest.raises(CgroupError, match=r"cgroup v2 requested.*io controller"):
        detect_cgroup(CGROUP_ROOT, CgroupVersion.V2)


@pytest.mark.v2
def test_detect_on_a_v2_host_picks_the_unified_tree() -> None:
    found = detect_cgroup(CGROUP_ROOT, None)
    assert found.version is CgroupVersion.V2
    assert "io" in (found.path / "cgroup.controllers").read_text().split()
    assert detect_cgroup(CGROUP_ROOT, CgroupVersion.V2) == found
    if not Path(CGROUP_ROOT, "blkio").exists():
        with pytest.raises(CgroupError, match="cgroup v1 requested"):
            detect_cgroup(CGROUP_ROOT, CgroupVersion.V1)


def _mount_options(path: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return set(line.split(" - ", 1)[1].split()[2].split(","))
    return set()


# ---------------------------------------------------------------- resolving real cgroups


@pytest.mark.kernel
@pytest.mark.parametrize("qos", list(QoSClass))
def test_resolve_finds_directories_kubelet_made(kubelet_root, qos: QoSClass) -> None:
    hierarchy = kubelet_root.hierarchy
    for n, runtime in enumerate(Runtime):
        # containerd and docker name cgroupfs leaves alike: give each its own ID.
        r = ref(runtime, qos, pod_uid=UID, container_id=f"{n:x}" + CID[1:])
        for driver in (CgroupDriver.CGROUPFS, CgroupDriver.SYSTEMD):
            assert resolve_container_cgroup(hierarchy, r, driver, kubelet_root.prefix) is None
        assert resolve_container_cgroup(hierarchy, r, None, kubelet_root.prefix) is None

        made = kubelet_root.create(r, CgroupDriver.CGROUPFS)
        assert made.is_dir()
        found = resolve_container_cgroup(hierarchy, r, CgroupDriver.CGROUPFS, kubelet_root.prefix)
        assert found is not None and found == made
        assert (
            resolve_container_cgroup(hierarchy, r, CgroupDriver.SYSTEMD, kubelet_root.prefix)
            is None
        )
        assert resolve_container_cgroup(hierarchy, r, None, kubelet_root.prefix) == made

        systemd = kubelet_root.create(r, CgroupDriver.SYSTEMD)
        assert systemd.name.endswith(".scope")
        # Both exist (never on a real node): auto tries systemd first.
        assert resolve_container_cgroup(hierarchy, r, None, kubelet_root.prefix) == systemd
        assert (
            resolve_container_cgroup(hierarchy, r, CgroupDriver.SYSTEMD, kubelet_root.prefix)
            == systemd
        )
        # A real cgroup: the kernel populated it with its control files.
        assert (found / "cgroup.procs").exists()


@pytest.mark.kernel
def test_resolve_is_none_while_only_the_pod_cgroup_exists(kubelet_root) -> None:
    r = ref()
    rel = container_cgroup_path(r, CgroupDriver.CGROUPFS, kubelet_root.prefix)
    assert kubelet_root.make_dirs(rel.parent).is_dir()
    hierarchy = kubelet_root.hierarchy
    assert (
        resolve_container_cgroup(hierarchy, r, CgroupDriver.CGROUPFS, kubelet_root.prefix) is None
    )


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 128),
    ]


def _kernfs_handle_id(path: Path) -> int:
    """The cgroup id as the kernel exports it in a file handle (what BPF helpers return)."""
    libc = ctypes.CDLL(None, use_errno=True)
    handle = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    at_fdcwd = -100
    rc = libc.name_to_handle_at(
        at_fdcwd, os.fsencode(path), ctypes.byref(handle), ctypes.byref(mount_id), 0
    )
    if rc != 0:
        err = ctypes.get_errno()
        pytest.skip(f"name_to_handle_at on cgroupfs failed: {os.strerror(err)}")
    return int(struct.unpack("<Q", bytes(handle.f_handle[:8]))[0])


@pytest.mark.kernel
def test_cgroup_id_is_what_the_kernel_exports(kubelet_root) -> None:
    made = kubelet_root.create(ref(), CgroupDriver.SYSTEMD)
    ids = {cgroup_id(made), cgroup_id(made.parent)}
    assert len(ids) == 2
    assert cgroup_id(made) == _kernfs_handle_id(made)
    assert cgroup_id(str(made.parent)) == _kernfs_handle_id(made.parent)
