"""The command line's options: what argv may hold, and the one-line usage errors.

Separate from `cli.py` (which turns parsed options into a run and reports it) so
that the whole surface of flags, their groups, types and help texts is read in one
place (docs/operations.md "Command line").
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from compressor import __version__
from compressor.logs import FORMATS
from compressor.merge import DEFAULT_MEMORY_BUDGET
from compressor.planning import DEFAULT_EMPTY_DAY_GRACE, DEFAULT_LOOKBACK_DAYS, Mode
from compressor.quality.report import DEFAULT_DAYS as REPORT_DAYS
from compressor.quality.report import MAX_DAYS as MAX_REPORT_DAYS
from compressor.quality.verdicts import DEFAULT_PRIMARY_EXCHANGE

PROG = "quantlab-compact"
#: Upper bound of --lookback-days and --empty-day-grace (ten years).
MAX_DAYS_FLAG = 3650
DEFAULT_TMP = Path(tempfile.gettempdir()) / "quantlab-compact"


class UsageError(ValueError):
    """The run asked for is not allowed (bad flag or date, today or future, wrong combo)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2 via UsageError).

    Abbreviated options are refused (docs/operations.md "Command line"): argparse would take
    `--app` for `--apply`, and a typo must never run a destructive action.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Compact a day of small raw Parquet files into one sorted data.parquet "
        "+ meta.json per exchange/stream/symbol/day, and keep compacted/_state.json true.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _what_to_compact(p.add_argument_group("what to compact"))
    _other_actions(p.add_argument_group("other actions"))
    _stores_and_resources(p.add_argument_group("stores and resources"))
    _observe(p.add_argument_group("observe"))
    return p


def _what_to_compact(run: argparse._ArgumentGroup) -> None:
    """The run's days, filters and choices (docs/operations.md "Command line")."""
    run.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.CATCH_UP.value,
                     help="daily = yesterday; catch-up (default) = every raw day after "
                     "last_compacted_date and before today; backfill = --date-from..--date-to")
    run.add_argument("--date-from", metavar="YYYYMMDD", help="first day of a backfill")
    run.add_argument("--date-to", metavar="YYYYMMDD",
                     help="last day of a backfill (default: --date-from)")
    run.add_argument("--today", metavar="YYYYMMDD",
                     help="pretend today's UTC date is this (reproducible runs, tests); "
                     "never later than the real UTC date")
    run.add_argument("--lookback-days", metavar="N", type=_count("--lookback-days"),
                     default=DEFAULT_LOOKBACK_DAYS,
                     help="catch-up re-checks the N raw days up to last_compacted_date for "
                     f"late raw files (default {DEFAULT_LOOKBACK_DAYS}; 0 turns it off)")
    run.add_argument("--empty-day-grace", metavar="N", type=_count("--empty-day-grace"),
                     default=DEFAULT_EMPTY_DAY_GRACE,
                     help="a day without raw data counts as ready only N full days after it "
                     f"ended, once a later day has data (default {DEFAULT_EMPTY_DAY_GRACE})")
    run.add_argument("--exchanges", metavar="LIST", help="comma list, e.g. binance,okx")
    run.add_argument("--streams", metavar="LIST", help="comma list, e.g. trade,bbo")
    run.add_argument("--symbols", metavar="LIST", help="comma list, e.g. btcusdt")
    run.add_argument("--symbols-file", metavar="PATH", type=Path,
                     help="one symbol per line (# comments, blank lines ignored), joined "
                     "with --symbols")
    run.add_argument("--max-days", metavar="N", type=_positive("--max-days", 100_000),
                     help="a backfill without --date-from: at most N days, newest first")
    run.add_argument("--max-partitions", metavar="N", type=_positive("--max-partitions",
                                                                     10_000_000),
                     help="compact at most N partitions in this run (the rest wait)")
    run.add_argument("--shard", metavar="K/N",
                     help="only the partitions of shard K of N (a stable hash of the key); "
                     "auto/N reads JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX. "
                     "Never moves last_compacted_date")
    run.add_argument("--apply", action="store_true",
                     help="--mode cleanup: really remove (without it: list what would go)")
    _how_to_compact(run)


