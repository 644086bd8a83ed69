"""What a run shows while it runs and leaves behind (docs/operations.md "Observability").

- `Progress`: one live line on a terminal (partitions done/total, rows per second,
  bytes fetched, ETA), only when stderr is a terminal. Log records step around it
  (`compressor.logs.ConsoleHandler`), so a record never lands inside the line.
- `render_metrics`: a Prometheus text file for node_exporter's textfile collector.
- `render_summary`: the run's figures as one JSON document, shaped like delta-rs's
  optimize metrics.

`RunObserver` ties them to one run: the runner builds it from the RunConfig, the job
tells it about fetches and finished partitions, and `finish` writes both files
(atomically: a temp file in the same directory, then os.replace) at the end of every
run that is not a dry run, whatever ended it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from compressor.job import PartitionOutcome, RunReport, Status
from compressor.labels import LABELS, Label
from compressor.layout import PartitionId, parse_day
from compressor.logs import attach_live_line, detach_live_line, set_run_id
from compressor.planning import Action, Plan
from compressor.text import human_size, one_line, utc_iso

log = logging.getLogger(__name__)

PREFIX = "quantlab_compact_"
#: The steps of a partition whose seconds are summed (docs/operations.md "Observability").
STEPS = ("list", "fetch", "merge", "verify", "upload")
#: A partition's status as a metric label value and a summary key.
STATUS_KEYS: dict[Status, str] = {status: status.name.lower() for status in Status}
SUMMARY_VERSION = 1


class ObserveError(ValueError):
    """--metrics-file or --summary-json names a place no file can be written (exit 2)."""


def check_output(flag: str, path: Path) -> None:
    """Fail before the run, not after it, when `path` cannot be written."""
    parent = path.parent
    if path.is_dir():
        raise ObserveError(f"{flag} {path}: is a directory")
    if not parent.is_dir():
        raise ObserveError(f"{flag} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ObserveError(f"{flag} {path}: cannot write in {parent}")


def write_atomically(path: Path, text: str) -> None:
    """Readers (node_exporter, a shipper) see the old file or the new one, never a part.

    The temp file is a dot file ending in .tmp: the textfile collector reads *.prom only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # node_exporter usually runs as another user
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def day_end_timestamp(day: str) -> float:
    """The end of a UTC day (00:00 UTC of the next day), Unix seconds."""
    end = datetime.combine(parse_day(day) + timedelta(days=1), datetime.min.time(), UTC)
    return end.timestamp()


# --------------------------------------------------------------------------- figures


@dataclass
class RunFigures:
    """One run, summed: what the metrics file and the summary JSON are made of."""

    run_id: str
    #: success (exit 0), failed (a partition failed or is quarantined; exit 1),
    #: interrupted (a signal), error (the run could not go on: exit 2).
    result: str
    started: float
    finished: float
    mode: str | None = None
    error: str | None = None
    days: list[str] = field(default_factory=list)
    last_compacted_before: str | None = None
    last_compacted_after: str | None = None
    #: False: the run never knew the watermark (it stopped before reading the state).
    watermark_known: bool = False
    planned: int = 0
    to_compact: int = 0
    partitions: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    files_in: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    row_groups: int = 0
    corrupt_skipped: int = 0
    considered_files: int = 0
    skipped_files: int = 0
    output_sizes: list[int] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)


