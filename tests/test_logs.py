"""One logging style: an event plus key/value fields, rendered as text or JSON lines
(`diskguard/logs.py`); the agent-level check is in tests/agent/test_agent.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from diskguard.logs import LogFormat, configure_logging, get_logger


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers (pytest's among them)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_json_line_of_a_pod_event_carries_namespace_pod_and_container(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", LogFormat.JSON)
    get_logger("diskguard.agent.reconciler").info(
        "limits set", namespace="shop", pod="web-0", container="app", changes="riops 0 -> 100"
    )
    [line] = _json_lines(capsys.readouterr().err)
    assert line["event"] == "limits set"
    assert (line["namespace"], line["pod"], line["container"]) == ("shop", "web-0", "app")
    assert line["changes"] == "riops 0 -> 100"
    assert line["level"] == "info" and line["logger"] == "diskguard.agent.reconciler"
    assert line["timestamp"].endswith("Z")


def test_text_lines_stay_readable_with_the_fields_as_key_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", LogFormat.TEXT)
    get_logger("diskguard.x").warning("ignoring pod update", namespace="shop", pod="web-0")
    err = capsys.readouterr().err
    assert "[warning  ] ignoring pod update" in err
    assert "[diskguard.x] namespace=shop pod=web-0" in err


def test_lines_of_other_libraries_are_rendered_alike(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", LogFormat.JSON)
    logging.getLogger("hypercorn.error").error("bind failed on %s", "[::]:8080")
    [line] = _json_lines(capsys.readouterr().err)
    assert line["event"] == "bind failed on [::]:8080" and line["logger"] == "hypercorn.error"


def test_an_exception_is_one_json_line_with_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", LogFormat.JSON)
    try:
        raise RuntimeError("a bug in planning")
    except RuntimeError:
        get_logger("diskguard.x").exception("planning failed", namespace="shop", pod="web-0")
    [line] = _json_lines(capsys.readouterr().err)
    assert line["level"] == "error" and line["pod"] == "web-0"
    assert "RuntimeError: a bug in planning" in line["exception"]


def test_a_field_named_like_a_log_record_attribute_is_kept_under_another_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", LogFormat.JSON)
    get_logger("diskguard.x").info("event", name="web-0", module="m", pod="web-0")
    [line] = _json_lines(capsys.readouterr().err)
    assert (line["name_"], line["module_"], line["pod"]) == ("web-0", "m", "web-0")


def test_the_level_filters_before_rendering(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", LogFormat.JSON)
    log = get_logger("diskguard.x")
    log.info("not shown", pod="a")
    log.warning("shown", pod="b")
    assert [line["event"] for line in _json_lines(capsys.readouterr().err)] == ["shown"]


def test_without_configuration_records_reach_stdlib_handlers_and_never_stdout(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, "diskguard.x")
    get_logger("diskguard.x").info("limits set", namespace="shop", pod="web-0", container="app")
    [record] = caplog.records
    assert record.getMessage() == "limits set"
    assert (record.namespace, record.pod, record.container) == ("shop", "web-0", "app")  # type: ignore[attr-defined]
    assert capsys.readouterr().out == ""
