#!/usr/bin/env python3
"""Time the whole job (`run.py`) against Polars' merge of the same partition.

    python bench/run_job.py local PARTITION_DIR [--reps 3]      # local lake
    python bench/run_job.py s3 PARTITION_DIR [--reps 3]         # the day served by moto
    python bench/run_job.py day --out DIR [--scale 0.1] [--workers 1,2,4] [--reps 3]

Every run is its own process under `/usr/bin/time -v`: wall, user+sys CPU and peak
RSS of the whole process (interpreter, imports, planning, state and leases included
for the job). Contenders alternate rep by rep (the order rotates), so the ratios are
measured under the same load. See bench/README.md "Whole job".

- `job`: `run.py --mode backfill --date-from D --today D+1` of the partition's day into
  a fresh compact directory (local) or a fresh compact bucket (s3, day), with its own
  `--tmp-dir` and `--summary-json` (stepSeconds: list/fetch/merge/verify/upload).
- `polars`, `ours`: bench/run_merge.py's contenders, run by its own worker
  (`run_merge.py --worker NAME`), on the same local files.

`local` and `s3` check the last rep's data.parquet against Polars' row by row
(run_merge.verify). `s3` starts a moto server (tests/support/s3server.py) in its own process,
uploads the partition to a raw bucket, and reports the job's client CPU (run.py only)
minus our merge-only CPU (`ours`), per raw object; with the `job_local` contender
(the same job on the local lake, in the same reps) also the job's S3 path alone:
(job CPU - job_local CPU) per raw object. Every rep's line and every ratio say what
the rest of the machine did meanwhile (MachineLoad: other processes' CPU and the
hypervisor's steal, in cores). `day` writes a collector-shaped day
(140 partitions, file counts scaled by --scale), serves it from moto, runs the job with
each --workers value, and merges every partition once per rep in one process
(run_merge's `ours` worker function, timed around each call) for the merge-only sum.
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
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIME_BIN = "/usr/bin/time"
RUN_MERGE = ROOT / "bench" / "run_merge.py"
RUN_PY = ROOT / "run.py"
STEPS = ("list", "fetch", "merge", "verify", "upload")

# The collector-shaped day (`day`): 3 exchanges x 5 streams (binance has no
# open_interest) x 10 symbols = 140 partitions, as the collector writes today.
DAY_SYMBOLS = ("btcusdt", "ethusdt", "solusdt", "xrpusdt", "dogeusdt",
               "bnbusdt", "adausdt", "avaxusdt", "linkusdt", "ltcusdt")
#: Real files per partition-day for the busiest and the quietest symbol (linear between),
#: and rows per file. Busy streams flush every ~1,000 events, quiet ones every 180 s.
DAY_SHAPE = {
    "bbo": (10_000, 3_000, 1_100),
    "trade": (7_000, 3_000, 1_000),
    "mark_price": (1_000, 480, 180),
    "funding": (480, 480, 60),
    "open_interest": (480, 480, 60),
}


# --------------------------------------------------------------------------- one timed process


@dataclass
class Sample:
    contender: str
    rep: int
    status: str  # ok | failed
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    rss_mb: float | None = None
    op_s: float | None = None
    op_cpu_s: float | None = None
    steps: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def cpu_s(self) -> float | None:
        if self.user_s is None or self.sys_s is None:
            return None
        return self.user_s + self.sys_s


def phases(sample: Sample) -> dict[str, float]:
    """A job's wall split by its log: `startup` (interpreter, imports, argv: wall minus
    the run's own durationSeconds), `plan` (to the "N of M partitions to compact" line),
    `partitions` (to the last "published" line), `tail` (state, readiness, exit)."""
    out: dict[str, float] = {}
    wall, duration = sample.wall_s, sample.summary.get("durationSeconds")
    planned, last = sample.extra.get("t_planned"), sample.extra.get("t_last_published")
    if wall is None or duration is None or planned is None or last is None:
        return out
    out["startup"] = max(0.0, wall - duration)
    out["plan"] = max(0.0, planned - out["startup"])
    out["partitions"] = last - planned
    out["tail"] = wall - last
    return out


PHASES = ("startup", "plan", "partitions", "tail")


#: Where every measured process keeps its bytecode (None: the environment's setting).
PYCACHE: Path | None = None


def with_pycache(env: dict[str, str]) -> dict[str, str]:
    """Bytecode cached outside the tree, as an installed package has it: with
    PYTHONDONTWRITEBYTECODE set (as on the dev VMs) every run would compile the
    project's modules again (~0.4-0.8 s of a short job)."""
    if PYCACHE is None:
        return env
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


