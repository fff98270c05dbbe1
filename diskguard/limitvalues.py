"""Parsing of IO limit values as users write them (annotations and env vars).

IOPS are plain non-negative integers; bytes/s are non-negative integers or Kubernetes
quantities (`10Mi`, `500k`, `1G`). Both are bounded by what the kernel accepts.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from kubernetes.utils import parse_quantity

from diskguard.model import MAX_BPS, MAX_IOPS

_DIGITS = re.compile(r"[0-9]+")
_QUANTITY_CHARS = re.compile(r"[-+0-9.eEkKMGTPinum]+")


class LimitValueError(ValueError):
    """A limit value that cannot be used; the message says why, for users."""


def parse_iops(text: str) -> int:
    value = text.strip()
    if not _DIGITS.fullmatch(value):
        raise LimitValueError(f"{text!r} is not a non-negative whole number of IO operations/s")
    number = int(value)
    if number > MAX_IOPS:
        raise LimitValueError(f"{text!r} exceeds the kernel's maximum IOPS limit {MAX_IOPS}")
    return number


def parse_bps(text: str) -> int:
    value = text.strip()
    if _DIGITS.fullmatch(value):
        number = Decimal(int(value))
    elif not _QUANTITY_CHARS.fullmatch(value):
        # parse_quantity tolerates inner spaces; the API server's Quantity does not.
        raise LimitValueError(
            f"{text!r} is neither a whole number of bytes/s nor a Kubernetes quantity "
            "such as 10Mi, 500k or 1G"
        )
    else:
        try:
            number = parse_quantity(value)
        except (ValueError, InvalidOperation, TypeError):
            raise LimitValueError(
                f"{text!r} is neither a whole number of bytes/s nor a Kubernetes quantity "
                "such as 10Mi, 500k or 1G"
            ) from None
    if not number.is_finite() or number < 0:
        raise LimitValueError(f"{text!r} is negative; use 0 to remove the limit")
    if number != number.to_integral_value():
        raise LimitValueError(f"{text!r} is not a whole number of bytes/s")
    if number > MAX_BPS:
        raise LimitValueError(f"{text!r} exceeds the kernel's maximum bytes/s limit {MAX_BPS}")
    return int(number)