def gather(
    run_id: str, started: float, finished: float, plan: Plan | None,
    report: RunReport | None, outcomes: Sequence[PartitionOutcome], *,
    error: BaseException | None = None, labels: Mapping[str, str] | None = None,
) -> RunFigures:
    """Sum a run's outcomes: the report's when there is one, else those seen so far."""
    if report is not None:
        outcomes = report.outcomes
    figures = RunFigures(run_id, _result(report, error), started, finished,
                         error=_error_text(error), labels=dict(labels or {}),
                         peak_rss=peak_rss_bytes())
    figures.partitions = {key: 0 for key in STATUS_KEYS.values()}
    figures.steps = {step: 0.0 for step in STEPS}
    if plan is not None:
        figures.mode = plan.mode.value
        figures.days = list(plan.days)
        figures.last_compacted_before = plan.last_compacted_date
        figures.last_compacted_after = plan.last_compacted_date
        figures.watermark_known = True
        figures.planned = len(plan.partitions)
        figures.to_compact = sum(1 for p in plan.partitions if p.action is Action.COMPACT)
        figures.considered_files = sum(p.partition.file_count for p in plan.partitions)
    if report is not None:
        figures.last_compacted_before = report.last_compacted_before
        figures.last_compacted_after = report.last_compacted_after
    compacted: set[PartitionId] = set()
    for o in outcomes:
        figures.partitions[STATUS_KEYS[o.status]] += 1
        for step, seconds in o.timings.items():
            figures.steps[step] = figures.steps.get(step, 0.0) + seconds
        if o.status is Status.SUCCESS:
            compacted.add(o.pid)
            figures.rows += o.rows
            figures.files_in += o.files_in
            figures.bytes_in += o.bytes_in
            figures.bytes_out += o.size_bytes
            figures.row_groups += o.row_groups
            figures.corrupt_skipped += o.corrupt_skipped
            figures.output_sizes.append(o.size_bytes)
    if plan is not None:
        figures.skipped_files = figures.corrupt_skipped + sum(
            p.partition.file_count for p in plan.partitions if p.pid not in compacted)
    return figures


def _result(report: RunReport | None, error: BaseException | None) -> str:
    if isinstance(error, KeyboardInterrupt) or (report is not None and report.stopped):
        return "interrupted"
    if error is not None or report is None:
        return "error"
    return "success" if report.ok else "failed"


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return one_line(str(error)) or type(error).__name__


# --------------------------------------------------------------------------- metrics