class TreeMemory:
    """Peak memory of a process and all its descendants together, sampled every 50 ms.

    /usr/bin/time's "maximum resident set size" is that of the largest single process,
    so a job that merges in slice processes would look smaller than it is. This sums,
    over the tree: RSS (counts shared library pages once per process, an upper bound;
    every 50 ms) and PSS (shares them out: what the tree really holds; every 0.5 s, so
    a short peak can be missed: RSS is the safe figure).
    """

    def __init__(self, root: int, pss: bool) -> None:
        self.root = root
        self._pss = pss
        self.rss_mb = 0.0
        self.pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # RSS from statm every 50 ms; PSS from smaps_rollup every 0.5 s and only for the
        # job (pss=True): reading it walks the whole address space under the process's
        # mmap lock, which slowed a 7 GB Polars process by a quarter even at 0.5 s
        ticks = 0
        while not self._stop.wait(0.05):
            tree = self._tree()
            self.rss_mb = max(self.rss_mb, sum(_statm_rss_kb(pid) for pid in tree) / 1024)
            ticks += 1
            if self._pss and ticks % 10 == 0:
                pss = sum(_kb(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in tree)
                self.pss_mb = max(self.pss_mb, pss / 1024)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(
                    int(entry))
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree


def _statm_rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * (
            os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def _kb(path: str, field_name: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field_name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MachineLoad:
    """What the rest of the machine did while one contender ran: the CPU it used, in
    cores (busy CPU time from /proc/stat less the contender's own tree and this bench
    process), and the time the hypervisor gave other guests (`steal`, in cores).

    On a shared 2-core VM these two explain most of the run-to-run spread: a contender
    that uses both cores (Polars, our slices) loses most when another process takes
    one, so only ratios of runs under the same load compare (bench/README.md)."""

    def __init__(self) -> None:
        self._busy, self._steal = _proc_stat()
        self._own = _own_cpu()
        self._started = time.perf_counter()

    def finish(self, tree_cpu_s: float | None) -> dict[str, float]:
        busy, steal = _proc_stat()
        wall = max(time.perf_counter() - self._started, 1e-6)
        others = busy - self._busy - (tree_cpu_s or 0.0) - (_own_cpu() - self._own)
        return {"other_cores": round(max(0.0, others) / wall, 2),
                "steal_cores": round((steal - self._steal) / wall, 2)}


def _proc_stat() -> tuple[float, float]:
    """Busy and steal CPU seconds of the whole machine since boot (/proc/stat)."""
    hz = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def timed(name: str, rep: int, cmd: list[str], env: dict[str, str], cwd: Path,
          timeout: float, pss: bool = False) -> tuple[Sample, str, str]:
    """Run `cmd` under /usr/bin/time -v; the sample, stdout and stderr."""
    from bench.run_merge import parse_time_v
    env = with_pycache(env)
    time_file = cwd / f".time-{name}-{rep}-{uuid.uuid4().hex[:6]}"
    full = [TIME_BIN, "-v", "-o", str(time_file), *cmd]
    started = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd)
    # stderr lines stamped as they arrive: where a job's wall goes (plan, partitions, tail)
    stamped: list[tuple[float, str]] = []
    chunks: list[bytes] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            stamped.append((time.perf_counter() - started, raw.decode(errors="replace")))

    def read_out() -> None:
        assert proc.stdout is not None
        chunks.append(proc.stdout.read())

    readers = [threading.Thread(target=read_err, daemon=True),
               threading.Thread(target=read_out, daemon=True)]
    for t in readers:
        t.start()
    memory = TreeMemory(proc.pid, pss)
    load = MachineLoad()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return Sample(name, rep, "failed", message=f"timed out after {timeout:.0f} s"), "", ""
    finally:
        memory.stop()
    wall = time.perf_counter() - started
    for t in readers:
        t.join()
    figures = parse_time_v(time_file.read_text()) if time_file.exists() else {}
    time_file.unlink(missing_ok=True)
    out, err = b"".join(chunks).decode(errors="replace"), "".join(line for _, line in stamped)
    sample = Sample(name, rep, "ok" if proc.returncode == 0 else "failed",
                    wall_s=figures.get("wall", wall), user_s=figures.get("user"),
                    sys_s=figures.get("sys"), rss_mb=figures.get("rss"))
    sample.extra.update(load.finish(sample.cpu_s))
    # the tree less /usr/bin/time itself (a few hundred KB)
    sample.extra["tree_rss_mb"] = round(memory.rss_mb, 1)
    if pss:
        sample.extra["tree_pss_mb"] = round(memory.pss_mb, 1)
    planned = [t for t, line in stamped if "partitions to compact" in line]
    published = [t for t, line in stamped if ": published " in line]
    if planned:
        sample.extra["t_planned"] = planned[0]
    if published:
        sample.extra["t_last_published"] = published[-1]
    if proc.returncode != 0:
        tail = [ln for ln in err.splitlines() if ln.strip()][-3:]
        sample.message = f"exit {proc.returncode}: " + " | ".join(tail)[:500]
    return sample, out, err


def check_tools() -> None:
    if not os.access(TIME_BIN, os.X_OK):
        sys.exit(f"error: {TIME_BIN} missing (apt-get install -y time)")


# --------------------------------------------------------------------------- contenders


@dataclass
class Case:
    """What every contender of one bench works on."""

    work: Path
    day: str
    lake: Path  # local raw lake root
    partitions: list[Path]  # raw partition dirs (local)
    objects: int  # raw data objects in them
    rows: int
    input_bytes: int
    timeout: float
    workers: int | None
    memory_budget: str | None
    merge_budget_mib: int
    s3: S3World | None = None


def next_day(day: str) -> str:
    d = date(int(day[:4]), int(day[4:6]), int(day[6:]))
    return (d + timedelta(days=1)).strftime("%Y%m%d")


def job_once(case: Case, rep: int, workers: int | None, name: str,
             keep_output_of: Path | None = None) -> Sample:
    """One run.py backfill of the case's day into a fresh compact store."""
    run_dir = case.work / f"{name}-{rep}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "tmp").mkdir(parents=True)
    (run_dir / "cwd").mkdir()
    summary_path = run_dir / "summary.json"
    args = ["--mode", "backfill", "--date-from", case.day, "--today", next_day(case.day),
            "--tmp-dir", str(run_dir / "tmp"), "--summary-json", str(summary_path),
            "--progress", "off"]
    if workers is not None:
        args += ["--workers", str(workers)]
    if case.memory_budget is not None:
        args += ["--memory-budget", case.memory_budget]
    bucket: str | None = None
    if case.s3 is None or name == "job_local":  # job_local: the same job on the local lake
        compact = run_dir / "compact"
        compact.mkdir()
        args += ["--raw", str(case.lake), "--compact", str(compact)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["PYTHONPATH"] = str(ROOT)
    else:
        bucket = case.s3.new_bucket(f"job{rep}")
        args += ["--raw", f"s3://{case.s3.raw_bucket}", "--compact", f"s3://{bucket}"]
        from tests.support.s3server import cli_environment

        env = cli_environment(case.s3.endpoint, case.s3.raw_bucket, bucket)
    sample, out, err = timed(name, rep, [sys.executable, str(RUN_PY), *args], env,
                             run_dir / "cwd", case.timeout, pss=True)
    (run_dir / "stderr.log").write_text(err)
    if summary_path.exists():
        doc = json.loads(summary_path.read_text())
        sample.summary = {k: doc.get(k) for k in (
            "result", "durationSeconds", "rows", "bytesIn", "bytesOut", "partitions",
            "totalConsideredFiles", "peakRssBytes")}
        sample.steps = doc.get("stepSeconds") or {}
        if sample.status == "ok" and doc.get("result") != "success":
            sample.status, sample.message = "failed", f"summary result {doc.get('result')}"
        done = (doc.get("partitions") or {}).get("success", 0)
        if sample.status == "ok" and done != len(case.partitions):
            sample.status = "failed"
            sample.message = f"{done} partitions compacted, {len(case.partitions)} expected"
        if sample.status == "ok" and doc.get("rows") != case.rows:
            sample.status, sample.message = "failed", f"rows {doc.get('rows')} != {case.rows}"
    elif sample.status == "ok":
        sample.status, sample.message = "failed", "no summary JSON"
    m = re.search(r"(\d+) workers? \((\d+) cores?, memory budget ([^:]+): ([^ ]+ \w+) each", err)
    if m:
        sample.extra["workers"] = int(m.group(1))
        sample.extra["worker_budget"] = m.group(4)
    if keep_output_of is not None and sample.status == "ok":
        prefix = keep_output_of.relative_to(case.lake).as_posix() + "/data.parquet"
        target = case.work / f"{name}-last.parquet"
        if bucket is None:
            shutil.copyfile(run_dir / "compact" / prefix, target)
        else:
            assert case.s3 is not None
            case.s3.client.download_file(bucket, prefix, str(target))
    if bucket is not None:
        assert case.s3 is not None
        case.s3.drop_bucket(bucket)
    if sample.status == "ok":
        shutil.rmtree(run_dir, ignore_errors=True)
    return sample


def merge_once(case: Case, rep: int, contender: str, keep: bool) -> Sample:
    """bench/run_merge.py's worker for `contender` on the (single) partition's files."""
    from bench.run_merge import list_inputs

    list_file = case.work / "inputs.txt"
    if not list_file.exists():
        list_file.write_text("".join(f"{p.resolve()}\n" for p in list_inputs(case.partitions[0])))
    output = case.work / f"{contender}-{rep}.parquet"
    tmp = case.work / f"tmp-{contender}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cmd = [sys.executable, str(RUN_MERGE), "--worker", contender, "--list", str(list_file),
           "--output", str(output), "--tmp", str(tmp), "--budget", str(case.merge_budget_mib)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sample, out, err = timed(contender, rep, cmd, env, case.work, case.timeout)
    lines = out.strip().splitlines()
    if lines:
        try:
            sample.op_s = json.loads(lines[-1]).get("op_seconds")
        except json.JSONDecodeError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
    if keep and sample.status == "ok":
        output.replace(case.work / f"{contender}-last.parquet")
    else:
        output.unlink(missing_ok=True)
    return sample


def merge_all_worker(args: argparse.Namespace) -> int:
    """(worker) run_merge's `ours` on every partition listed, one after another, timed
    around each call: wall and process CPU per partition, as JSON on stdout."""
    from bench.run_merge import _worker_ours, list_inputs

    figures = []
    for n, line in enumerate(Path(args.merge_all).read_text().splitlines()):
        directory = Path(line)
        paths = [str(p) for p in list_inputs(directory)]
        output = Path(args.tmp) / "out.parquet"
        tmp = Path(args.tmp) / f"spill-{n}"
        tmp.mkdir(parents=True, exist_ok=True)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        _worker_ours(paths, output, tmp, args.budget)
        figures.append({"partition": line, "files": len(paths),
                        "op_s": time.perf_counter() - wall0,
                        "op_cpu_s": time.process_time() - cpu0})
        output.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))
    return 0


def merge_all_once(case: Case, rep: int) -> Sample:
    """Merge-only of every partition of the case, one process (see merge_all_worker)."""
    list_file = case.work / "partitions.txt"
    list_file.write_text("".join(f"{p.resolve()}\n" for p in case.partitions))
    tmp = case.work / "tmp-merge-all"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--merge-all", str(list_file),
           "--tmp", str(tmp), "--budget", str(case.merge_budget_mib)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sample, out, err = timed("merge_sum", rep, cmd, env, case.work, case.timeout)
    shutil.rmtree(tmp, ignore_errors=True)
    if sample.status == "ok":
        per = json.loads(out.strip().splitlines()[-1])
        sample.op_s = sum(f["op_s"] for f in per)
        sample.op_cpu_s = sum(f["op_cpu_s"] for f in per)
        sample.extra["partitions"] = len(per)
    else:
        sample.message += " " + err[-500:]
    return sample


# --------------------------------------------------------------------------- S3 (moto)


class S3World:
    """A moto server (its own process), a raw bucket holding the lake, fresh compact buckets."""

    def __init__(self, endpoint: str) -> None:
        import boto3
        from botocore.config import Config

        from tests.support.s3server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY

        self.endpoint = endpoint
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=TEST_ACCESS_KEY,
            aws_secret_access_key=TEST_SECRET_KEY, region_name=TEST_REGION,
            config=Config(max_pool_connections=32, retries={"max_attempts": 10}))
        self.raw_bucket = "qlc-bench-raw"
        self.client.create_bucket(Bucket=self.raw_bucket)

    def upload_lake(self, lake: Path, prefixes: list[Path]) -> int:
        """Put every file under each of `prefixes` (dirs under `lake`) at its relative key."""
        files = [p for d in prefixes for p in sorted(d.rglob("*")) if p.is_file()]

        def put(path: Path) -> None:
            self.client.put_object(Bucket=self.raw_bucket, Key=path.relative_to(lake).as_posix(),
                                   Body=path.read_bytes())

        with ThreadPoolExecutor(16) as pool:
            for _ in pool.map(put, files):
                pass
        return len(files)

    def new_bucket(self, label: str) -> str:
        name = f"qlc-bench-{label}-{uuid.uuid4().hex[:8]}"
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Empty and delete a compact bucket (moto keeps objects in memory)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=name, Delete={"Objects": keys})
        for up in self.client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=name, Key=up["Key"],
                                               UploadId=up["UploadId"])
        self.client.delete_bucket(Bucket=name)


