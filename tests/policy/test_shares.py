"""What a percentage is of: each data disk's measured capacity, else the declared one; and
the message when some disk has neither (pure)."""

from decimal import Decimal

from diskguard.model import Device, IOLimits, LimitField
from diskguard.policy.shares import NO_DISKS, disk_capacities, share_text, unresolvable
from diskguard.policy.values import Share

FAST = Device(259, 0, "nvme0n1")
SLOW = Device(8, 16, "sdb")
UNNAMED = Device(7, 3)
QUARTER = Share(Decimal(25))
IOPS = (LimitField.RIOPS, LimitField.WIOPS)
WRITE_BPS = (LimitField.WBPS,)


def test_measured_beats_declared_per_disk() -> None:
    measured = {FAST: IOLimits(100_000, 80_000, 2 * 2**30, 2**30)}
    declared = IOLimits.per_unit(5000, 0)
    assert disk_capacities((FAST, SLOW), measured, declared) == {
        FAST: IOLimits(100_000, 80_000, 2 * 2**30, 2**30),
        SLOW: IOLimits(5000, 5000, 0, 0),  # not profiled: declared IOPS, bytes/s unknown
    }


def test_only_the_data_disks_given_count() -> None:
    measured = {FAST: IOLimits(1, 1, 1, 1), SLOW: IOLimits(2, 2, 2, 2)}
    assert list(disk_capacities((SLOW,), measured, IOLimits())) == [SLOW]


def test_a_share_resolvable_on_every_disk_has_no_reason() -> None:
    capacity = {FAST: IOLimits(4000, 2000), SLOW: IOLimits(300, 200)}
    assert unresolvable(QUARTER, IOPS, capacity) == ""


def test_the_reason_names_the_disks_the_unit_and_the_fix() -> None:
    capacity = {FAST: IOLimits(4000, 2000), SLOW: IOLimits(), UNNAMED: IOLimits()}
    why = unresolvable(QUARTER, IOPS, capacity)
    assert "sdb (8:16), 7:3" in why and "nvme0n1" not in why
    assert "IOPS capacity" in why
    assert "run `diskguard profile` on the node, or declare SMART_LIMIT_DEVICE_IOPS" in why
    bps = unresolvable(QUARTER, WRITE_BPS, {FAST: IOLimits(1, 1, 1, 0)})
    assert "bytes/s capacity of nvme0n1 (259:0)" in bps and "SMART_LIMIT_DEVICE_BPS" in bps


def test_without_any_data_disk_a_share_resolves_nowhere() -> None:
    assert "no data disk is known" in unresolvable(QUARTER, IOPS, NO_DISKS)


def test_share_text() -> None:
    assert share_text(QUARTER, 2000, FAST) == "25% of 2000 on 259:0"
    assert share_text(Share(Decimal("12.5")), 8, None) == "12.5% of 8"
