"""Parsing of IO limit values as users write them (annotations and env vars).

IOPS are plain non-negative integers; bytes/s are non-negative integers or Kubernetes
quantities (`10Mi`, `500k`, `1G`). Both are bounded by what the kernel accepts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from kubernetes.utils import parse_quantity

from diskguard.model import MAX_BPS, MAX_IOPS

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
