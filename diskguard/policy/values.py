"""Parsing of IO limit values as users write them (annotations and env vars).

IOPS are plain non-negative integers; bytes/s are non-negative integers or Kubernetes
quantities (`10Mi`, `500k`, `1G`). Both are bounded by what the kernel accepts. The limit
keys and settings also take a percentage of each disk's capacity (`25%`, a `Share`),
turned into a number per disk where the capacity is known (policy/shares.py).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import attrs
from kubernetes.utils import parse_quantity

from diskguard.model import MAX_BPS, MAX_IOPS, LimitField

_DIGITS = re.compile(r"[0-9]+")
_QUANTITY_CHARS = re.compile(r"[-+0-9.eEkKMGTPinum]+")


# No valid limit needs more characters than this (MAX_BPS has 19 digits; a quantity such as
# "9223372036854775807000m" 23). Anything longer is refused before it is parsed: Python's
# int() raises a plain ValueError past 4,300 digits, and a tenant's 256 KiB value must not
# cost parse time or be echoed into logs and Events.
MAX_VALUE_LENGTH = 64
# How much of a refused value messages show.
SHOWN_LENGTH = 40


class Unlimited(enum.StrEnum):
    """How a limit of 0 (unlimited) is shown, by audience."""

    WORDS = "unlimited"  # Events, logs, messages
    KERNEL = "max"  # the kernel's spelling (io.max), in the applier's change lists
    TABLE = "-"  # the columns of `diskguard top` / `diskguard status`


def render_limit(
    value: int | None, unlimited: Unlimited = Unlimited.WORDS, number: Callable[[int], str] = str
) -> str:
    """A limit for people: `number(value)`, or how `unlimited` spells 0 (or a missing
    value: JSON's null)."""
    return number(value) if value else str(unlimited)


def limit_json(value: int) -> int | None:
    """A limit for JSON: 0 (unlimited) becomes null, so a reader never mistakes it for
    "zero IO allowed"."""
    return value or None


class LimitValueError(ValueError):
    """A limit value that cannot be used; the message says why, for users."""


def shown(text: object) -> str:
    """`text` for a message: repr'd, and cut short (saying how long it was) when long."""
    if not isinstance(text, str):
        text = repr(text)
    if len(text) <= SHOWN_LENGTH:
        return repr(text)
    return f"{text[:SHOWN_LENGTH]!r}... ({len(text)} characters)"


def _bounded(text: object) -> str:
    if not isinstance(text, str):
        raise LimitValueError(f"{type(text).__name__} value is not a string")
    if len(text) > MAX_VALUE_LENGTH:
        raise LimitValueError(
            f"{shown(text)} is longer than any limit value ({MAX_VALUE_LENGTH} characters)"
        )
    return text


def parse_iops(text: str) -> int:
    value = _bounded(text).strip()
    if not _DIGITS.fullmatch(value):
        raise LimitValueError(
            f"{shown(text)} is not a non-negative whole number of IO operations/s"
        )
    number = int(value)
    if number > MAX_IOPS:
        raise LimitValueError(f"{shown(text)} exceeds the kernel's maximum IOPS limit {MAX_IOPS}")
    return number


def parse_bps(text: str) -> int:
    value = _bounded(text).strip()
    if _DIGITS.fullmatch(value):
        number = Decimal(int(value))
    elif not _QUANTITY_CHARS.fullmatch(value):
        # parse_quantity tolerates inner spaces; the API server's Quantity does not.
        raise LimitValueError(
            f"{shown(text)} is neither a whole number of bytes/s nor a Kubernetes quantity "
            "such as 10Mi, 500k or 1G"
        )
    else:
        try:
            number = parse_quantity(value)
        except (ValueError, InvalidOperation, TypeError):
            raise LimitValueError(
                f"{shown(text)} is neither a whole number of bytes/s nor a Kubernetes quantity "
                "such as 10Mi, 500k or 1G"
            ) from None
    if not number.is_finite() or number < 0:
        raise LimitValueError(f"{shown(text)} is negative; use 0 to remove the limit")
    if number != number.to_integral_value():
        raise LimitValueError(f"{shown(text)} is not a whole number of bytes/s")
    if number > MAX_BPS:
        raise LimitValueError(f"{shown(text)} exceeds the kernel's maximum bytes/s limit {MAX_BPS}")
    return int(number)


# A share of a disk's capacity: digits, up to two decimals, then `%` (`25%`, `12.5%`).
_SHARE = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?%")
_HUNDRED = Decimal(100)


@attrs.frozen
class Share:
    """A limit given as a percentage of a disk's capacity (0 < percent <= 100), turned into a
    number per disk: disks of different speeds each give the same share of what they can do."""

    percent: Decimal

    def of(self, capacity: int) -> int:
        """This share of `capacity`, rounded down, but never 0 (which would mean unlimited)."""
        # In whole hundredths of a percent: exact integer arithmetic for any capacity.
        return max(1, capacity * int(self.percent * 100) // 10_000)

    def __str__(self) -> str:
        return f"{self.percent.normalize():f}%"


# What a limit key or setting may say: an absolute number (0 = unlimited) or a share.
LimitValue = int | Share


def parse_share(text: str) -> Share:
    value = _bounded(text).strip()
    match = _SHARE.fullmatch(value)
    if match is None:
        raise LimitValueError(
            f"{shown(text)} is not a percentage such as 25% or 12.5% (at most two decimals)"
        )
    percent = Decimal(value[:-1])
    if percent == 0:
        # 0 means unlimited only as a number; "0 % of the disk" would mean no IO at all.
        raise LimitValueError(
            f"{shown(text)}: a percentage must be above 0% (write 0 to remove the limit)"
        )
    if percent > _HUNDRED:
        raise LimitValueError(f"{shown(text)}: a share of a disk's capacity is at most 100%")
    return Share(percent)


def _is_share(text: str) -> bool:
    return text.strip().endswith("%")


def parse_iops_value(text: str) -> LimitValue:
    """IO operations/s, or a percentage of each disk's IOPS capacity."""
    return parse_share(text) if _is_share(_bounded(text)) else parse_iops(text)


def parse_bps_value(text: str) -> LimitValue:
    """Bytes/s, or a percentage of each disk's bytes/s capacity."""
    return parse_share(text) if _is_share(_bounded(text)) else parse_bps(text)


@attrs.frozen
class LimitSettings:
    """An administrator's value per limit field (env defaults, env ceilings): a number
    (0 = unlimited, or no ceiling) or a share of each disk's capacity."""

    riops: LimitValue = 0
    wiops: LimitValue = 0
    rbps: LimitValue = 0
    wbps: LimitValue = 0

    def get(self, field: LimitField) -> LimitValue:
        value: LimitValue = getattr(self, field.value)
        return value

    def __str__(self) -> str:
        return " ".join(f"{f}={self.get(f)}" for f in LimitField)
