"""Logging setup: one line per event on stderr, UTC timestamps, no colours.

`human` (default): `2026-01-02T02:30:00Z INFO  compressor.job: message`.
`json`: one JSON object per line (ts, level, logger, msg) for log shippers, plus the
figures a record carries (`FIELDS`: run_id, partition, event, rows, files, ...).
Records marked `structured_only` (the per-partition `planned` events) go to JSON only:
the human log stays as it always was.

A live progress line (`compressor.observe.Progress`) may share the terminal: the
console handler hides it around every record (`attach_live_line`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, TextIO

FORMATS = ("human", "json")
#: Extra record attributes the JSON format emits as keys, in this order (None: left out).
FIELDS = ("run_id", "partition", "event", "rows", "files", "bytes_in", "bytes_out",
          "seconds", "reason", "error")
#: A record attribute: True = a JSON line only, never shown in the human format.
STRUCTURED_ONLY = "structured_only"

#: The run whose lines are being written: added to JSON lines that do not name one.
_run_id: str | None = None


def set_run_id(run_id: str | None) -> None:
    """Name the running run in every JSON line from now on (None: stop)."""
    global _run_id
    _run_id = run_id


class LiveLine(Protocol):
    """A line redrawn in place on the terminal (compressor.observe.Progress)."""

    def hidden(self) -> AbstractContextManager[None]:
        """Blank the line, let the caller write whole lines, then draw it again."""
        ...


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z"


class HumanFormatter(_UtcFormatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s")


class JsonFormatter(_UtcFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if key == "run_id" and value is None:
                value = _run_id
            if value is not None:
                entry[key] = round(value, 3) if isinstance(value, float) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _not_structured_only(record: logging.LogRecord) -> bool:
    return not getattr(record, STRUCTURED_ONLY, False)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that steps around a live line drawn on the same stream."""

    live: LiveLine | None = None

    def emit(self, record: logging.LogRecord) -> None:
        live = self.live
        with live.hidden() if live is not None else nullcontext():
            super().emit(record)


def _console_handlers(stream: TextIO) -> Iterator[ConsoleHandler]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ConsoleHandler) and handler.stream is stream:
            yield handler


def attach_live_line(stream: TextIO, live: LiveLine) -> None:
    """Records written to `stream` from now on hide `live` while they are written."""
    for handler in _console_handlers(stream):
        handler.live = live


def detach_live_line(stream: TextIO, live: LiveLine) -> None:
    for handler in _console_handlers(stream):
        if handler.live is live:
            handler.live = None


def setup_logging(
    fmt: str = "human", *, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Route every `compressor.*` log line to `stream` (stderr) in the chosen format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (choose from {', '.join(FORMATS)})")
    handler = ConsoleHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    if fmt != "json":
        handler.addFilter(_not_structured_only)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("compressor").setLevel(level)
