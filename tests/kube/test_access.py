"""AccessGate: a feature waits for its RBAC grant, says why meanwhile, and asks again."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import pytest
import trio

from diskguard.kube.access import SMART_LIMIT_ACCESS, Access, AccessGate, AccessState


async def test_denied_then_unknown_then_granted(caplog: pytest.LogCaptureFixture) -> None:
    answers: list[list[Access] | Exception] = [
        [Access("patch", "pods")],
        [Access("patch", "pods")],  # unchanged: no second log line
        ConnectionRefusedError("connection refused"),
        [],
    ]
    asked: list[tuple[Access, ...]] = []
    times: list[float] = []

    def ask(wanted: Sequence[Access]) -> list[Access]:
        asked.append(tuple(wanted))
        times.append(trio.from_thread.run_sync(trio.current_time))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    gate = AccessGate("smart limit", SMART_LIMIT_ACCESS, ask, interval=0.5)

    async def checked(count: int) -> None:  # the answer comes from a worker thread
        with trio.fail_after(30):
            while gate.checks < count:
                await trio.sleep(0.01)

    assert gate.state is AccessState.CHECKING and gate.problem() == ""
    caplog.set_level(logging.INFO, "diskguard.kube.access")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run)
        await checked(1)
        # mypy keeps the narrowing to CHECKING across the await; the gate's task changed it.
        assert gate.state is AccessState.DENIED  # type: ignore[comparison-overlap]
        assert "may not patch pods" in gate.problem()
        assert "every 0.5s" in gate.problem()
        assert gate.as_json()["denied"] == ["patch pods"]
        await checked(2)
        assert gate.state is AccessState.DENIED
        await checked(3)
        assert gate.state is AccessState.UNKNOWN
        assert "could not be checked (ConnectionRefusedError" in gate.problem()
        assert not gate.granted.is_set()
        with trio.fail_after(30):
            await gate.granted.wait()
        assert gate.state is AccessState.GRANTED
        assert gate.problem() == ""
    assert gate.checks == 4 and not answers  # run() returned once granted
    assert asked == [SMART_LIMIT_ACCESS] * 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.5 for gap in gaps), gaps  # asked again only after the interval
    # (event, reason field) of each line: the problem is said once, the grant once.
    said = [(r.getMessage(), getattr(r, "reason", "")) for r in caplog.records]
    assert sum("may not patch pods" in reason for _, reason in said) == 1, said
    assert sum("granted" in event for event, _ in said) == 1, said
