#!/usr/bin/env python3
"""Time our merge, Polars and DuckDB on one raw partition directory; check they agree.

    python bench/run_merge.py /tmp/lake/exchange=binance/stream=bbo/symbol=btcusdt/date=20261124

Each run of each contender is its own process under `/usr/bin/time -v`, so the wall
seconds and the peak RSS are those of the whole process (interpreter and imports
included). Contenders take turns within each repetition. After the runs, the outputs
of the last repetition are streamed side by side and compared row by row (ts_event,
seq and every value column); each is also checked to be sorted with seq = 0..N-1 and
to hold as many rows as the inputs. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONTENDERS = ("ours", "polars", "duckdb")
EXTRA_CONTENDERS = ("ours_quality", "polars_tiebreak", "polars_sink")
TIME_BIN = "/usr/bin/time"
#: Exit status of a worker whose contender cannot run here (e.g. merge not implemented).
UNAVAILABLE = 3
#: Constant string columns left out of the row-by-row comparison (their presence is checked).
CONSTANT_COLUMNS = ("exchange", "symbol", "stream")
DUCKDB_MEMORY_LIMIT = "2GB"


# --------------------------------------------------------------------------- workers
# Each runs in a fresh process: python bench/run_merge.py --worker NAME ...


def _worker_ours(paths: list[str], output: Path, tmp: Path, budget_mib: int) -> dict[str, Any]:
    try:
        from compressor.merge import MergeSettings, merge_files
    except ImportError as exc:
        raise _Unavailable(f"compressor.merge not importable: {exc}") from exc
    settings = MergeSettings(memory_budget=budget_mib * 2**20)
    try:
        result = merge_files([Path(p) for p in paths], output, tmp_dir=tmp, settings=settings)
    except NotImplementedError as exc:
        raise _Unavailable("merge_files is not implemented yet") from exc
    figures = asdict(result) if hasattr(result, "__dataclass_fields__") else {}
    figures.pop("columns", None)
    return figures


def _worker_ours_quality(
    paths: list[str], output: Path, tmp: Path, budget_mib: int
) -> dict[str, Any]:
    """Our merge with the quality pass hooked in, as the job runs it (publish._merge)."""
    from compressor.merge import MergeSettings, merge_files
    from compressor.quality.metrics import QualityAccumulator

    where = re.search(r"stream=([^/]+)/.*date=(\d{8})", paths[0]) if paths else None
    if where is None:
        raise _Unavailable("the inputs are not under .../stream=S/.../date=YYYYMMDD/")
    quality = QualityAccumulator(where.group(2), output, where.group(1))
    settings = MergeSettings(memory_budget=budget_mib * 2**20)
    result = merge_files(
        [Path(p) for p in paths], output, tmp_dir=tmp, settings=settings, on_batch=quality
    )
    figures = asdict(result)
    figures.pop("columns", None)
    figures["quality"] = quality.result(result).compact()
    return figures


def _polars_finish(df: Any, output: Path) -> dict[str, Any]:
    import polars as pl

    df = df.with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).alias("seq"))
    rest = [c for c in df.columns if c not in ("ts_event", "seq")]
    df.select(["ts_event", "seq", *rest]).write_parquet(output, compression="zstd")
    return {"rows": df.height}


def _worker_polars(paths: list[str], output: Path, tmp: Path, budget_mib: int) -> dict[str, Any]:
    import polars as pl

    # The scan concatenates the files in the order given (key order), rows in file order,
    # so a stable sort on ts_event alone gives the (file index, row index) tie-break. An
    # explicit tie-break column costs Polars ~20% wall and ~150 MB (`polars_tiebreak`).
    df = pl.scan_parquet(paths).sort("ts_event", maintain_order=True).collect()
    return _polars_finish(df, output)


def _worker_polars_tiebreak(
    paths: list[str], output: Path, tmp: Path, budget_mib: int
) -> dict[str, Any]:
    import polars as pl

    df = (
        pl.scan_parquet(paths)
        .with_row_index("__tiebreak")  # global row index = (file index, row index)
        .sort(["ts_event", "__tiebreak"], maintain_order=True)
        .drop("__tiebreak")
        .collect()
    )
    return _polars_finish(df, output)


def _worker_polars_sink(
    paths: list[str], output: Path, tmp: Path, budget_mib: int
) -> dict[str, Any]:
    import polars as pl

    lf = pl.scan_parquet(paths).sort("ts_event", maintain_order=True).with_row_index("seq")
    columns = lf.collect_schema().names()
    rest = [c for c in columns if c not in ("ts_event", "seq")]
    lf.select(["ts_event", pl.col("seq").cast(pl.Int64), *rest]).sink_parquet(
        output, compression="zstd"
    )
    return {}


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _worker_duckdb(paths: list[str], output: Path, tmp: Path, budget_mib: int) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit={_sql_string(DUCKDB_MEMORY_LIMIT)}")
    con.execute(f"SET temp_directory={_sql_string(str(tmp))}")
    files = pa.table(
        {"filename": pa.array(paths, pa.string()), "fidx": pa.array(range(len(paths)), pa.int32())}
    )
    con.register("bench_files", files)
    listing = "[" + ", ".join(_sql_string(p) for p in paths) + "]"
    con.execute(f"""
        COPY (
            SELECT ts_event,
                   (row_number() OVER (ORDER BY ts_event, f.fidx, r.file_row_number) - 1)::BIGINT
                       AS seq,
                   r.* EXCLUDE (ts_event, filename, file_row_number)
            FROM read_parquet({listing}, filename = true, file_row_number = true,
                              union_by_name = true, hive_partitioning = false) AS r
            JOIN bench_files AS f USING (filename)
            ORDER BY seq
        ) TO {_sql_string(str(output))} (FORMAT parquet, COMPRESSION zstd)
    """)
    return {}


WORKERS = {
    "ours": _worker_ours,
    "ours_quality": _worker_ours_quality,
    "polars": _worker_polars,
    "polars_tiebreak": _worker_polars_tiebreak,
    "polars_sink": _worker_polars_sink,
    "duckdb": _worker_duckdb,
}


class _Unavailable(Exception):
    pass


def worker_main(args: argparse.Namespace) -> int:
    paths = Path(args.list).read_text().splitlines()
    started = time.perf_counter()
    try:
        extra = WORKERS[args.worker](paths, Path(args.output), Path(args.tmp), args.budget)
    except _Unavailable as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return UNAVAILABLE
    op_seconds = time.perf_counter() - started
    print(json.dumps({"op_seconds": op_seconds, "extra": extra}, default=str))
    return 0


# --------------------------------------------------------------------------- timing


@dataclass
class Run:
    rep: int
    status: str  # ok | failed | unavailable
    wall_s: float | None = None
    op_s: float | None = None
    peak_rss_mb: float | None = None
    output_bytes: int | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def parse_time_v(text: str) -> dict[str, float]:
    """wall, user, sys seconds and peak RSS MB ("wall", "user", "sys", "rss") from
    `/usr/bin/time -v` output; a figure it does not show is left out."""
    out: dict[str, float] = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        parts = [float(x) for x in m.group(1).split(":")]
        out["wall"] = sum(v * 60**k for k, v in enumerate(reversed(parts)))
    for key, label in (("user", "User time"), ("sys", "System time")):
        m = re.search(label + r" \(seconds\): ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["rss"] = int(m.group(1)) / 1024
    return out


def _error_line(stderr: bytes, returncode: int) -> str:
    """The exception line of a worker's traceback (DuckDB adds query context after it)."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line):
            return line[:400]
    return (" | ".join(lines[-3:]) or f"exit status {returncode}")[:400]


