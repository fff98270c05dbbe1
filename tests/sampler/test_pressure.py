"""PSI (io.pressure) parsing: the kernel's format, and what is not it."""

from __future__ import annotations

from pathlib import Path

from diskguard.sampler.pressure import Pressure, parse_io_pressure, read_io_pressure

TEXT = (
    "some avg10=0.03 avg60=0.91 avg300=1.67 total=30397555\n"
    "full avg10=0.00 avg60=0.05 avg300=0.80 total=19847092\n"
)


def test_the_totals_are_seconds() -> None:
    assert parse_io_pressure(TEXT) == Pressure(30.397555, 19.847092)
    assert parse_io_pressure(TEXT.splitlines()[0]) == Pressure(30.397555, 0.0)


def test_what_is_not_psi_is_none(tmp_path: Path) -> None:
    assert parse_io_pressure("") is None
    assert parse_io_pressure("some total=x\n") is None
    assert read_io_pressure(tmp_path) is None  # no io.pressure: v1, PSI off, gone
    (tmp_path / "io.pressure").write_text(TEXT)
    assert read_io_pressure(tmp_path) == Pressure(30.397555, 19.847092)
