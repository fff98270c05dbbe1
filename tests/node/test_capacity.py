"""The capacity record: stable disk identities from sysfs (a fake tree), the file's format,
atomic replacement, refusal of what it does not understand."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskguard.model import Device
from diskguard.node.capacity import (
    DiskCapacity,
    capacity_path,
    decode_capacity,
    disk_identity,
    read_capacity,
    record_capacity,
)
from diskguard.node.state import StateDir, StateError

NVME = DiskCapacity(200_000, 150_000, 3 * 10**9, 2 * 10**9, "2026-12-02T09:00:00+00:00", "nvme0n1")


def _disk(root: Path, name: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def test_identity_prefers_the_wwid_then_model_and_serial_then_a_loop_file(tmp_path: Path) -> None:
    _disk(tmp_path, "nvme0n1", {"wwid": "eui.0025388a01b2c3d4", "device/serial": "S5GX"})
    _disk(tmp_path, "sda", {"device/wwid": "naa.5000c500a1b2c3d4"})
    _disk(tmp_path, "vdb", {"device/serial": "disk-7", "device/model": "QEMU"})
    _disk(tmp_path, "loop3", {"loop/backing_file": "/var/lib/disk.img"})
    _disk(tmp_path, "ram0", {})
    _disk(tmp_path, "dm-0", {"dm/uuid": "LVM-abc123"})
    _disk(tmp_path, "md0", {"md/uuid": "6d6b2a5c:11223344"})
    _disk(tmp_path, "vdc", {"serial": "virtio-9"})
    ids = {
        name: disk_identity(Device(1, 1, name), tmp_path)
        for name in ("nvme0n1", "sda", "vdb", "loop3", "ram0", "dm-0", "md0", "vdc", "../etc", "")
    }
    assert ids == {
        "nvme0n1": "wwid:eui.0025388a01b2c3d4",
        "sda": "wwid:naa.5000c500a1b2c3d4",
        "vdb": "serial:QEMU:disk-7",
        "loop3": "loop:/var/lib/disk.img",
        "ram0": None,
        "dm-0": "dm:LVM-abc123",
        "md0": "md:6d6b2a5c:11223344",
        "vdc": "serial:virtio-9",
        "../etc": None,
        "": None,
    }


def test_a_measurement_is_recorded_beside_the_others_and_read_back(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert read_capacity(state) == {}
    record_capacity(state, "wwid:a", NVME)
    slow = DiskCapacity(500, 400, 100 * 2**20, 90 * 2**20)
    record_capacity(state, "wwid:b", slow)
    assert read_capacity(state) == {"wwid:a": NVME, "wwid:b": slow}
    record_capacity(state, "wwid:b", NVME)  # measured again: replaced
    assert read_capacity(state)["wwid:b"] == NVME
    assert not list(state.path.glob(".*.tmp"))  # written atomically, nothing left over


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("nope", "not JSON"),
        ('{"kind": "other"}', "not a diskguard capacity record"),
        ('{"kind": "diskguard.capacity", "schema": 9, "disks": {}}', "schema 9"),
        ('{"kind": "diskguard.capacity", "schema": 1, "disks": []}', "not an object"),
        (
            '{"kind": "diskguard.capacity", "schema": 1, "disks": {"x": {"read_iops": 1}}}',
            "malformed entry",
        ),
        (
            '{"kind": "diskguard.capacity", "schema": 1, "disks": {"x": {"read_iops": true,'
            ' "write_iops": 1, "read_bps": 1, "write_bps": 1}}}',
            "malformed entry",
        ),
    ],
)
def test_what_it_does_not_understand_is_refused(text: str, said: str) -> None:
    with pytest.raises(StateError, match=said):
        decode_capacity(text.encode(), "capacity.json")


def test_an_oversized_record_is_refused_unread(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    capacity_path(state).write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(StateError, match="larger than"):
        read_capacity(state)


def test_measuring_again_replaces_an_unreadable_record_and_keeps_it_aside(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path)
    capacity_path(state).write_text('{"kind": "diskguard.capacity", "schema": 2, "disks": {}}')
    record_capacity(state, "wwid:a", NVME)
    assert read_capacity(state) == {"wwid:a": NVME}
    assert "schema" in (tmp_path / "capacity.unreadable").read_text()


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(StateError, match="not JSON"):
        decode_capacity(b"[" * 200_000, "capacity.json")
