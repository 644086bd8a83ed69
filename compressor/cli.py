"""Command line: parse, configure, plan, execute, report. `python3 run.py --help`.

Exit codes: 0 every planned partition succeeded or was already up to date;
1 at least one failed (the others were still done); 2 usage, configuration or
store error (one line on stderr); 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from dotenv import dotenv_values

from compressor import runner
from compressor.discovery import Filters
from compressor.eventday import settled
from compressor.layout import format_day, parse_day
from compressor.lease import DEFAULT_TTL_S
from compressor.logs import setup_logging
from compressor.merge import MergeSettings, choose_memory_pool, keep_spare_slices, spare_limit
from compressor.options import PROG, UsageError, build_parser, parse_size
from compressor.partition.compact import CompactSettings
from compressor.planning import (
    Mode,
    PlanOptions,
    Shard,
    check_dates,
)
from compressor.quality.html import render_html
from compressor.quality.report import gather, render_json, render_text, report_days
from compressor.runner import RunConfig, TmpDirError
from compressor.state import StateCorruptError, StateStore
from compressor.storage import Store, StoreError, open_store
from compressor.text import one_line

log = logging.getLogger("compressor.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_RAW_BUCKET = "quantlab-raw"
DEFAULT_COMPACT_BUCKET = "quantlab-compact"
#: The shortest lease TTL QLC_LEASE_TTL_S may ask for (the renewer runs every TTL/3).
MIN_LEASE_TTL_S = 2.0
MAX_LEASE_TTL_S = 86_400.0
#: The --demo lake: days before today, and its shape (a few hundred small files).
DEMO_DAYS = 3
DEMO_SHAPE: dict[str, Any] = {
    "exchanges": ("binance", "bybit"),
    "streams": ("trade", "bbo", "mark_price"),
    "symbols": ("btcusdt", "ethusdt"),
    "files_per_partition": 8,
    "rows_per_file": 300,
}


def load_env(path_arg: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from the dotenv file (if any) overlaid by the real environment."""
    path = Path(path_arg) if path_arg else Path(".env")
    if not path.is_file():
        if path_arg:
            raise UsageError(f"--env-file {path_arg}: no such file")
        return dict(environ)
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s is readable by other users (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--env-file {path}: cannot read it ({type(exc).__name__})") from None
    env = {k: v for k, v in values.items() if v is not None}
    env.update(environ)
    return env


def utc_today() -> date:
    return datetime.now(UTC).date()


def _today(args: argparse.Namespace) -> date:
    """--today, or the real UTC date. A --today past the real date would compact the
    day still being written and declare it ready: a usage error."""
    real = utc_today()
    if not args.today:
        return real
    try:
        today = parse_day(args.today)
    except ValueError:
        raise UsageError(f"--today: not a YYYYMMDD date: {args.today!r}") from None
    if today > real:
        raise UsageError(f"--today {args.today} is after today's real UTC date "
                         f"{format_day(real)}; only past days can be compacted")
    return today


def _spare_limit(env: Mapping[str, str]) -> int:
    try:
        return spare_limit(env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def lease_ttl(env: Mapping[str, str]) -> float:
    """QLC_LEASE_TTL_S (seconds) or the default; tests and the chaos bench shorten it."""
    text = env.get("QLC_LEASE_TTL_S")
    if not text:
        return DEFAULT_TTL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_LEASE_TTL_S <= value <= MAX_LEASE_TTL_S:
        raise UsageError(f"QLC_LEASE_TTL_S: expected seconds from {MIN_LEASE_TTL_S:.0f} to "
                         f"{MAX_LEASE_TTL_S:.0f}, got {text!r}")
    return value


def open_stores(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Store, Store]:
    raw_uri = args.raw or f"s3://{env.get('S3_BUCKET') or DEFAULT_RAW_BUCKET}"
    compact_uri = args.compact or f"s3://{env.get('S3_COMPACT_BUCKET') or DEFAULT_COMPACT_BUCKET}"
    return open_store(raw_uri, env, role="raw"), open_store(compact_uri, env, role="compact")


def merge_settings(args: argparse.Namespace, env: Mapping[str, str]) -> MergeSettings:
    """--memory-budget over the MERGE_* / MAX_OPEN_FILES variables over the defaults."""
    overrides = {}
    if args.memory_budget is not None:
        overrides["memory_budget"] = parse_size(args.memory_budget)
    try:
        return MergeSettings.from_env(env, **overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------- signals


class StopFlag:
    """First SIGINT/SIGTERM: stop after the running partition (whose merge aborts).

    A second one exits at once; meta.json being the commit marker, no partial
    output is visible.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        log.warning("%s received: finishing cleanly (send it again to exit at once)",
                    signal.Signals(signum).name)

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum


# --------------------------------------------------------------------------- actions


def _symbols(args: argparse.Namespace) -> str | None:
    """--symbols joined with the lines of --symbols-file (None: no symbol filter)."""
    names = [args.symbols] if args.symbols else []
    if args.symbols_file is not None:
        try:
            text = args.symbols_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UsageError(f"--symbols-file {args.symbols_file}: cannot read it "
                             f"({reason})") from None
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        listed = [line for line in lines if line]
        if not listed:
            raise UsageError(f"--symbols-file {args.symbols_file}: no symbol in it")
        names.extend(listed)
    return ",".join(names) if names else None


def plan_options(args: argparse.Namespace, today: date,
                 env: Mapping[str, str] | None = None) -> PlanOptions:
    try:
        filters = Filters.parse(args.exchanges, args.streams, _symbols(args))
    except ValueError as exc:
        raise UsageError(f"--exchanges/--streams/--symbols: {exc}") from None
    mode = Mode(args.mode)
    try:
        backfill = check_dates(mode, today, args.date_from, args.date_to)
        shard = Shard.parse(args.shard, env or os.environ) if args.shard else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.max_days is not None and not (mode is Mode.BACKFILL and backfill is None):
        raise UsageError("--max-days applies to a backfill without --date-from only")
    if args.apply and mode is not Mode.CLEANUP:
        raise UsageError("--apply applies to --mode cleanup only")
    if args.deep and mode is not Mode.VERIFY:
        raise UsageError("--deep applies to --mode verify only")
    return PlanOptions(
        mode=mode, today=today, backfill=backfill,
        filters=filters, overwrite=args.overwrite, retry_quarantine=args.retry_quarantine,
        lookback_days=args.lookback_days, empty_day_grace=args.empty_day_grace,
        shard=shard, max_days=args.max_days, max_partitions=args.max_partitions,
    )


def run_config(args: argparse.Namespace, env: Mapping[str, str]) -> RunConfig:
    """The RunConfig that argv and the environment ask for; UsageError otherwise."""
    today = _today(args)
    return RunConfig(
        options=plan_options(args, today, env),
        settings=CompactSettings(tmp_root=args.tmp_dir, merge=merge_settings(args, env),
                                 skip_corrupt=args.skip_corrupt),
        today_given=bool(args.today),
        dry_run=args.dry_run,
        lease_ttl_s=lease_ttl(env),
        spare_limit=_spare_limit(env),
        primary_exchange=args.primary_exchange.lower(),
        workers=args.workers,
        metrics_file=args.metrics_file,
        summary_json=args.summary_json,
        progress={"on": True, "off": False}.get(args.progress),
    )


def run_once(config: RunConfig, raw: Store, compact: Store, stop: StopFlag) -> int:
    """Run, print the plan (dry run) or the report, and map the outcome to an exit code."""
    try:
        result = runner.run(config, raw, compact, stop)
    except (TmpDirError, ValueError) as exc:  # e.g. a backfill range past the store's today
        raise UsageError(str(exc)) from None
    if result.report is None:
        print(result.plan.render())
        return EXIT_OK
    print(result.report.render())
    if stop.exit_code is not None:
        return stop.exit_code
    return EXIT_OK if result.report.ok else EXIT_FAILED


def quality_report(args: argparse.Namespace, raw: Store, compact: Store) -> int:
    """Read-only: no lease, no cleanup, no probe, no verdict saved (quality/report/)."""
    today = _today(args)
    try:
        days = report_days(today, args.days, args.date_from, args.date_to)
        filters = Filters.parse(args.exchanges, args.streams, args.symbols)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    html_path: Path | None = args.html
    if html_path is not None and not html_path.parent.is_dir():
        raise UsageError(f"--html {html_path}: no such directory {html_path.parent}")
    raw.check()
    compact.check()
    report = gather(raw, compact, days, today=format_day(today),
                    primary_exchange=args.primary_exchange.lower(), filters=filters)
    if html_path is not None:
        try:
            html_path.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UsageError(f"--html {html_path}: cannot write it ({reason})") from None
        log.info("quality report page written to %s", html_path)
    if args.json:
        print(render_json(report))
    else:
        print(render_text(report, colour=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    return EXIT_OK


def repair_state(compact: Store) -> int:
    compact.check()
    result = StateStore(compact).backup_and_reset()
    if result.backup_key is None:
        print(f"{compact.uri}: state is valid ({result.kept_entries} entries); nothing done")
    else:
        print(f"backed up to {result.backup_key}; kept {result.kept_entries} entries, "
              f"dropped {result.dropped_entries}; last_compacted_date "
              f"{result.last_compacted_date or '-'}")
    return EXIT_OK


def demo_today(today: date, now: datetime) -> date:
    """The day the demo runs as: today, unless rows of yesterday may still arrive under
    today's folder (the first hour after midnight, docs/guarantees.md "Rows belong to
    their event day"), which would leave yesterday waiting and the demo with no ready
    day; then yesterday, so that every demo day is ready whenever the demo runs."""
    yesterday = today - timedelta(days=1)
    if settled(format_day(yesterday), [], now):
        return today
    log.info("demo: %s may still get rows until an hour after midnight: the demo runs "
             "as of %s", format_day(yesterday), format_day(yesterday))
    return yesterday


def run_demo(args: argparse.Namespace, stop: StopFlag) -> int:
    """Generate a small lake, backfill every demo day, then a catch-up marks them ready."""
    from compressor.demo import write_demo_lake

    root: Path = args.demo
    today = demo_today(_today(args), datetime.now(UTC))
    days = [format_day(today - timedelta(days=n)) for n in range(DEMO_DAYS, 0, -1)]
    try:
        (root / "raw").mkdir(parents=True, exist_ok=True)
        (root / "compact").mkdir(parents=True, exist_ok=True)
        written = write_demo_lake(root / "raw", days, **DEMO_SHAPE)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"--demo {root}: cannot write the demo lake there ({reason})") from None
    log.info("demo: wrote %d raw partitions for %s into %s", len(written), ", ".join(days),
             root / "raw")
    raw = open_store(str(root / "raw"), {}, role="raw")
    compact = open_store(str(root / "compact"), {}, role="compact")
    settings = CompactSettings(tmp_root=args.tmp_dir)
    first, last = parse_day(days[0]), parse_day(days[-1])
    runs = [PlanOptions(mode=Mode.BACKFILL, today=today, backfill=(first, last)),
            PlanOptions(mode=Mode.CATCH_UP, today=today)]
    code = EXIT_OK
    for options in runs:
        config = RunConfig(options, settings, primary_exchange=args.primary_exchange.lower())
        code = max(code, run_once(config, raw, compact, stop))
        if stop.exit_code is not None:
            return stop.exit_code
    report = gather(raw, compact, report_days(today, DEMO_DAYS, None, None),
                    today=format_day(today), primary_exchange=args.primary_exchange.lower())
    print()
    print(render_text(report, colour=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    print(f"\noutputs: {root / 'compact'}   state: {root / 'compact/compacted/_state.json'}")
    return code


def _check_one_action(args: argparse.Namespace) -> None:
    chosen = [flag for flag, on in (("--demo", args.demo is not None),
                                    ("--quality-report", args.quality_report),
                                    ("--repair-state", args.repair_state),
                                    ("--dry-run", args.dry_run)) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be combined")
    report_only = [flag for flag, on in (("--days", args.days is not None),
                                         ("--json", args.json),
                                         ("--html", args.html is not None)) if on]
    if report_only and not args.quality_report:
        raise UsageError(f"{report_only[0]} applies to --quality-report only")


def _dispatch(args: argparse.Namespace, stop: StopFlag) -> int:
    _check_one_action(args)
    if args.demo is None and (args.quality_report or args.repair_state or args.dry_run
                              or args.mode in (Mode.CLEANUP, Mode.VERIFY)):
        keep_spare_slices(0)  # started by compressor.launch; nothing here merges
    if args.demo is not None:
        return run_demo(args, stop)
    env = load_env(args.env_file, os.environ)
    raw, compact = open_stores(args, env)
    if args.quality_report:
        return quality_report(args, raw, compact)
    if args.repair_state:
        return repair_state(compact)
    config = run_config(args, env)
    if config.options.mode is Mode.CLEANUP:
        return cleanup(config, compact, args.apply)
    if config.options.mode is Mode.VERIFY:
        return verify(config, raw, compact, args.deep)
    return run_once(config, raw, compact, stop)


def cleanup(config: RunConfig, compact: Store, apply: bool) -> int:
    """--mode cleanup: prints what goes (or went); exit 1 when some partition stayed."""
    the_plan, result = runner.cleanup(config, compact, apply)
    print(the_plan.render(applied=result is not None))
    if result is None:
        return EXIT_OK
    for pid, problem in result.problems:
        print(f"  not removed: {pid.state_key}: {problem}")
    return EXIT_FAILED if result.problems else EXIT_OK


def verify(config: RunConfig, raw: Store, compact: Store, deep: bool) -> int:
    """--mode verify: one line per problem; exit 1 when there is any."""
    try:
        result = runner.verify(config, raw, compact, deep)
    except TmpDirError as exc:
        raise UsageError(str(exc)) from None
    for finding in result.findings:
        print(finding.line)
    kind = "deep" if deep else "cheap"
    print(f"verify ({kind}): {result.checked} partitions checked, "
          f"{len(result.findings)} problems")
    return EXIT_FAILED if result.findings else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    stop = StopFlag()
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_format)
        choose_memory_pool()
        stop.install()
        code = _dispatch(args, stop)
    except (UsageError, StoreError, StateCorruptError) as exc:
        print(f"{PROG}: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        keep_spare_slices(0)
    if stop.exit_code is not None:
        _exit_now(stop.exit_code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for downloads still in flight (state and leases are settled)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