# --------------------------------------------------------------------------- figures


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _span(values: list[float | None], spec: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    return f"{format(statistics.median(vals), spec)} ({format(min(vals), spec)}-" \
           f"{format(max(vals), spec)})"


def summarise(samples: dict[str, list[Sample]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        ok = [s for s in runs if s.status == "ok"]
        out[name] = {
            "runs": len(runs), "ok": len(ok),
            "wall_s": _med([s.wall_s for s in ok]),
            "cpu_s": _med([s.cpu_s for s in ok]),
            "rss_mb": _med([s.rss_mb for s in ok]),
            "op_s": _med([s.op_s for s in ok]),
            "op_cpu_s": _med([s.op_cpu_s for s in ok]),
            "steps": {k: _med([s.steps.get(k) for s in ok]) for k in STEPS} if any(
                s.steps for s in ok) else {},
            "phases": {k: _med([phases(s).get(k) for s in ok]) for k in PHASES} if any(
                phases(s) for s in ok) else {},
            "walls": [s.wall_s for s in ok], "cpus": [s.cpu_s for s in ok],
            "rsss": [s.rss_mb for s in ok],
            "tree_pss_mb": _med([s.extra.get("tree_pss_mb") for s in ok]),
            "tree_rss_mb": _med([s.extra.get("tree_rss_mb") for s in ok]),
            "failures": [s.message for s in runs if s.status != "ok"],
        }
    return out


def print_table(samples: dict[str, list[Sample]]) -> None:
    print()
    print(f"{'contender':<12}{'ok':>4}  {'wall s med (min-max)':<24}{'CPU s med (min-max)':<24}"
          f"{'RSS MB med (min-max)':<24}{'tree PSS MB':<24}steps s (median)")
    for name, runs in samples.items():
        ok = [s for s in runs if s.status == "ok"]
        steps = ""
        if any(s.steps for s in ok):
            steps = " ".join(f"{k} {_med([s.steps.get(k) for s in ok]):.2f}" for k in STEPS)
        if any(s.op_s is not None for s in ok):
            steps += f" op {_med([s.op_s for s in ok]):.2f}"
        if any(phases(s) for s in ok):
            steps += " | " + " ".join(
                f"{k} {_med([phases(s).get(k) for s in ok]):.2f}" for k in PHASES)
        print(f"{name:<12}{len(ok):>2}/{len(runs):<2}{_span([s.wall_s for s in ok], '.2f'):<24}"
              f"{_span([s.cpu_s for s in ok], '.2f'):<24}"
              f"{_span([s.rss_mb for s in ok], '.0f'):<24}"
              f"{_span([s.extra.get('tree_pss_mb') for s in ok], '.0f'):<24}{steps}")
        for s in runs:
            if s.status != "ok":
                print(f"    rep {s.rep}: FAILED {s.message}")


def ratio_line(samples: dict[str, list[Sample]], a: str, b: str) -> dict[str, Any] | None:
    """a/b: ratio of the medians, and the per-rep ratios (same rep, same load)."""
    if a not in samples or b not in samples:
        return None
    A = [s for s in samples[a] if s.status == "ok"]
    B = [s for s in samples[b] if s.status == "ok"]
    if not A or not B:
        return None
    by_rep = {s.rep: s for s in B}
    pairs = [(s, by_rep[s.rep]) for s in A
             if s.rep in by_rep and s.wall_s and by_rep[s.rep].wall_s]
    per = [x.wall_s / y.wall_s for x, y in pairs]  # type: ignore[operator]
    # the rest of the machine during the pair of runs: the larger of the two
    others = [max(x.extra.get("other_cores", 0), y.extra.get("other_cores", 0))
              for x, y in pairs]
    steal = [max(x.extra.get("steal_cores", 0), y.extra.get("steal_cores", 0))
             for x, y in pairs]
    doc = {"wall": _med([s.wall_s for s in A]) / _med([s.wall_s for s in B]),  # type: ignore
           "cpu": _med([s.cpu_s for s in A]) / _med([s.cpu_s for s in B]),  # type: ignore
           "rss": _med([s.rss_mb for s in A]) / _med([s.rss_mb for s in B]),  # type: ignore
           "wall_per_rep": per, "others_cores_per_rep": others, "steal_cores_per_rep": steal,
           "wall_per_rep_spread": (max(per) - min(per)) if per else None}
    reps = ", ".join(f"{r:.2f} (others {o:.2f}, steal {t:.2f})"
                     for r, o, t in zip(per, others, steal, strict=True))
    print(f"{a}/{b}: wall {doc['wall']:.2f}, per rep {reps}; CPU {doc['cpu']:.2f}, "
          f"RSS {doc['rss']:.2f}")
    return doc


def verify_outputs(case: Case, names: list[str]) -> bool:
    """The kept outputs, row by row against Polars' (or ours) (run_merge.verify)."""
    from bench.run_merge import verify

    outputs = {n: case.work / f"{n}-last.parquet" for n in names}
    outputs = {n: p for n, p in outputs.items() if p.exists()}
    ref_name = "polars" if "polars" in outputs else "ours"
    if ref_name not in outputs or len(outputs) < 2:
        print("outputs: not checked (need polars or ours, and another)")
        return True
    ref = verify(ref_name, outputs[ref_name], case.rows, None)
    ok = ref.ok
    for name, path in outputs.items():
        if name == ref_name:
            continue
        check = verify(name, path, case.rows, (ref_name, outputs[ref_name]))
        same = f"same rows and order as {ref_name}" if check.identical_to else "DIFFERS"
        print(f"output {name}: {check.rows:,} rows, "
              f"{'sorted' if check.sorted_ok else 'NOT SORTED'}, {same}"
              + ("" if check.ok else f" {check.problems[:3]}"))
        ok &= check.ok
    return ok


def load_during(sample: Sample) -> str:
    """The rest of the machine during one run (MachineLoad), for the per-rep lines."""
    other, steal = sample.extra.get("other_cores"), sample.extra.get("steal_cores")
    if other is None:
        return "others ?"
    return f"others {other:.2f} cores, steal {steal:.2f}"


def load_line() -> str:
    try:
        return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load ?"


# --------------------------------------------------------------------------- cases


def partition_case(args: argparse.Namespace, work: Path) -> Case:
    from bench.run_merge import list_inputs
    from compressor.layout import PartitionId

    directory = args.partition.resolve()
    rel = "/".join(directory.parts[-4:]) + "/"
    pid = PartitionId.from_prefix(rel)
    inputs = list_inputs(directory)
    rows = sum(pq.read_metadata(p).num_rows for p in inputs)
    return Case(work=work, day=pid.date, lake=directory.parents[3], partitions=[directory],
                objects=len(inputs), rows=rows, input_bytes=sum(p.stat().st_size for p in inputs),
                timeout=args.timeout, workers=args.workers, memory_budget=args.memory_budget,
                merge_budget_mib=merge_budget_mib(args.memory_budget, args.workers))


def merge_budget_mib(memory_budget: str | None, workers: int | None) -> int:
    """The budget one worker of the job gets, for the merge-only contender."""
    from compressor.options import parse_size
    from compressor.runner import default_workers  # the job's own rule (runner.split_budget)

    total = parse_size(memory_budget) if memory_budget else 512 << 20
    n = workers or default_workers(total)
    return max(1, total // n) >> 20


def run_reps(case: Case, contenders: list[str], reps: int, keep_for: Path | None,
             samples: dict[str, list[Sample]]) -> None:
    for rep in range(reps):
        shift = rep % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            last = rep == reps - 1
            if name.startswith("job"):
                workers = case.workers
                if name.startswith("job_w"):
                    workers = int(name[len("job_w"):])
                s = job_once(case, rep, workers, name, keep_for if last else None)
            elif name == "merge_sum":
                s = merge_all_once(case, rep)
            else:
                s = merge_once(case, rep, name, keep=last)
            samples[name].append(s)
            steps = " ".join(f"{k} {s.steps.get(k, 0):.2f}" for k in STEPS) if s.steps else ""
            if phases(s):
                steps += " | " + " ".join(f"{k} {v:.2f}" for k, v in phases(s).items())
            cpu = "-" if s.cpu_s is None else f"{s.cpu_s:.2f}"
            op = "" if s.op_s is None else f" op {s.op_s:.2f} s"
            print(f"  rep {rep} {name:<10} {s.status:<6} wall {s.wall_s or 0:.2f} s  "
                  f"cpu {cpu} s (sys {s.sys_s or 0:.2f})  rss {s.rss_mb or 0:.0f} MB (tree pss "
                  f"{s.extra.get('tree_pss_mb', 0):.0f}, rss {s.extra.get('tree_rss_mb', 0):.0f})"
                  f"{op}  {steps}  [{load_during(s)}; {load_line()}] "
                  f"{s.message}", flush=True)


def main_partition(args: argparse.Namespace, s3: bool) -> int:
    check_tools()
    work = Path(tempfile.mkdtemp(prefix="qlc-job-bench-", dir=args.work))
    try:
        case = partition_case(args, work)
        print(f"partition {case.partitions[0]}")
        print(f"  {case.objects:,} objects, {case.rows:,} rows, "
              f"{case.input_bytes / 2**20:.1f} MiB; {args.reps} reps; {os.cpu_count()} CPUs; "
              f"job --workers {case.workers or 'default'} --memory-budget "
              f"{case.memory_budget or 'default'}; merge-only budget {case.merge_budget_mib} MiB; "
              f"{load_line()}", flush=True)
        contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
        samples: dict[str, list[Sample]] = {c: [] for c in contenders}
        if s3:
            from tests.support.s3server import moto_server

            with moto_server(work / "moto.log") as endpoint:
                case.s3 = S3World(endpoint)
                t0 = time.perf_counter()
                n = case.s3.upload_lake(case.lake, case.partitions)
                print(f"  uploaded {n:,} objects to moto in {time.perf_counter() - t0:.1f} s",
                      flush=True)
                run_reps(case, contenders, args.reps, case.partitions[0], samples)
        else:
            run_reps(case, contenders, args.reps, case.partitions[0], samples)
        return report(case, args, samples, s3)
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(case: Case, args: argparse.Namespace, samples: dict[str, list[Sample]],
           s3: bool) -> int:
    print_table(samples)
    doc: dict[str, Any] = {"objects": case.objects, "rows": case.rows,
                           "input_bytes": case.input_bytes, "reps": args.reps,
                           "cpus": os.cpu_count(), "summary": summarise(samples),
                           "samples": {k: [asdict(s) for s in v] for k, v in samples.items()}}
    jobs = [c for c in samples if c.startswith("job")]
    for job in jobs:
        doc[f"{job}/polars"] = ratio_line(samples, job, "polars")
        per_object = per_object_cpu(samples, job, "ours", case.objects)
        if per_object is not None:
            doc[f"{job}_client_ms_per_object"] = per_object
    if s3 and "job" in samples and "job_local" in samples:
        # what the S3 path costs the client beyond the very same job on a local lake
        doc["s3_path_ms_per_object"] = per_object_cpu(samples, "job", "job_local",
                                                      case.objects)
    if not args.no_verify and len(case.partitions) == 1:
        ok = verify_outputs(case, [c for c in samples if c in ("polars", "ours") or
                                   c.startswith("job")])
        doc["outputs_ok"] = ok
    failed = any(s.status != "ok" for v in samples.values() for s in v)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 1 if failed or doc.get("outputs_ok") is False else 0


def per_object_cpu(samples: dict[str, list[Sample]], job: str, base: str,
                   objects: int) -> dict[str, Any] | None:
    """(job CPU - merge-only CPU) / objects, ms: of the medians and per rep."""
    if base not in samples:
        return None
    A = [s for s in samples[job] if s.status == "ok" and s.cpu_s is not None]
    B = {s.rep: s for s in samples[base] if s.status == "ok" and s.cpu_s is not None}
    if not A or not B:
        return None
    med = (_med([s.cpu_s for s in A]) - _med([s.cpu_s for s in B.values()])) / objects * 1e3  # type: ignore
    per = [(s.cpu_s - B[s.rep].cpu_s) / objects * 1e3 for s in A if s.rep in B]  # type: ignore
    print(f"{job} client CPU - {base} CPU per raw object: {med:.3f} ms (medians); per rep "
          f"{', '.join(f'{v:.3f}' for v in per)} ms")
    return {"of_medians_ms": med, "per_rep_ms": per}


# --------------------------------------------------------------------------- the day


def day_specs(scale: float, day: str, seed: int) -> list[Any]:
    from compressor.demo import EXCHANGES, STREAMS, PartitionSpec

    specs = []
    for exchange in EXCHANGES:
        for stream in STREAMS:
            if exchange == "binance" and stream == "open_interest":
                continue
            busiest, quietest, rows = DAY_SHAPE[stream]
            for rank, symbol in enumerate(DAY_SYMBOLS):
                real = busiest - (busiest - quietest) * rank / (len(DAY_SYMBOLS) - 1)
                specs.append(PartitionSpec(exchange=exchange, stream=stream, symbol=symbol,
                                           date=day, files=max(2, round(real * scale)),
                                           rows_per_file=rows, seed=seed))
    return specs


def _write_one(spec: Any, root: str) -> int:
    from compressor.demo import write_partition

    return len(write_partition(spec, Path(root)))


def write_day(out: Path, scale: float, day: str, seed: int) -> Path:
    """The collector-shaped day under out/raw (reused when the same shape is there)."""
    from concurrent.futures import ProcessPoolExecutor

    from compressor.demo import EXCHANGES, write_quality_windows

    raw = out / "raw"
    marker = out / "day.json"
    specs = day_specs(scale, day, seed)
    shape = {"scale": scale, "day": day, "seed": seed, "shape": DAY_SHAPE,
             "symbols": DAY_SYMBOLS, "files": sum(s.files for s in specs)}
    if marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(shape)):
        return raw
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(_write_one, specs, [str(raw)] * len(specs)):
            pass
    write_quality_windows(raw, day, EXCHANGES, seed=seed)
    marker.write_text(json.dumps(shape, indent=1))
    print(f"  wrote {len(specs)} partitions, {shape['files']:,} files in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return raw


def main_day(args: argparse.Namespace) -> int:
    check_tools()
    from bench.run_merge import list_inputs

    args.out.mkdir(parents=True, exist_ok=True)
    raw = write_day(args.out, args.scale, args.date, args.seed)
    partitions = sorted(d for d in raw.glob("exchange=*/stream=*/symbol=*/date=*") if d.is_dir())
    objects = rows = size = 0
    for d in partitions:
        inputs = list_inputs(d)
        objects += len(inputs)
        rows += sum(pq.read_metadata(p).num_rows for p in inputs)
        size += sum(p.stat().st_size for p in inputs)
    workers = [int(w) for w in args.workers_list.split(",")]
    work = Path(tempfile.mkdtemp(prefix="qlc-day-bench-", dir=args.work))
    case = Case(work=work, day=args.date, lake=raw, partitions=partitions, objects=objects,
                rows=rows, input_bytes=size, timeout=args.timeout, workers=None,
                memory_budget=args.memory_budget,
                merge_budget_mib=merge_budget_mib(args.memory_budget, 1))
    print(f"day {args.date} at scale {args.scale}: {len(partitions)} partitions, "
          f"{objects:,} objects, {rows:,} rows, {size / 2**20:.0f} MiB; {args.reps} reps; "
          f"workers {workers}; merge-only budget {case.merge_budget_mib} MiB; {load_line()}",
          flush=True)
    contenders = [f"job_w{w}" for w in workers] + (["merge_sum"] if not args.no_merge else [])
    samples: dict[str, list[Sample]] = {c: [] for c in contenders}
    try:
        if args.store == "local":
            run_reps(case, contenders, args.reps, None, samples)
        else:
            from tests.support.s3server import moto_server

            with moto_server(work / "moto.log") as endpoint:
                case.s3 = S3World(endpoint)
                t0 = time.perf_counter()
                quality = [raw / "quality"] if (raw / "quality").is_dir() else []
                n = case.s3.upload_lake(raw, [raw / p for p in sorted(os.listdir(raw))
                                              if p.startswith("exchange=")] + quality)
                print(f"  uploaded {n:,} objects to moto in {time.perf_counter() - t0:.0f} s",
                      flush=True)
                run_reps(case, contenders, args.reps, None, samples)
        print_table(samples)
        doc: dict[str, Any] = {"scale": args.scale, "store": args.store,
                               "partitions": len(partitions),
                               "objects": objects, "rows": rows, "input_bytes": size,
                               "reps": args.reps, "summary": summarise(samples),
                               "samples": {k: [asdict(s) for s in v] for k, v in samples.items()}}
        merge = [s for s in samples.get("merge_sum", []) if s.status == "ok"]
        merge_cpu = _med([s.op_cpu_s for s in merge])
        merge_wall = _med([s.op_s for s in merge])
        if merge:
            print(f"merge-only sum over {len(partitions)} partitions: wall "
                  f"{_span([s.op_s for s in merge], '.1f')} s, CPU "
                  f"{_span([s.op_cpu_s for s in merge], '.1f')} s")
        print(f"{'workers':<8}{'wall s':>9}{'CPU s':>9}{'ms/obj':>8}{'ms/obj-merge':>13}"
              f"{'RSS MB':>8}  " + "  ".join(f"{k:>7}" for k in STEPS) + "  |"
              + "".join(f"{k:>11}" for k in PHASES) + "  merge/CPU")
        for name in [c for c in contenders if c.startswith("job")]:
            ok = [s for s in samples[name] if s.status == "ok"]
            if not ok:
                continue
            wall, cpu, rss = (_med([s.wall_s for s in ok]), _med([s.cpu_s for s in ok]),
                              _med([s.rss_mb for s in ok]))
            steps = {k: _med([s.steps.get(k) for s in ok]) or 0.0 for k in STEPS}
            split = {k: _med([phases(s).get(k) for s in ok]) for k in PHASES}
            net = None if merge_cpu is None else (cpu - merge_cpu) / objects * 1e3  # type: ignore
            doc[name] = {"wall_s": wall, "cpu_s": cpu, "rss_mb": rss, "steps": steps,
                         "phases": split,
                         "cpu_ms_per_object": cpu / objects * 1e3,  # type: ignore[operator]
                         "cpu_ms_per_object_less_merge": net,
                         "merge_share_of_cpu": None if merge_cpu is None else merge_cpu / cpu}
            print(f"{name[5:]:<8}{_span([s.wall_s for s in ok], '.0f'):>9}{cpu:>9.1f}"
                  f"{cpu / objects * 1e3:>8.2f}{'-' if net is None else f'{net:.2f}':>13}"
                  f"{rss:>8.0f}  " + "  ".join(f"{steps[k]:>7.1f}" for k in STEPS)
                  + "  |" + "".join(f"{'-' if split[k] is None else f'{split[k]:.1f}':>11}"
                                    for k in PHASES)
                  + ("" if merge_cpu is None else f"  {merge_cpu / cpu:.2f}"))
        if merge_wall is not None:
            doc["merge_sum"] = {"op_s": merge_wall, "op_cpu_s": merge_cpu}
        failed = any(s.status != "ok" for v in samples.values() for s in v)
        if args.json:
            args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
            print(f"results written to {args.json}")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--merge-all"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("--merge-all")
        ap.add_argument("--tmp")
        ap.add_argument("--budget", type=int)
        return merge_all_worker(ap.parse_args(argv))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="case", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--reps", type=int, default=3)
    common.add_argument("--memory-budget", help="the job's --memory-budget (default: its own)")
    common.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    common.add_argument("--work", type=Path, help="where run dirs go (a new temp dir)")
    common.add_argument("--keep", action="store_true", help="keep the work dir")
    common.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    common.add_argument("--pycache", type=Path,
                        default=Path(tempfile.gettempdir()) / "qlc-bench-pycache",
                        help="bytecode cache of the measured processes (PYTHONPYCACHEPREFIX)")
    common.add_argument("--no-pycache", action="store_true",
                        help="leave PYTHONDONTWRITEBYTECODE/PYTHONPYCACHEPREFIX as they are")
    for name in ("local", "s3"):
        where = "served by moto" if name == "s3" else "local lake"
        p = sub.add_parser(name, parents=[common], help=f"one raw partition dir, {where}")
        p.add_argument("partition", type=Path)
        p.add_argument("--workers", type=int, help="the job's --workers (default: its own)")
        p.add_argument("--contenders", default="job,polars" if name == "local" else "job,ours",
                       help="job, polars, ours, polars_sink, ... (run_merge's workers)")
        p.add_argument("--no-verify", action="store_true")
    d = sub.add_parser("day", parents=[common], help="a collector-shaped day (moto or local)")
    d.add_argument("--out", type=Path, required=True, help="where the raw day is written/reused")
    d.add_argument("--scale", type=float, default=0.1, help="share of the real file counts")
    d.add_argument("--date", default="20261124")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", dest="workers_list", default="1,2,4")
    d.add_argument("--no-merge", action="store_true", help="skip the merge-only sum")
    d.add_argument("--store", choices=("s3", "local"), default="s3",
                   help="serve the day from moto (default) or run on the local lake")
    args = ap.parse_args(argv)
    global PYCACHE
    PYCACHE = None if args.no_pycache else args.pycache
    if args.case == "day":
        return main_day(args)
    return main_partition(args, s3=args.case == "s3")


if __name__ == "__main__":
    sys.exit(main())
