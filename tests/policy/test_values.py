from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskguard.model import MAX_BPS, MAX_IOPS
from diskguard.policy.values import (
    LimitSettings,
    LimitValueError,
    Share,
    parse_bps,
    parse_bps_value,
    parse_iops,
    parse_iops_value,
    parse_share,
)


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


# -- percentages of a disk's capacity ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "percent", "shown"),
    [
        ("25%", "25", "25%"),
        (" 12.5% ", "12.5", "12.5%"),
        ("12.50%", "12.5", "12.5%"),
        ("100%", "100", "100%"),
        ("0.01%", "0.01", "0.01%"),
        ("007%", "7", "7%"),
        ("100.00%", "100", "100%"),
    ],
)
def test_share_accepts_percentages(text: str, percent: str, shown: str) -> None:
    share = parse_share(text)
    assert share == Share(Decimal(percent))
    assert str(share) == shown
    assert parse_iops_value(text) == share
    assert parse_bps_value(text) == share


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0%", "must be above 0%"),
        ("0.00%", "must be above 0%"),
        ("100.01%", "at most 100%"),
        ("101%", "at most 100%"),
        ("12.345%", "at most two decimals"),
        ("25 %", "not a percentage such as 25%"),
        ("%", "not a percentage"),
        ("-5%", "not a percentage"),
        (".5%", "not a percentage"),
        ("1e2%", "not a percentage"),
        ("25%%", "not a percentage"),
        ("٢٥%", "not a percentage"),  # non-ASCII digits
        ("1" * 70 + "%", "longer than any limit value"),
    ],
)
def test_share_rejects_with_reason(text: str, why: str) -> None:
    with pytest.raises(LimitValueError, match=why):
        parse_iops_value(text)
    with pytest.raises(LimitValueError, match=why):
        parse_bps_value(text)


def test_either_form_parses_numbers_as_before() -> None:
    assert parse_iops_value(" 300 ") == 300
    assert parse_bps_value("10Mi") == 10 * 2**20
    with pytest.raises(LimitValueError, match="not a non-negative whole number"):
        parse_iops_value("1.5")


def test_absolute_parsers_refuse_percentages() -> None:
    # The smart limit's own keys and SMART_LIMIT_* settings stay absolute.
    with pytest.raises(LimitValueError):
        parse_iops("25%")
    with pytest.raises(LimitValueError):
        parse_bps("25%")


@pytest.mark.parametrize(
    ("percent", "capacity", "value"),
    [
        ("25", 2000, 500),
        ("12.5", 1001, 125),  # rounded down
        ("33.33", 300, 99),
        ("100", 7, 7),
        ("0.01", 50, 1),  # never 0, which would mean unlimited
        ("50", 2**63, 2**62),
    ],
)
def test_share_of_a_capacity(percent: str, capacity: int, value: int) -> None:
    assert Share(Decimal(percent)).of(capacity) == value


@given(st.integers(1, 10_000), st.integers(0, 2**70))
def test_a_share_is_at_least_1_and_at_most_the_capacity(hundredths: int, capacity: int) -> None:
    share = Share(Decimal(hundredths) / 100)
    value = share.of(capacity)
    assert 1 <= value <= max(1, capacity)
    assert value <= share.of(capacity + 1)  # never less for a faster disk


@given(st.text(max_size=40).map(lambda t: t + "%"))
def test_either_form_never_raises_anything_else(text: str) -> None:
    for parse in (parse_iops_value, parse_bps_value):
        try:
            value = parse(text)
        except LimitValueError:
            continue
        assert isinstance(value, Share) and 0 < value.percent <= 100


def test_limit_settings_show_shares_as_written() -> None:
    settings = LimitSettings(500, Share(Decimal(25)))
    assert str(settings) == "riops=500 wiops=25% rbps=0 wbps=0"
