"""A whole disk's own IO counters (/sys/dev/block/MAJ:MIN/stat): every IO the disk
served, whoever issued it — what `profile` checks for other IO and what the agent's
observed capacity is measured from."""

from __future__ import annotations

from pathlib import Path

from diskguard.model import Counters, Device

SYS_DEV_BLOCK = Path("/sys/dev/block")
SECTOR = 512  # the stat file counts 512-byte sectors whatever the disk's block size


class DiskStatError(Exception):
    """The disk's counters cannot be read or parsed."""


def parse_block_stat(text: str) -> Counters:
    """Documented in the kernel's Documentation/block/stat.rst: field 1 reads completed,
    3 sectors read, 5 writes completed, 7 sectors written (merged IOs count once)."""
    fields = text.split()
    if len(fields) < 7 or not all(f.isdigit() for f in fields[:7]):
        raise DiskStatError(f"unexpected block stat line: {text[:200]!r}")
    reads, read_sectors, writes, write_sectors = (int(fields[i]) for i in (0, 2, 4, 6))
    return Counters(
        rios=reads, wios=writes, rbytes=read_sectors * SECTOR, wbytes=write_sectors * SECTOR
    )


def read_block_stat(device: Device, sys_dev_block: Path = SYS_DEV_BLOCK) -> Counters:
    path = sys_dev_block / f"{device.major}:{device.minor}" / "stat"
    try:
        text = path.read_text()
    except OSError as exc:
        raise DiskStatError(f"cannot read {path}: {exc.strerror}") from None
    return parse_block_stat(text)
