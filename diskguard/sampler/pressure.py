"""A container's IO pressure (PSI, cgroup v2 only): the cumulative time some or all of its
tasks were stalled waiting for IO, from the cgroup's `io.pressure`.

`some` counts time when at least one task waited, `full` when all runnable tasks did;
`total=` is in microseconds (Documentation/accounting/psi.rst). A throttled container's
synchronous IO waits on the limit in iowait, so its pressure rises while the device's
latency stays low; asynchronous IO (io_uring, libaio) is not counted while it waits.
"""

from __future__ import annotations

from pathlib import Path

import attrs

IO_PRESSURE = "io.pressure"
MAX_PRESSURE_TEXT = 4096


@attrs.frozen
class Pressure:
    some_seconds: float = 0.0
    full_seconds: float = 0.0


def parse_io_pressure(text: str) -> Pressure | None:
    """The two `total=` counters; None when the text is not a PSI file."""
    totals: dict[str, float] = {}
    for line in text[:MAX_PRESSURE_TEXT].splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            key, sep, value = field.partition("=")
            if sep and key == "total" and value.isdigit():
                totals[kind] = int(value) / 1e6
    if "some" not in totals:
        return None
    return Pressure(totals["some"], totals.get("full", 0.0))


def read_io_pressure(cgroup: Path) -> Pressure | None:
    """None when the cgroup has no io.pressure (cgroup v1, PSI off, the cgroup gone)."""
    try:
        with (cgroup / IO_PRESSURE).open() as f:
            return parse_io_pressure(f.read(MAX_PRESSURE_TEXT))
    except OSError:
        return None