def _how_to_compact(run: argparse._ArgumentGroup) -> None:
    run.add_argument("--deep", action="store_true",
                     help="--mode verify: also download each output and check its sha256, "
                     "rows, order and seq")
    run.add_argument("--overwrite", action="store_true",
                     help="recompact partitions even when they are up to date")
    run.add_argument("--retry-quarantine", action="store_true",
                     help="retry partitions quarantined by an earlier run")
    run.add_argument("--skip-corrupt", action="store_true",
                     help="compact without corrupt raw objects; list them in meta.json "
                     "skipped_files and the state")
    run.add_argument("--primary-exchange", metavar="EX", default=DEFAULT_PRIMARY_EXCHANGE,
                     help="the exchange whose offline time weighs most in the collector's "
                     f"day verdict (default {DEFAULT_PRIMARY_EXCHANGE})")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (days, partitions, files, bytes, skips) and exit")


def _other_actions(other: argparse._ArgumentGroup) -> None:
    other.add_argument("--quality-report", action="store_true",
                       help="print the quality report (one row per day: collector label, "
                       "partitions by condition, rows, data flags; the watermark; the worst "
                       "partitions) and exit. Read-only. Days: --days N, or --date-from D "
                       "[--date-to D2]")
    other.add_argument("--days", metavar="N", type=_count("--days"), default=None,
                       help=f"--quality-report: the N days before today (default "
                       f"{REPORT_DAYS}, at most {MAX_REPORT_DAYS})")
    other.add_argument("--json", action="store_true",
                       help="--quality-report: print the report as one JSON document")
    other.add_argument("--html", metavar="FILE", type=Path,
                       help="--quality-report: also write a self-contained offline HTML "
                       "page (heatmap, daily table, rows chart) to FILE")
    other.add_argument("--repair-state", action="store_true",
                       help="back up a malformed compacted/_state.json and write a fresh one "
                       "keeping every entry that still validates, then exit")
    other.add_argument("--demo", metavar="DIR", type=Path,
                       help="generate a small raw lake in DIR/raw, compact it into "
                       "DIR/compact (local stores) and print the quality report")


def _stores_and_resources(where: argparse._ArgumentGroup) -> None:
    where.add_argument("--raw", metavar="URI",
                       help="raw store: s3://bucket[/prefix] or a directory "
                       "(default s3://$S3_BUCKET, bucket quantlab-raw)")
    where.add_argument("--compact", metavar="URI",
                       help="compact store (default s3://$S3_COMPACT_BUCKET, "
                       "bucket quantlab-compact)")
    where.add_argument("--env-file", metavar="PATH",
                       help="dotenv file with S3_* settings (default ./.env if present); "
                       "real environment variables win")
    where.add_argument("--tmp-dir", metavar="DIR", type=Path, default=DEFAULT_TMP,
                       help=f"local scratch space (default {DEFAULT_TMP})")
    where.add_argument("--memory-budget", metavar="SIZE", default=None,
                       help="memory the whole run may use for buffered rows, shared by the "
                       "workers, e.g. 512M or 2G "
                       f"(default {DEFAULT_MEMORY_BUDGET >> 20}M)")
    where.add_argument("--workers", metavar="N", type=_positive("--workers"), default=None,
                       help="partitions compacted at once (default: the cores, while each "
                       "gets at least 192M of --memory-budget; the choice is logged)")
    where.add_argument("--log-format", choices=FORMATS, default="human",
                       help="human (default) or json lines, on stderr")


def _observe(watch: argparse._ArgumentGroup) -> None:
    watch.add_argument("--metrics-file", metavar="PATH", type=Path,
                       help="write the run's Prometheus metrics to PATH at its end, atomically "
                       "(for node_exporter's textfile collector: name it *.prom)")
    watch.add_argument("--summary-json", metavar="PATH", type=Path,
                       help="write the run's figures (files, bytes, partitions, step times) "
                       "to PATH as one JSON document at its end, atomically")
    watch.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                       help="the live progress line on stderr: auto (default) = when stderr "
                       "is a terminal")


# --------------------------------------------------------------------------- parsing helpers


def _positive(flag: str, most: int = 64) -> Callable[[str], int]:
    """argparse type: a whole number from 1 to `most`, the error naming `flag`."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or not 1 <= int(text) <= most:
            raise UsageError(f"{flag}: expected a whole number from 1 to {most}, got {text!r}")
        return int(text)

    return parse


def _count(flag: str) -> Callable[[str], int]:
    """argparse type: a non-negative integer, the error naming `flag`."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) > MAX_DAYS_FLAG:
            raise UsageError(f"{flag}: expected a whole number of days from 0 to "
                             f"{MAX_DAYS_FLAG}, got {text!r}")
        return int(text)

    return parse


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5g', '300000000' -> bytes (binary units). UsageError otherwise."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--memory-budget: not a size like 512M or 2G: {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * 1024 ** "_kmgt".index(unit or "_"))
    if value < 1 << 20:
        raise UsageError(f"--memory-budget: {text!r} is below 1M")
    return value