def read_previous(path: Path) -> dict[str, float]:
    """The unlabelled samples of an earlier metrics file (empty when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    samples = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and "{" not in parts[0]:
            try:
                samples[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return samples


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)
                                  and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


class _Metrics:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, name: str, help_text: str,
            samples: Sequence[tuple[Mapping[str, str], float]]) -> None:
        full = PREFIX + name
        if not samples:
            return
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} gauge")
        for labels, value in samples:
            tags = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{full}{{{tags}}} {_number(value)}" if tags
                              else f"{full} {_number(value)}")

    def one(self, name: str, help_text: str, value: float) -> None:
        self.add(name, help_text, [({}, value)])


def render_metrics(figures: RunFigures, previous: Mapping[str, float]) -> str:
    """The Prometheus text file of a run. Values this run cannot know (the last success
    of a run that did not succeed, the watermark of a run that never read the state) are
    kept from `previous`, the file it replaces."""
    m = _Metrics()
    last_success = (figures.finished if figures.result == "success"
                    else previous.get(PREFIX + "last_success_timestamp_seconds", 0.0))
    m.one("last_success_timestamp_seconds",
          "End of the last run that succeeded (exit 0), Unix time; 0: none known.",
          last_success)
    m.one("last_run_timestamp_seconds", "End of the last run, Unix time.", figures.finished)
    m.one("last_run_success", "1 if the last run succeeded (exit 0), else 0.",
          1 if figures.result == "success" else 0)
    m.one("run_duration_seconds", "Duration of the last run.", figures.seconds)
    m.add("run_partitions", "Partitions of the last run by outcome.",
          [({"status": key}, count) for key, count in figures.partitions.items()])
    m.one("run_rows", "Rows published by the last run.", figures.rows)
    m.one("run_input_files", "Raw files merged into the outputs the last run published.",
          figures.files_in)
    m.one("run_input_bytes", "Raw bytes merged into the outputs the last run published.",
          figures.bytes_in)
    m.one("run_output_bytes", "Bytes of the data.parquet files the last run published.",
          figures.bytes_out)
    m.one("peak_rss_bytes", "Peak resident set size of the last run's process.",
          figures.peak_rss)
    if figures.watermark_known:
        day = figures.last_compacted_after
        ready = day_end_timestamp(day) if day else 0.0
    else:
        ready = previous.get(PREFIX + "last_compacted_date_timestamp_seconds", 0.0)
    m.one("last_compacted_date_timestamp_seconds",
          "End (00:00 UTC of the next day) of last_compacted_date, Unix time; 0: no day "
          "ready.", ready)
    m.add("collector_day_label",
          "The collector's day label of each day of the last run (1: the day's label).",
          [({"day": day, "label": label}, 1 if figures.labels[day] == label else 0)
           for day in sorted(figures.labels) for label in LABELS])
    return "\n".join(m.lines) + "\n"


# --------------------------------------------------------------------------- summary


def _sizes(sizes: Sequence[int]) -> dict[str, Any]:
    return {
        "min": min(sizes) if sizes else 0,
        "max": max(sizes) if sizes else 0,
        "avg": round(sum(sizes) / len(sizes), 1) if sizes else 0.0,
        "totalFiles": len(sizes),
        "totalSize": sum(sizes),
    }


def render_summary(figures: RunFigures) -> str:
    """The summary JSON (docs/operations.md "Observability" names every key)."""
    doc = {
        "summaryVersion": SUMMARY_VERSION,
        "runId": figures.run_id,
        "mode": figures.mode,
        "result": figures.result,
        "error": figures.error,
        "startedAt": utc_iso(figures.started),
        "finishedAt": utc_iso(figures.finished),
        "durationSeconds": round(figures.seconds, 3),
        "days": figures.days,
        "lastCompactedDate": {"before": figures.last_compacted_before,
                              "after": figures.last_compacted_after},
        "numFilesAdded": len(figures.output_sizes),
        "numFilesRemoved": figures.files_in,
        "filesAdded": _sizes(figures.output_sizes),
        "partitionsOptimized": len(figures.output_sizes),
        "numBatches": figures.row_groups,
        "totalConsideredFiles": figures.considered_files,
        "totalFilesSkipped": figures.skipped_files,
        "corruptFilesSkipped": figures.corrupt_skipped,
        "partitions": {"planned": figures.planned, "toCompact": figures.to_compact,
                       **figures.partitions},
        "rows": figures.rows,
        "bytesIn": figures.bytes_in,
        "bytesOut": figures.bytes_out,
        "stepSeconds": {step: round(seconds, 3) for step, seconds in figures.steps.items()},
        "peakRssBytes": figures.peak_rss,
    }
    return json.dumps(doc, indent=2) + "\n"


# --------------------------------------------------------------------------- progress


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """The live line: `12/48 partitions, 1.2M rows/s, 340.0 MiB fetched, ETA 3m20s`.

    Drawn with a carriage return and padded over the previous text, at most once per
    `interval` from a ticker thread and whenever a partition ends. The line never
    wraps (it is cut to the terminal's width), so a carriage return always goes back to
    its start. Every log record is written inside `hidden()`: the line is blanked, the
    record written from column 0, the line drawn again; one lock orders both.
    """

    def __init__(self, stream: TextIO, total: int, bytes_total: int, *,
                 clock: Callable[[], float] = time.monotonic, interval: float = 1.0) -> None:
        self.stream = stream
        self.total = total
        #: Raw bytes of the partitions planned `compact` (the ETA follows them).
        self.bytes_total = bytes_total
        self.clock = clock
        self.interval = interval
        self.done = 0
        self.rows = 0
        self.fetched = 0
        self.bytes_done = 0
        self._lock = threading.RLock()
        self._shown = 0  # characters of the line on the screen now
        self._closed = False
        self._started = clock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)

    def start(self) -> None:
        attach_live_line(self.stream, self)
        self._ticker.start()
        self.draw()

    def close(self) -> None:
        """Blank the line for good (the report follows on the terminal)."""
        self._stop.set()
        with self._lock:
            self._clear()
            self._closed = True
        detach_live_line(self.stream, self)

    def add_fetched(self, nbytes: int) -> None:
        with self._lock:
            self.fetched += nbytes

    def partition_done(self, rows: int, planned_bytes: int) -> None:
        with self._lock:
            self.done += 1
            self.rows += rows
            self.bytes_done += planned_bytes
            self.draw()

    def text(self) -> str:
        elapsed = max(self.clock() - self._started, 1e-6)
        if self.bytes_total and self.bytes_done:
            left = elapsed * (self.bytes_total - self.bytes_done) / self.bytes_done
        elif self.done:
            left = elapsed * (self.total - self.done) / self.done
        else:
            left = None
        eta = "?" if left is None else _duration(max(0.0, left))
        return (f"{self.done}/{self.total} partitions, {_count(self.rows / elapsed)} rows/s, "
                f"{human_size(self.fetched)} fetched, ETA {eta}")

    def draw(self) -> None:
        with self._lock:
            if self._closed:
                return
            text = self.text()[: self._width() - 1]
            pad = " " * max(0, self._shown - len(text))
            self._write("\r" + text + pad)
            self._shown = len(text)

    @contextmanager
    def hidden(self) -> Iterator[None]:
        with self._lock:
            self._clear()
            try:
                yield
            finally:
                self.draw()

    def _clear(self) -> None:
        if self._shown:
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError):
            return 80

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: no more progress
            self._closed = True

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw()


# --------------------------------------------------------------------------- the run


class RunObserver:
    """One run's observer (see the module docstring); inert for a dry run."""

    def __init__(
        self, run_id: str, *, metrics_file: Path | None = None, summary_json: Path | None = None,
        progress: bool | None = None, enabled: bool = True, stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if metrics_file is not None:
            check_output("--metrics-file", metrics_file)
        if summary_json is not None:
            check_output("--summary-json", summary_json)
        self.run_id = run_id
        self.metrics_file = metrics_file
        self.summary_json = summary_json
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        if progress is None:
            progress = _is_terminal(self.stream)
        self.show_progress = enabled and progress
        self.clock = clock
        self.started = clock()
        self.plan: Plan | None = None
        self.progress: Progress | None = None
        self._outcomes: dict[PartitionId, PartitionOutcome] = {}
        self._planned_bytes: dict[PartitionId, int] = {}
        self._labels: dict[str, str] = {}
        self._lock = threading.Lock()
        set_run_id(run_id)

    def planned(self, plan: Plan) -> None:
        self.plan = plan
        self._planned_bytes = {p.pid: p.partition.total_bytes for p in plan.partitions
                               if p.action is Action.COMPACT}
        if self.show_progress and plan.partitions:
            self.progress = Progress(self.stream, len(plan.partitions),
                                     sum(self._planned_bytes.values()))
            self.progress.start()

    def recording(self, labels: Callable[[str], Label]) -> Callable[[str], Label]:
        """`labels`, remembering each day's label for the metrics file."""

        def label(day: str) -> Label:
            value = labels(day)
            self._labels[day] = value.value
            return value

        return label

    # JobObserver
    def fetched(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.add_fetched(nbytes)

    def partition_done(self, outcome: PartitionOutcome) -> None:
        with self._lock:
            first = outcome.pid not in self._outcomes
            self._outcomes[outcome.pid] = outcome
        if self.progress is not None and first:
            self.progress.partition_done(outcome.rows if outcome.status is Status.SUCCESS
                                         else 0, self._planned_bytes.get(outcome.pid, 0))

    def finish(self, report: RunReport | None, error: BaseException | None = None) -> None:
        """Clear the live line and write the files; a file that cannot be written is an
        error in the log, never a change to the run's exit code."""
        if self.progress is not None:
            self.progress.close()
        set_run_id(None)
        if not self.enabled or (self.metrics_file is None and self.summary_json is None):
            return
        with self._lock:
            outcomes = list(self._outcomes.values())
        figures = gather(self.run_id, self.started, self.clock(), self.plan, report, outcomes,
                         error=error, labels=self._labels)
        metrics = self.metrics_file
        if metrics is not None:
            self._write("--metrics-file", metrics,
                        lambda: render_metrics(figures, read_previous(metrics)))
        if self.summary_json is not None:
            self._write("--summary-json", self.summary_json, lambda: render_summary(figures))

    def _write(self, flag: str, path: Path, render: Callable[[], str]) -> None:
        try:
            write_atomically(path, render())
        except (OSError, ValueError) as exc:
            log.error("%s %s: not written: %s", flag, path, one_line(str(exc)),
                      extra={"run_id": self.run_id})


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
