"""`diskguard profile`'s pure parts: the fio jobs and their arguments, fio's JSON answer,
the busy and free-space checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diskguard.model import Counters, LimitField
from diskguard.node.diskstats import DiskStatError, parse_block_stat
from diskguard.node.profiling import (
    BUSY_IOPS,
    JOBS,
    ProfileError,
    Space,
    busy,
    check_space,
    fio_args,
    parse_fio,
)

MiB = 2**20


def _fio_json(read_iops: float, read_bw: int, write_iops: float, write_bw: int, jobs: int) -> bytes:
    one = {
        "jobname": "x",
        "read": {"iops": read_iops, "bw_bytes": read_bw},
        "write": {"iops": write_iops, "bw_bytes": write_bw},
    }
    return json.dumps({"fio version": "fio-3.33", "jobs": [one] * jobs}).encode()


def test_one_job_per_limit_field_in_the_shapes_blk_throttle_counts() -> None:
    assert [j.field for j in JOBS] == list(LimitField)
    shapes = {j.field: (j.rw, j.block_size) for j in JOBS}
    assert shapes == {
        LimitField.RIOPS: ("randread", "4k"),
        LimitField.WIOPS: ("randwrite", "4k"),
        LimitField.RBPS: ("read", "1M"),
        LimitField.WBPS: ("write", "1M"),
    }
    args = fio_args(JOBS[1], Path("/data/.t"), size=MiB, seconds=2.4, numjobs=3)
    # O_DIRECT on the test file (never the device), time based, one report for the group.
    for want in ("--direct=1", "--filename=/data/.t", "--time_based", "--runtime=2s"):
        assert want in args
    assert "--numjobs=3" in args and "--group_reporting" in args and "--rw=randwrite" in args


def test_fio_output_gives_the_measured_direction_and_unit_summed_over_jobs() -> None:
    out = b"fio: note: a warning first\n" + _fio_json(1000.5, 4 * MiB, 7.0, 9, jobs=2)
    assert parse_fio(out, JOBS[0]) == 2001.0  # read IOPS, both jobs
    assert parse_fio(out, JOBS[2]) == 8 * MiB  # read bytes/s
    assert parse_fio(out, JOBS[3]) == 18


@pytest.mark.parametrize(
    ("out", "said"),
    [
        (b"not json", "not what was expected"),
        (b'{"jobs": [{"read": {}}]}', "not what was expected"),
        (_fio_json(0, 0, 0, 0, jobs=1), "measured nothing"),
    ],
)
def test_fio_output_it_cannot_use_is_an_error(out: bytes, said: str) -> None:
    with pytest.raises(ProfileError, match=said):
        parse_fio(out, JOBS[0])


def test_block_stat_counts_ios_and_sectors_of_each_direction() -> None:
    line = "  100 5 8000 20  50 3 1000 10 0 30 30 0 0 0 0 0 0\n"
    assert parse_block_stat(line) == Counters(100, 50, 8000 * 512, 1000 * 512)
    for bad in ("1 2 3", "a b c d e f g"):
        with pytest.raises(DiskStatError):
            parse_block_stat(bad)


def test_a_disk_is_busy_above_either_threshold() -> None:
    quiet = Counters()
    assert busy(quiet, Counters(rios=int(BUSY_IOPS) // 2, wios=int(BUSY_IOPS) // 2), 1.0) == ""
    assert "IOPS" in busy(quiet, Counters(wios=int(BUSY_IOPS) * 3), 2.0)
    assert "MiB/s" in busy(quiet, Counters(rios=1, rbytes=100 * MiB), 1.0)


def test_the_test_file_must_leave_room_on_the_filesystem() -> None:
    # A 1 TiB disk keeps 5 % free; a small one at least 16 MiB.
    assert check_space(Space(free=60 * 2**30, total=2**40), 2**30) == ""
    assert "must stay free" in check_space(Space(free=52 * 2**30, total=2**40), 2**30)
    assert check_space(Space(free=100 * MiB, total=200 * MiB), 64 * MiB) == ""
    assert check_space(Space(free=70 * MiB, total=200 * MiB), 64 * MiB) != ""


def test_a_colon_in_the_data_path_is_escaped_for_fio() -> None:
    args = fio_args(JOBS[0], Path("/mnt/disk:1/.t"), size=MiB, seconds=1, numjobs=1)
    assert "--filename=/mnt/disk\\:1/.t" in args
    # Sequential jobs are one stream whatever --jobs says.
    assert "--numjobs=1" in fio_args(JOBS[2], Path("/d/.t"), size=MiB, seconds=1, numjobs=4)
