import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import MAX_BPS, MAX_IOPS
from diskguard.policy.values import LimitValueError, parse_bps, parse_iops


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("100", 100), (" 250 ", 250), (str(MAX_IOPS), MAX_IOPS), ("007", 7)],
)
def test_iops_accepts_whole_numbers(text: str, value: int) -> None:
    assert parse_iops(text) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("abc", "not a non-negative whole number"),
        ("-5", "not a non-negative whole number"),
        ("1.5", "not a non-negative whole number"),
        ("1k", "not a non-negative whole number"),
        ("", "not a non-negative whole number"),
        ("+5", "not a non-negative whole number"),
        ("١٢", "not a non-negative whole number"),  # non-ASCII digits
        (str(MAX_IOPS + 1), "exceeds the kernel's maximum"),
    ],
)
def test_iops_rejects_with_reason(text: str, why: str) -> None:
    with pytest.raises(LimitValueError, match=why):
        parse_iops(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("10Mi", 10 * 2**20),
        ("500k", 500_000),
        ("1G", 10**9),
        ("1.5Ki", 1536),
        ("1e3", 1000),
        (" 2Gi ", 2 * 2**30),
    ],
)
def test_bps_accepts_numbers_and_quantities(text: str, value: int) -> None:
    assert parse_bps(text) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("abc", "neither a whole number"),
        ("-5", "negative"),
        ("-1Mi", "negative"),
        ("0.5", "not a whole number of bytes"),
        ("100m", "not a whole number of bytes"),  # milli-bytes
        ("9Ei", "exceeds the kernel's maximum"),
        ("1e999999", "exceeds the kernel's maximum"),
        ("10 Mi", "neither a whole number"),
    ],
)
def test_bps_rejects_with_reason(text: str, why: str) -> None:
    with pytest.raises(LimitValueError, match=why):
        parse_bps(text)


@given(st.text(max_size=40))
def test_parsers_never_raise_anything_else(text: str) -> None:
    for parse, limit in ((parse_iops, MAX_IOPS), (parse_bps, MAX_BPS)):
        try:
            value = parse(text)
        except LimitValueError:
            continue
        assert 0 <= value <= limit
