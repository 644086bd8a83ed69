"""Observability: the Prometheus text file, the summary JSON, JSON log lines, the live line.

End to end through `python run.py` on local stores (a lake from
`compressor.demo.write_demo_lake`); the live line on a pseudo-terminal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from compressor.demo import write_demo_lake
from compressor.job import PartitionOutcome, RunReport, Status
from compressor.layout import PartitionId
from compressor.logs import ConsoleHandler, HumanFormatter, JsonFormatter
from compressor.observe import (
    PREFIX,
    STEPS,
    ObserveError,
    Progress,
    RunObserver,
    day_end_timestamp,
    gather,
    read_previous,
    render_metrics,
    write_atomically,
)
from compressor.planning import Mode, Plan

REPO = Path(__file__).resolve().parents[1]
DAYS = ("20260101", "20260102")
TODAY = "20260103"
SHAPE: dict[str, Any] = {"exchanges": ("binance",), "streams": ("trade", "bbo"),
                         "symbols": ("btcusdt", "ethusdt"), "files_per_partition": 3,
                         "rows_per_file": 60}
PER_DAY = 4  # partitions a day: 1 exchange x 2 streams x 2 symbols
#: A progress line: "3/8 partitions, 1.2K rows/s, 40.0 KiB fetched, ETA 2s".
PROGRESS_RE = re.compile(r"\d+/\d+ partitions, [\d.]+[KMG]? rows/s, .* fetched, ETA ")
LOG_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO|WARNING|ERROR) +")


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_demo_lake(tmp_path / "raw", DAYS, **SHAPE)
    (tmp_path / "compact").mkdir()
    return tmp_path


def run_py(lake: Path, *args: str, stderr: Any = subprocess.PIPE
           ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "MERGE_"))}
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--raw", str(lake / "raw"), "--compact",
         str(lake / "compact"), "--tmp-dir", str(lake / "tmp"), "--today", TODAY, *args],
        cwd=lake, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
        text=True, timeout=120,
    )


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a metrics file, parsed by prometheus_client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.name.startswith(PREFIX), family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def gauge(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples[(PREFIX + name, tuple(sorted(labels.items())))]


def json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = stderr.splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


def final_events(lines: list[dict[str, Any]]) -> dict[str, list[str]]:
    events: dict[str, list[str]] = {}
    for line in lines:
        if line.get("event") in ("published", "skipped", "failed", "quarantined"):
            events.setdefault(line["partition"], []).append(line["event"])
    return events


def test_metrics_summary_and_json_logs_over_three_runs(lake: Path) -> None:
    prom, summary = lake / "node" / "quantlab_compact.prom", lake / "summary.json"
    prom.parent.mkdir()
    observe = ("--log-format", "json", "--metrics-file", str(prom),
               "--summary-json", str(summary))

    # 1. a fresh catch-up compacts yesterday and moves the watermark over it
    first = run_py(lake, *observe)
    assert first.returncode == 0, first.stderr
    lines = json_lines(first.stderr)
    run_id = lines[0]["run_id"]
    assert all(line["run_id"] == run_id for line in lines)
    planned = [line for line in lines if line.get("event") == "planned"]
    started = [line for line in lines if line.get("event") == "started"]
    published = [line for line in lines if line.get("event") == "published"]
    assert len(planned) == len(started) == len(published) == PER_DAY
    for line in published:
        assert line["partition"].endswith("/" + DAYS[1])
        assert line["rows"] > 0 and line["files"] == 3
        assert line["bytes_in"] > 0 and line["bytes_out"] > 0 and line["seconds"] >= 0
    assert {p["partition"] for p in planned} == {p["partition"] for p in published}
    assert all(p["reason"] == "not compacted yet" and p["files"] == 3 for p in planned)
    assert not any(LOG_RE.match(line["msg"]) for line in lines)

    m = metrics(prom)
    rows = sum(line["rows"] for line in published)
    assert gauge(m, "last_run_success") == 1
    assert gauge(m, "last_success_timestamp_seconds") == gauge(m, "last_run_timestamp_seconds")
    assert abs(gauge(m, "last_run_timestamp_seconds") - time.time()) < 60
    assert 0 < gauge(m, "run_duration_seconds") < 60
    assert gauge(m, "run_partitions", status="success") == PER_DAY
    assert gauge(m, "run_partitions", status="failed") == 0
    assert gauge(m, "run_rows") == rows
    assert gauge(m, "run_input_files") == 3 * PER_DAY
    assert gauge(m, "run_input_bytes") == sum(line["bytes_in"] for line in published)
    assert gauge(m, "run_output_bytes") == sum(line["bytes_out"] for line in published)
    assert gauge(m, "peak_rss_bytes") > 10 << 20
    # the end of 20260102 = 2026-01-03T00:00:00Z
    assert gauge(m, "last_compacted_date_timestamp_seconds") == 1767398400
    labels = {dict(key[1])["label"]: value for key, value in m.items()
              if key[0] == PREFIX + "collector_day_label"}
    assert sorted(labels.values()) == [0, 0, 0, 0, 1] and len(labels) == 5
    assert {dict(key[1])["day"] for key in m if key[0] == PREFIX + "collector_day_label"} \
        == {DAYS[1]}
    assert not list(prom.parent.glob(".*"))  # no temp file left beside it

    doc = json.loads(summary.read_text())
    assert doc["runId"] == run_id and doc["result"] == "success" and doc["mode"] == "catch-up"
    assert doc["numFilesAdded"] == doc["partitionsOptimized"] == PER_DAY
    assert doc["numFilesRemoved"] == doc["totalConsideredFiles"] == 3 * PER_DAY
    assert doc["totalFilesSkipped"] == 0
    sizes = sorted(line["bytes_out"] for line in published)
    assert doc["filesAdded"] == {"min": sizes[0], "max": sizes[-1],
                                 "avg": round(sum(sizes) / len(sizes), 1),
                                 "totalFiles": PER_DAY, "totalSize": sum(sizes)}
    assert doc["lastCompactedDate"] == {"before": None, "after": DAYS[1]}
    assert doc["partitions"]["planned"] == doc["partitions"]["success"] == PER_DAY
    assert doc["rows"] == rows and doc["numBatches"] >= PER_DAY
    assert set(doc["stepSeconds"]) == set(STEPS)
    assert all(doc["stepSeconds"][step] > 0 for step in ("fetch", "merge", "upload"))

    # 2. a backfill of both days: the first compacted, the second up to date (skipped)
    second = run_py(lake, "--mode", "backfill", "--date-from", DAYS[0], "--date-to", DAYS[1],
                    *observe)
    assert second.returncode == 0, second.stderr
    lines = json_lines(second.stderr)
    events = final_events(lines)
    assert len(events) == 2 * PER_DAY
    assert all(len(found) == 1 for found in events.values())  # one final event each
    for partition, (event,) in events.items():
        assert event == ("published" if partition.endswith(DAYS[0]) else "skipped")
    skipped = [line for line in lines if line.get("event") == "skipped"]
    assert all(line["reason"] == "up to date" for line in skipped)
    m2 = metrics(prom)
    assert gauge(m2, "run_partitions", status="success") == PER_DAY
    assert gauge(m2, "run_partitions", status="up_to_date") == PER_DAY
    assert gauge(m2, "last_compacted_date_timestamp_seconds") == 1767398400  # not moved
    doc = json.loads(summary.read_text())
    assert doc["totalConsideredFiles"] == 6 * PER_DAY
    assert doc["numFilesRemoved"] == doc["totalFilesSkipped"] == 3 * PER_DAY
    assert doc["partitions"]["up_to_date"] == PER_DAY

    # 3. a run that cannot start (no raw store): the last success is kept from the file
    (lake / "raw").rename(lake / "raw-gone")
    third = run_py(lake, *observe)
    assert third.returncode == 2
    m3 = metrics(prom)
    assert gauge(m3, "last_run_success") == 0
    assert gauge(m3, "last_success_timestamp_seconds") == \
        gauge(m2, "last_success_timestamp_seconds")
    assert gauge(m3, "last_run_timestamp_seconds") > gauge(m2, "last_run_timestamp_seconds")
    assert gauge(m3, "last_compacted_date_timestamp_seconds") == 1767398400  # kept too
    doc = json.loads(summary.read_text())
    assert doc["result"] == "error" and "does not exist" in doc["error"]


def test_human_logs_unchanged_and_no_files_on_a_dry_run(lake: Path) -> None:
    prom = lake / "m.prom"
    dry = run_py(lake, "--dry-run", "--metrics-file", str(prom))
    assert dry.returncode == 0 and not prom.exists()
    done = run_py(lake, "--metrics-file", str(prom))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert all(LOG_RE.match(line) for line in lines)
    assert not any("planned:" in line for line in lines)  # the planned events are JSON only
    assert sum("published" in line for line in lines) == PER_DAY
    assert "\r" not in done.stderr and not PROGRESS_RE.search(done.stderr)  # a pipe
    assert prom.exists()


def test_a_file_that_cannot_be_written_is_a_usage_error(lake: Path) -> None:
    done = run_py(lake, "--summary-json", str(lake / "no" / "such" / "dir.json"))
    assert done.returncode == 2
    assert done.stderr.strip().endswith("no such directory " + str(lake / "no" / "such"))
    assert not list((lake / "compact").iterdir())  # nothing done


def screen(text: str) -> list[str]:
    """What a terminal shows after `text`: \r goes back to column 0, \n down a line."""
    lines: list[list[str]] = [[]]
    col = 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return ["".join(line).rstrip() for line in lines]


def read_pty(master: int, proc: subprocess.Popen[bytes]) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            raise AssertionError("no output from the terminal for 60 s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    return b"".join(chunks)


def test_progress_line_on_a_terminal_only(lake: Path) -> None:
    args = ["--mode", "backfill", "--date-from", DAYS[0], "--date-to", DAYS[1],
            "--workers", "2"]
    master, slave = pty.openpty()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("S3_")},
           "TERM": "xterm", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), "--raw", str(lake / "raw"), "--compact",
         str(lake / "compact"), "--tmp-dir", str(lake / "tmp"), "--today", TODAY, *args],
        cwd=lake, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    try:
        tty = read_pty(master, proc).decode()
    finally:
        os.close(master)
    assert proc.returncode == 0, tty
    assert proc.stdout is not None and "8 success" in proc.stdout.read().decode()
    assert re.search(r"\r" + PROGRESS_RE.pattern, tty)
    assert f"{2 * PER_DAY}/{2 * PER_DAY} partitions" in tty
    # every log record starts at column 0 and runs whole to its line end
    records = list(LOG_RE.finditer(tty))
    assert len(records) >= 2 * 2 * PER_DAY  # compacting + published lines
    for record in records:
        start = record.start()
        assert start == 0 or tty[start - 1] in "\r\n", repr(tty[start - 80:start + 20])
    shown = screen(tty)
    assert shown[-1] == ""  # the live line is blanked before the report
    assert [line for line in shown if line] == [r.group(0) + tty[r.end():].split("\r")[0]
                                                for r in records]  # whole records only

    # the same run with stderr on a pipe (journald): log lines only
    piped = run_py(lake, *args, "--overwrite")
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and not PROGRESS_RE.search(piped.stderr)
    assert all(LOG_RE.match(line) for line in piped.stderr.splitlines())


# --------------------------------------------------------------------------- units


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_records_never_land_inside_the_live_line() -> None:
    out = FakeTty()
    handler = ConsoleHandler(out)
    handler.setFormatter(HumanFormatter())
    logger = logging.getLogger("compressor.test_observe_live")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    progress = Progress(out, total=400, bytes_total=400_000, interval=0.001)
    handler.live = progress
    progress._ticker.start()
    try:
        def work(n: int) -> None:
            for i in range(100):
                progress.add_fetched(1000)
                logger.info("worker %d record %d", n, i)
                progress.partition_done(10, 1000)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        progress.close()
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "\r400/400 partitions" in text
    shown = screen(text)
    assert shown[-1] == ""  # blanked at the end
    assert len(shown) == 401
    for line in shown[:-1]:
        assert re.fullmatch(LOG_RE.pattern + r"compressor.test_observe_live: worker \d "
                            r"record \d+", line), repr(line)


def test_json_formatter_emits_known_extra_keys_only() -> None:
    record = logging.LogRecord("compressor.job", logging.INFO, __file__, 1, "p: published",
                               None, None)
    for key, value in {"run_id": "r1", "partition": "p", "event": "published", "rows": 5,
                       "seconds": 1.23456, "error": None, "other": "x"}.items():
        setattr(record, key, value)
    entry = json.loads(JsonFormatter().format(record))
    assert entry == {"ts": entry["ts"], "level": "INFO", "logger": "compressor.job",
                     "msg": "p: published", "run_id": "r1", "partition": "p",
                     "event": "published", "rows": 5, "seconds": 1.235}


def test_metrics_of_an_interrupted_run_keep_the_last_success(tmp_path: Path) -> None:
    prom = tmp_path / "m.prom"
    write_atomically(prom, f"{PREFIX}last_success_timestamp_seconds 1700000000\n"
                           f"{PREFIX}last_compacted_date_timestamp_seconds 1699920000\n")
    plan = Plan(Mode.CATCH_UP, TODAY, [DAYS[1]], [DAYS[1]], DAYS[0])
    report = RunReport(plan, last_compacted_before=DAYS[0], last_compacted_after=DAYS[0],
                       stopped=True)
    pid = PartitionId("binance", "trade", "btcusdt", DAYS[1])
    report.outcomes = [PartitionOutcome(pid, Status.SUCCESS, 10, 100, files_in=2, bytes_in=300,
                                        timings={"fetch": 1.5}),
                       PartitionOutcome(pid, Status.NOT_RUN)]
    figures = gather("r", 10.0, 12.5, plan, report, [], labels={DAYS[1]: "BAD"})
    assert figures.result == "interrupted"
    text = render_metrics(figures, read_previous(prom))
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[(PREFIX + "last_success_timestamp_seconds", ())] == 1700000000
    assert samples[(PREFIX + "last_run_timestamp_seconds", ())] == 12.5
    assert samples[(PREFIX + "run_duration_seconds", ())] == 2.5
    assert samples[(PREFIX + "run_partitions", (("status", "not_run"),))] == 1
    assert samples[(PREFIX + "last_compacted_date_timestamp_seconds", ())] == \
        day_end_timestamp(DAYS[0]) == 1767312000
    assert samples[(PREFIX + "collector_day_label", (("day", DAYS[1]), ("label", "BAD")))] == 1
    assert figures.steps["fetch"] == 1.5 and figures.files_in == 2


def test_observer_checks_its_paths_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(ObserveError, match="--metrics-file .*: no such directory"):
        RunObserver("r", metrics_file=tmp_path / "nope" / "m.prom")
    with pytest.raises(ObserveError, match="is a directory"):
        RunObserver("r", summary_json=tmp_path)
