"""Does this ServiceAccount hold a permission? Asked with SelfSubjectAccessReviews.

The base ClusterRole (deploy/) only reads; smart limit's pod patches are granted by the
optional component deploy/components/smart-limit. With smart limit on and that grant
missing, the agent starts without smart limit, says why (log, /status, /readyz) and asks
again every `interval` seconds until it is granted: applying the component then needs no
restart.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from diskguard.kube.api import CoreApi
from diskguard.logs import get_logger

log = get_logger(__name__)

RECHECK_INTERVAL = 60.0


@attrs.frozen
class Access:
    """One RBAC permission, cluster-wide (namespace "" = every namespace)."""

    verb: str
    resource: str
    group: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.group}" if self.group else "")


# Always: the pod and namespace list+watch, and the Events the agent posts (deploy/).
BASE_ACCESS = (
    Access("list", "pods"),
    Access("watch", "pods"),
    Access("create", "events"),
    Access("list", "namespaces"),
    Access("watch", "namespaces"),
)
# Smart limit (not in dry run): its annotation patches, after a GET of the pod's current
# resourceVersion where the pod source is the kubelet (deploy/components/smart-limit).
SMART_LIMIT_ACCESS = (
    Access("get", "pods"),
    Access("patch", "pods"),
)


def denied_access(api_client: Any, wanted: Sequence[Access], timeout: float = 10.0) -> list[Access]:
    """The permissions of `wanted` this client's user does not hold (blocking; raises
    the client's exceptions when the API server cannot answer)."""
    api = CoreApi(api_client)
    return [
        access
        for access in wanted
        if not api.may(access.verb, access.resource, access.group, timeout=(5, timeout))
    ]


class AccessState(enum.Enum):
    CHECKING = "checking"  # not asked yet
    GRANTED = "granted"
    DENIED = "denied"
    UNKNOWN = "unknown"  # the API server did not answer the review


@attrs.define
class AccessGate:
    """Waits until the permissions a feature needs are granted, asking every `interval`."""

    feature: str
    wanted: tuple[Access, ...]
    ask: Callable[[Sequence[Access]], list[Access]]  # blocking, run in a thread
    interval: float = RECHECK_INTERVAL
    state: AccessState = AccessState.CHECKING
    denied: tuple[Access, ...] = ()
    error: str = ""
    checks: int = 0
    granted: trio.Event = attrs.Factory(trio.Event)

    def problem(self) -> str:
        """Why the feature is not running yet, or "" (granted, or not asked yet)."""
        if self.state is AccessState.DENIED:
            missing = ", ".join(map(str, self.denied))
            return (
                f"{self.feature} is enabled but this ServiceAccount may not {missing} "
                f"(install deploy/components/smart-limit); {self.feature} stays off and "
                f"access is asked again every {self.interval:g}s"
            )
        if self.state is AccessState.UNKNOWN:
            return (
                f"{self.feature} is enabled but its permissions could not be checked "
                f"({self.error}); asked again every {self.interval:g}s"
            )
        return ""

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "needs": [str(a) for a in self.wanted],
            "denied": [str(a) for a in self.denied],
            "problem": self.problem() or None,
            "checks": self.checks,
        }

    async def run(self) -> None:
        """Ask until granted, then return (the feature starts on `granted`)."""
        while True:
            await self.check()
            if self.state is AccessState.GRANTED:
                return
            await trio.sleep(self.interval)

    async def check(self) -> None:
        before = (self.state, self.denied, self.error)
        try:
            # Abandoned on cancel: shutdown must not wait for a hung API server.
            denied = await trio.to_thread.run_sync(self.ask, self.wanted, abandon_on_cancel=True)
        except Exception as exc:  # any failure to get an answer leaves the feature off
            self.state, self.denied = AccessState.UNKNOWN, ()
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        else:
            self.denied, self.error = tuple(denied), ""
            self.state = AccessState.DENIED if denied else AccessState.GRANTED
        self.checks += 1
        if (self.state, self.denied, self.error) == before:
            return  # said already: one log line per change, not one a minute
        if self.state is AccessState.GRANTED:
            log.info(
                "access granted; starting the feature",
                feature=self.feature,
                granted=", ".join(map(str, self.wanted)),
            )
            self.granted.set()
        else:
            log.error("access missing", feature=self.feature, reason=self.problem())