def run_once(
    contender: str, rep: int, list_file: Path, output: Path, tmp: Path, budget: int, timeout: float
) -> Run:
    output.unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    time_file = output.with_suffix(".time")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", contender]
    cmd += ["--list", str(list_file), "--output", str(output), "--tmp", str(tmp)]
    cmd += ["--budget", str(budget)]
    use_time = os.access(TIME_BIN, os.X_OK)
    if use_time:
        cmd = [TIME_BIN, "-v", "-o", str(time_file), *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Run(rep, "failed", message=f"timed out after {timeout:.0f} s")
    wall = time.perf_counter() - started
    rss = None
    if use_time and time_file.exists():
        figures = parse_time_v(time_file.read_text())
        wall, rss = figures.get("wall", wall), figures.get("rss")
        time_file.unlink()
    lines = stdout.decode(errors="replace").strip().splitlines()
    report: dict[str, Any] = {}
    if lines:
        try:
            report = json.loads(lines[-1])
        except json.JSONDecodeError:
            report = {}
    if proc.returncode == UNAVAILABLE and "unavailable" in report:
        return Run(rep, "unavailable", message=report["unavailable"])
    if proc.returncode != 0:
        return Run(rep, "failed", wall, None, rss, message=_error_line(stderr, proc.returncode))
    from compressor.meta import file_sha256  # here: the measured workers never import it

    return Run(
        rep,
        "ok",
        wall_s=wall,
        op_s=report.get("op_seconds"),
        peak_rss_mb=rss,
        output_bytes=output.stat().st_size if output.exists() else None,
        sha256=file_sha256(output) if output.exists() else None,
        extra=report.get("extra") or {},
    )


# --------------------------------------------------------------------------- verification


class _Cursor:
    """Reads a Parquet file's columns in windows of exactly n rows (fewer at the end)."""

    def __init__(self, path: Path, columns: list[str], batch_rows: int = 262_144) -> None:
        self._it = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
        self._batches: list[pa.RecordBatch] = []
        self._rows = 0

    def take(self, n: int) -> pa.Table | None:
        while self._rows < n:
            batch = next(self._it, None)
            if batch is None:
                break
            self._batches.append(batch)
            self._rows += batch.num_rows
        if self._rows == 0:
            return None
        table = pa.Table.from_batches(self._batches)
        rest = table.slice(n)
        self._batches, self._rows = rest.to_batches(), rest.num_rows
        return table.slice(0, n)


@dataclass
class Check:
    contender: str
    rows: int = 0
    sorted_ok: bool = True
    seq_ok: bool = True
    rows_ok: bool = True
    layout_ok: bool = True
    identical_to: str | None = None
    mismatched_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.sorted_ok
            and self.seq_ok
            and self.rows_ok
            and self.layout_ok
            and self.mismatched_rows == 0
            and not self.problems
        )


