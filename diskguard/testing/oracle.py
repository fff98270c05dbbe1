"""What limits a pod's annotations should give, written out independently of
diskguard.policy: the README's priority table, for tests and benchmarks to check the agent
(and the kernel) against. A second implementation on purpose: it must not share code with
the one it checks.

Valid values only: whole numbers, or a whole number of `Mi` for the byte rates.
"""

from __future__ import annotations

from collections.abc import Mapping

from diskguard.model import IOLimits

PREFIX = "iops-limit"
# The agent's env defaults (CONTAINER_IOPS_LIMIT=500, no bytes/s limit).
DEFAULT = IOLimits(riops=500, wiops=500)


def _value(raw: str) -> int:
    return int(raw[:-2]) * 2**20 if raw.endswith("Mi") else int(raw)


def expected_limits(
    annotations: Mapping[str, str], default: IOLimits = DEFAULT, prefix: str = PREFIX
) -> IOLimits:
    """Direction key (`read-iops`) > combined key (`iops`) > env default, per field."""

    def pick(direction: str, combined: str, fallback: int) -> int:
        for key in (f"{prefix}/{direction}", f"{prefix}/{combined}"):
            if key in annotations:
                return _value(annotations[key])
        return fallback

    return IOLimits(
        riops=pick("read-iops", "iops", default.riops),
        wiops=pick("write-iops", "iops", default.wiops),
        rbps=pick("read-bps", "bps", default.rbps),
        wbps=pick("write-bps", "bps", default.wbps),
    )
