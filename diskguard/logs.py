"""Logging: one style for every module, rendered as text or JSON lines.

Every module logs through `get_logger(__name__)`: an event (a short, fixed phrase) plus
key/value fields, structlog-style::

    log.info("limits set", namespace=pod.namespace, pod=pod.name, container="app")

The fields travel on stdlib `logging` records (as `extra`), so the kubernetes client's,
hypercorn's and our own lines go through one handler and one renderer, and `caplog` sees
them (`record.getMessage()` is the event, `record.pod` a field). `configure_logging`
renders them: text (`event  [logger] key=value ...`) or JSON (`{"event": ..., "pod": ...}`),
so JSON logs can be filtered by `namespace`, `pod`, `container`, `reason`.

Field names used across modules: `namespace`, `pod`, `container` (a container's name),
`uid`, `reason` (why, in words), `error` (what failed), `cgroup`, `device`, `watch`.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Attributes of every logging.LogRecord: a field of that name would make logging raise
# ("Attempt to overwrite ... in LogRecord"), so it is renamed rather than lost.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# ... except the ones logging takes as arguments (`log.exception` sets exc_info).
_LOG_KWARGS = ("exc_info", "stack_info")


def _clear_of_record_attrs(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in [k for k in event_dict if k in _RECORD_ATTRS and k not in _LOG_KWARGS]:
        event_dict[f"{key}_"] = event_dict.pop(key)
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger taking an event and key/value fields, writing stdlib records.

    Independent of structlog's global configuration: before `configure_logging` (tests,
    library use) its records go wherever stdlib logging sends them, never to stdout.
    """
    return structlog.stdlib.BoundLogger(
        logging.getLogger(name),
        [
            structlog.stdlib.filter_by_level,
            _clear_of_record_attrs,
            structlog.stdlib.render_to_log_kwargs,
        ],
        {},
    )


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


def configure_logging(level: str = "info", fmt: LogFormat = LogFormat.TEXT) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.JSON
        # Plain tracebacks whatever is installed (rich would print local variables).
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # JSON needs the traceback as a string field; the console renderer prints it.
            *([structlog.processors.format_exc_info] if fmt is LogFormat.JSON else []),
            renderer,
        ],
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            # The fields passed as `extra` (get_logger's) become keys of the line.
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
    )
    # One handler, to stderr: stdout belongs to command output (`top --json`).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client and urllib3 are chatty at INFO about retries we handle ourselves.
    for noisy in ("urllib3", "kubernetes", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