def _mismatch_mask(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    ne = pc.fill_null(pc.not_equal(a, b), False)
    return pc.or_(ne, pc.xor(pc.is_null(a), pc.is_null(b)))


def verify(
    name: str,
    path: Path,
    expected_rows: int,
    reference: tuple[str, Path] | None,
    window: int = 1_048_576,
) -> Check:
    """Stream `path` (and the reference) once: sortedness, seq, row count, equality."""
    check = Check(name)
    schema = pq.read_schema(path)
    names = schema.names
    if names[:2] != ["ts_event", "seq"]:
        check.layout_ok = False
        check.problems.append(f"columns start {names[:2]}, not ['ts_event', 'seq']")
    if "ts_event" not in names or "seq" not in names:
        return check
    columns = [c for c in names if c not in CONSTANT_COLUMNS]
    ref_cursor = None
    if reference is not None:
        ref_name, ref_path = reference
        ref_names = pq.read_schema(ref_path).names
        if set(ref_names) != set(names):
            check.problems.append(
                f"columns differ from {ref_name}: missing {sorted(set(ref_names) - set(names))}, "
                f"extra {sorted(set(names) - set(ref_names))}"
            )
        columns = [c for c in columns if c in ref_names]
        ref_cursor = _Cursor(ref_path, columns)
    cursor = _Cursor(path, columns)
    last_ts: int | None = None
    offset = 0
    while (table := cursor.take(window)) is not None:
        n = table.num_rows
        ts = table["ts_event"].combine_chunks()
        seq = table["seq"].combine_chunks()
        if ts.null_count or (last_ts is not None and ts[0].as_py() < last_ts):
            check.sorted_ok = False
        if n > 1 and pc.min(pc.pairwise_diff(ts)).as_py() < 0:
            check.sorted_ok = False
        if seq.null_count or seq[0].as_py() != offset:
            check.seq_ok = False
        if n > 1:
            diffs = pc.min_max(pc.pairwise_diff(seq))
            if diffs["min"].as_py() != 1 or diffs["max"].as_py() != 1:
                check.seq_ok = False
        last_ts = ts[-1].as_py()
        if ref_cursor is not None:
            ref = ref_cursor.take(n)
            if ref is None or ref.num_rows != n:
                check.problems.append(f"has more rows than {reference[0]}")  # type: ignore[index]
                ref_cursor = None
            else:
                _compare(check, ref, table, offset)
        offset += n
    if ref_cursor is not None and ref_cursor.take(1) is not None:
        check.problems.append(f"has fewer rows than {reference[0]}")  # type: ignore[index]
    check.rows = offset
    check.rows_ok = offset == expected_rows
    if reference is not None and check.mismatched_rows == 0 and not check.problems:
        check.identical_to = reference[0]
    return check


def _compare(check: Check, ref: pa.Table, got: pa.Table, offset: int) -> None:
    any_mask = None
    for column in ref.column_names:
        a, b = ref[column], got[column]
        if a.type != b.type:
            try:
                b = b.cast(a.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                check.problems.append(f"column {column}: type {got[column].type} vs {a.type}")
                continue
        if a.equals(b):
            continue
        mask = _mismatch_mask(a, b)
        any_mask = mask if any_mask is None else pc.or_(any_mask, mask)
        if len(check.problems) < 5:
            row = pc.index(mask, True).as_py()
            check.problems.append(
                f"row {offset + row} column {column}: {b[row].as_py()!r} "
                f"(reference {a[row].as_py()!r})"
            )
    if any_mask is not None:
        check.mismatched_rows += pc.sum(any_mask).as_py() or 0


# --------------------------------------------------------------------------- driver


def list_inputs(directory: Path) -> list[Path]:
    """The partition's data objects in key order (strays like ._* and .tmp left out)."""
    from compressor.layout import is_raw_data_key

    return sorted(
        (p for p in directory.iterdir() if p.is_file() and is_raw_data_key(p.name)),
        key=lambda p: p.name.encode(),
    )


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("partition", type=Path, nargs="?", help="raw partition directory")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per contender (3)")
    ap.add_argument("--budget", type=int, default=512, help="our merge's memory budget, MiB")
    ap.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma list from {CONTENDERS + EXTRA_CONTENDERS} (default: ours,polars,duckdb)",
    )
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep every output and the work dir")
    ap.add_argument("--work", type=Path, help="directory for outputs and spills (a new temp dir)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    # worker mode (internal)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--list", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.partition is None or not args.partition.is_dir():
        ap.error("give a raw partition directory (see bench/generate.py)")
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(WORKERS)
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}")
    if not os.access(TIME_BIN, os.X_OK):
        print(
            f"note: {TIME_BIN} missing (apt-get install -y time); peak RSS not measured",
            file=sys.stderr,
        )

    inputs = list_inputs(args.partition)
    if not inputs:
        print(f"error: no *.parquet objects in {args.partition}", file=sys.stderr)
        return 2
    expected_rows = 0
    unreadable = []
    for p in inputs:
        try:
            expected_rows += pq.read_metadata(p).num_rows
        except Exception:
            unreadable.append(p.name)
    input_bytes = sum(p.stat().st_size for p in inputs)
    print(f"partition {args.partition}")
    print(
        f"  {len(inputs):,} files, {expected_rows:,} rows, {input_bytes / 2**20:.1f} MiB; "
        f"budget {args.budget} MiB; {args.reps} reps; {os.cpu_count()} CPUs"
    )
    if unreadable:
        print(f"  warning: {len(unreadable)} unreadable footers (e.g. {unreadable[0]})")

    work = Path(tempfile.mkdtemp(prefix="qlc-bench-", dir=args.work))
    list_file = work / "inputs.txt"
    list_file.write_text("".join(f"{p.resolve()}\n" for p in inputs))
    runs: dict[str, list[Run]] = {c: [] for c in contenders}
    outputs: dict[str, Path] = {}
    try:
        for rep in range(args.reps):
            shift = rep % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                if any(r.status == "unavailable" for r in runs[contender]):
                    continue
                output = work / f"{contender}-{rep}.parquet"
                run = run_once(
                    contender,
                    rep,
                    list_file,
                    output,
                    work / f"tmp-{contender}",
                    args.budget,
                    args.timeout,
                )
                runs[contender].append(run)
                print(
                    f"  rep {rep} {contender:<15} {run.status:<11} wall {_fmt(run.wall_s)} s  "
                    f"rss {_fmt(run.peak_rss_mb, '.0f')} MB  {run.message}",
                    flush=True,
                )
                if run.status == "ok":
                    previous = outputs.get(contender)
                    if previous is not None and not args.keep:
                        previous.unlink(missing_ok=True)
                    outputs[contender] = output
            for contender in contenders:
                shutil.rmtree(work / f"tmp-{contender}", ignore_errors=True)

        checks: dict[str, Check] = {}
        verify_started = time.perf_counter()
        if not args.no_verify and outputs:
            ref_name = "polars" if "polars" in outputs else next(iter(outputs))
            checks[ref_name] = verify(ref_name, outputs[ref_name], expected_rows, None)
            for name, path in outputs.items():
                if name != ref_name:
                    checks[name] = verify(name, path, expected_rows, (ref_name, outputs[ref_name]))

        if checks:
            print(f"  outputs checked in {time.perf_counter() - verify_started:.1f} s")
        summary = _summarise(contenders, runs, checks)
        _print_table(summary, args.reps)
        if args.json:
            doc = {
                "partition": str(args.partition),
                "files": len(inputs),
                "rows": expected_rows,
                "input_bytes": input_bytes,
                "budget_mib": args.budget,
                "reps": args.reps,
                "cpus": os.cpu_count(),
                "contenders": summary,
            }
            args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
            print(f"results written to {args.json}")
        failed = any(
            (s["checked"] is not None and not s["checked"]["ok"]) or s["status"] == "failed"
            for s in summary.values()
        )
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _summarise(
    contenders: list[str], runs: dict[str, list[Run]], checks: dict[str, Check]
) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in contenders:
        ok = [r for r in runs[name] if r.status == "ok"]
        status = (
            "ok"
            if ok and len(ok) == len(runs[name])
            else (runs[name][-1].status if runs[name] else "not run")
        )
        if ok and len(ok) != len(runs[name]):
            status = "partly failed"
        hashes = {r.sha256 for r in ok}
        check = checks.get(name)
        summary[name] = {
            "status": status,
            "message": next((r.message for r in runs[name] if r.message), ""),
            "median_wall_s": _median([r.wall_s for r in ok]),
            "median_op_s": _median([r.op_s for r in ok]),
            "median_peak_rss_mb": _median([r.peak_rss_mb for r in ok]),
            "output_bytes": ok[-1].output_bytes if ok else None,
            "same_bytes_every_run": len(hashes) == 1 if ok else None,
            "runs": [asdict(r) for r in runs[name]],
            "checked": None if check is None else {**asdict(check), "ok": check.ok},
        }
    base = summary.get("polars")
    for s in summary.values():
        for key, ratio in (
            ("median_wall_s", "wall_vs_polars"),
            ("median_peak_rss_mb", "rss_vs_polars"),
        ):
            if base and base[key] and s[key]:
                s[ratio] = s[key] / base[key]
            else:
                s[ratio] = None
    return summary


def _print_table(summary: dict[str, dict[str, Any]], reps: int) -> None:
    print()
    head = (
        f"{'contender':<16}{'status':<13}{'wall s':>8}{'op s':>8}{'RSS MB':>9}"
        f"{'wall/pl':>9}{'RSS/pl':>8}{'out MiB':>9}  runs (wall s / RSS MB)"
    )
    print(head)
    print("-" * len(head))
    for name, s in summary.items():
        runs = ", ".join(
            f"{_fmt(r['wall_s'])}/{_fmt(r['peak_rss_mb'], '.0f')}"
            for r in s["runs"]
            if r["status"] == "ok"
        )
        out = None if s["output_bytes"] is None else s["output_bytes"] / 2**20
        print(
            f"{name:<16}{s['status']:<13}{_fmt(s['median_wall_s']):>8}{_fmt(s['median_op_s']):>8}"
            f"{_fmt(s['median_peak_rss_mb'], '.0f'):>9}{_fmt(s['wall_vs_polars']):>9}"
            f"{_fmt(s['rss_vs_polars']):>8}{_fmt(out, '.1f'):>9}  {runs}"
        )
    print()
    for name, s in summary.items():
        if s["status"] in ("unavailable", "failed", "partly failed"):
            print(f"{name}: {s['status']}: {s['message']}")
            continue
        c = s["checked"]
        if c is None:
            continue
        verdict = []
        verdict.append(f"{c['rows']:,} rows" + ("" if c["rows_ok"] else " (WRONG COUNT)"))
        verdict.append("sorted" if c["sorted_ok"] else "NOT SORTED")
        verdict.append("seq 0..N-1" if c["seq_ok"] else "BAD seq")
        if c["identical_to"]:
            verdict.append(f"same rows and order as {c['identical_to']}")
        elif c["mismatched_rows"]:
            verdict.append(f"{c['mismatched_rows']:,} rows differ")
        if s["same_bytes_every_run"] is not None and reps > 1:
            verdict.append(
                "same bytes every run" if s["same_bytes_every_run"] else "bytes differ between runs"
            )
        print(f"{name}: {'OK' if c['ok'] else 'MISMATCH'}: " + ", ".join(verdict))
        for problem in c["problems"][:5]:
            print(f"    {problem}")


if __name__ == "__main__":
    sys.exit(main())
