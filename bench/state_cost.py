#!/usr/bin/env python3
"""What `compacted/_state.json` costs as it grows, and how often a sharded backfill writes it.

    python bench/state_cost.py                       # both parts, defaults below
    python bench/state_cost.py --years 1 --shards 1 4 --time-scale 0.001
    python bench/state_cost.py --skip-scale          # the sharded backfill only

Part 1, the state at scale (LocalStore in a temp dir). For each of `--years` (1 and 3)
a state of years x 365 days x `--partitions` (1,000) entries is written, each entry
shaped like the job's own `success` entries (rows, size, label, rules version,
source fingerprint, the compact quality figures). A fresh process (so that its peak
RSS, `ru_maxrss`, is the state's alone) then measures:

- load: GET + JSON decode + strict validation of every entry (`StateStore.load`);
- merge: 1,000 updates (one more day) applied onto the loaded document, in memory;
- flush: the nightly batched write of those 1,000 updates, our own ETag still
  current (HEAD, merge, serialize, PUT If-Match);
- CAS round: the same write when another writer got in first, as every flush of a
  sharded run (GET, decode, validate, merge, serialize, PUT);
- RSS: the process's resident memory after the load minus its baseline (what
  holding the state costs a run), and its peak over everything above.

Part 2, a sharded month-long backfill. `--days` (30) x `--partitions` (1,000) fake
partitions, each assigned to one of N shards by a stable hash of its state key,
N = each of `--shards`. Every shard is its own process with its own StateStore
(the job's flush policy: every `flush_every` (500) queued updates or when the
oldest has waited `flush_interval_s` (30 s), plus one flush at the end of each
day), recording per partition what a backfill does: `in_progress` when it starts,
`success` when it ends `--partition-seconds` later. The StateStore runs on a
simulated clock, so the number of writes is exactly what the flush policy gives
for that partition time; the shards run concurrently against one LocalStore with
real compare-and-swap, paced at `--time-scale` real seconds per simulated second.
Counted: state writes (successful PUTs), CAS retries (PUTs lost to another
shard), `StateConflictError`s (30 lost in a row; the updates stay queued).

Compressing time keeps the writes exact but not the contention: a flush still
takes real milliseconds while the simulated 30 s between flushes shrink to
30 x time-scale real seconds, so the retries are an upper bound. The "write
load" column gives the real-time picture instead: the fraction of wall time the
state object is busy being rewritten, N shards x CAS round (part 1, at the
state's size) / the seconds between one shard's flushes. Near 1 the shards
queue on the state and CAS retries grow without bound.

The table is in bench/README.md ("State cost").
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compressor.layout import STATE_KEY, PartitionId  # noqa: E402 - after the sys.path line
from compressor.planning import Shard  # noqa: E402
from compressor.state import (  # noqa: E402
    PartitionState,
    StateConflictError,
    StateStore,
    serialize_document,
)
from compressor.storage.base import PreconditionFailed  # noqa: E402
from compressor.storage.local import LocalStore  # noqa: E402
from compressor.text import utc_iso  # noqa: E402

FIRST_DAY = date(2023, 1, 1)
T0 = 1_700_000_000.0  # simulated epoch of the backfill
STREAMS = ("trade", "bbo", "mark_price", "funding", "open_interest")


def _day(i: int) -> str:
    return (FIRST_DAY + timedelta(days=i)).strftime("%Y%m%d")


def _key(p: int, day: str) -> str:
    """A state key; 1,000 partitions = 200 symbols x 5 streams, on one exchange."""
    return _pid(p, day).state_key


def _entry(seed: int, started: float, rows: int = 3_300_000) -> PartitionState:
    """A `success` entry as compressor.job records it (same fields, realistic sizes)."""
    return PartitionState.success(
        rows=rows, total_size_bytes=rows * 37, started_at=utc_iso(started),
        updated_at=utc_iso(started + 4.2), day_quality_post="GOOD",
        post_filter_version="1.0.0",
        quality={"rows": rows, "out_of_day_rows": 12, "duplicate_rows": 0,
                 "max_gap_ms": 1843, "lag_p99_ms": 87, "flags": []},
        source_fingerprint=hashlib.sha256(str(seed).encode()).hexdigest(),
    )


def _pid(p: int, day: str) -> PartitionId:
    return PartitionId("binance", STREAMS[p % len(STREAMS)], f"sym{p // len(STREAMS):04d}usdt",
                       day)


def _rss_mb() -> float:
    """Current resident set of this process, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


# ---------------------------------------------------------------- part 1: scale


def write_state(root: str, days: int, partitions: int) -> int:
    """Write a state of days x partitions entries (in a child: its memory is freed)."""
    entries: dict[str, Any] = {}
    for d in range(days):
        day = _day(d)
        for p in range(partitions):
            # one entry object per (partition mod 64): the bytes vary, the dict stays small
            entries[_key(p, day)] = _SAMPLES[p % len(_SAMPLES)]
    doc = {"schema_version": 1, "last_compacted_date": _day(days - 1),
           "updated_at": utc_iso(T0), "partitions": entries}
    data = serialize_document(doc)
    LocalStore(root).put_bytes(STATE_KEY, data)
    return len(data)


_SAMPLES = [_entry(i, T0 + i).to_json() for i in range(64)]


def measure_scale(root: str, days: int, partitions: int) -> dict[str, float]:
    """Load, merge, flush and a CAS round on the state in `root` (in a fresh process)."""
    gc.collect()
    base_rss = _rss_mb()
    store = LocalStore(root)
    state = StateStore(store, flush_every=10**9, flush_interval_s=1e9)
    t = time.perf_counter()
    state.load()
    load_s = time.perf_counter() - t
    gc.collect()
    loaded_rss = _rss_mb()
    load_peak = _peak_mb()

    new_day = _day(days)
    updates = {_key(p, new_day): _entry(p, T0 + 86_400 * days + p) for p in range(partitions)}
    doc = state._document()
    t = time.perf_counter()
    merged = state._apply(doc, updates, None)  # what flush() does before serializing
    merge_s = time.perf_counter() - t
    t = time.perf_counter()
    data = serialize_document(merged)
    serialize_s = time.perf_counter() - t
    del merged, data

    for skey, entry in updates.items():
        state.record(skey, entry)
    t = time.perf_counter()
    state.flush()
    flush_s = time.perf_counter() - t
    flush_peak = _peak_mb()
    info = store.head(STATE_KEY)
    size = info.size if info else 0
    del state, doc
    gc.collect()

    other = StateStore(store, flush_every=10**9, flush_interval_s=1e9)  # nothing cached
    other.record(_key(0, _day(days + 1)), _entry(0, T0 + 86_400 * (days + 1)))
    t = time.perf_counter()
    other.flush()
    cas_s = time.perf_counter() - t
    return {"entries": days * partitions, "size_mb": size / 1e6, "load_s": load_s,
            "merge_s": merge_s, "serialize_s": serialize_s, "flush_s": flush_s,
            "cas_s": cas_s, "held_mb": loaded_rss - base_rss, "load_peak_mb": load_peak,
            "flush_peak_mb": flush_peak, "peak_mb": _peak_mb(), "base_mb": base_rss}


def run_scale(years: list[float], partitions: int, tmp: Path) -> list[dict[str, float]]:
    rows = []
    ctx = get_context("spawn")
    for y in years:
        days = round(365 * y)
        root = tmp / f"scale-{y}y"
        root.mkdir()
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            pool.submit(write_state, str(root), days, partitions).result()
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            row = pool.submit(measure_scale, str(root), days, partitions).result()
        row["years"] = y
        rows.append(row)
        shutil.rmtree(root)
        print(f"  {y:g} y: {json.dumps({k: round(v, 3) for k, v in row.items()})}",
              file=sys.stderr)
    return rows


# ---------------------------------------------------------------- part 2: shards


class CountingStore(LocalStore):
    """A LocalStore that counts the state's PUTs: won, and lost to another writer."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.writes = self.lost = self.gets = 0

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        self.gets += key == STATE_KEY
        return super().get_bytes(key)

    def put_bytes(self, key: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        try:
            etag = super().put_bytes(key, data, if_match=if_match, if_none_match=if_none_match)
        except PreconditionFailed:
            self.lost += key == STATE_KEY
            raise
        self.writes += key == STATE_KEY
        return etag


def shard_run(root: str, shard: int, shards: int, days: int, partitions: int,
              partition_s: float, time_scale: float, start_at: float,
              flush_every: int, flush_interval_s: float) -> dict[str, float]:
    """One shard of the backfill, as its own process (see the module docstring)."""
    store = CountingStore(root)
    now = [T0]
    state = StateStore(store, clock=lambda: now[0], flush_every=flush_every,
                       flush_interval_s=flush_interval_s)
    state.load()
    conflicts = day_writes = records = flushes = 0
    flush_s = 0.0
    untimed = state.flush

    def timed_flush() -> bool:  # record() flushes through self.flush: time every flush
        nonlocal flush_s, flushes
        t = time.perf_counter()
        try:
            return untimed()
        finally:
            flush_s += time.perf_counter() - t
            flushes += 1

    state.flush = timed_flush  # type: ignore[method-assign]
    mine = Shard(shard, shards)

    def attempt(action: Any, *args: Any) -> Any:
        nonlocal conflicts
        try:
            return action(*args)
        except StateConflictError:  # as StateRecorder: the updates stay queued
            conflicts += 1
            return False

    time.sleep(max(0.0, start_at - time.time()))
    started_wall = time.time()
    for d in range(days):
        day = _day(d)
        for p in range(partitions):
            pid = _pid(p, day)
            if not mine.owns(pid):  # the job's own shard rule (planning.Shard)
                continue
            skey = pid.state_key
            began = now[0]
            attempt(state.record, skey, PartitionState.in_progress(started_at=utc_iso(began)))
            now[0] += partition_s
            time.sleep(partition_s * time_scale)
            attempt(state.record, skey, _entry(p, began))
            records += 2
        day_writes += bool(attempt(state.flush))  # the job flushes at the end of each day
    while attempt(state.flush) is False and state._pending:  # the run's last flush
        pass
    return {"writes": store.writes, "lost": store.lost, "gets": store.gets,
            "conflicts": conflicts, "day_writes": day_writes, "records": records,
            "sim_hours": (now[0] - T0) / 3600, "wall_s": time.time() - started_wall,
            "flush_s": flush_s, "flushes": flushes}


def run_shards(shard_counts: list[int], args: argparse.Namespace,
               tmp: Path) -> list[dict[str, Any]]:
    rows = []
    ctx = get_context("spawn")
    for n in shard_counts:
        root = tmp / f"shards-{n}"
        root.mkdir()
        with ProcessPoolExecutor(n, mp_context=ctx) as pool:
            start_at = time.time() + 2.0 + 0.3 * n  # every shard imported and loaded
            futures = [pool.submit(shard_run, str(root), k, n, args.days, args.partitions,
                                   args.partition_seconds, args.time_scale, start_at,
                                   args.flush_every, args.flush_interval)
                       for k in range(n)]
            results = [f.result() for f in futures]
        check = StateStore(LocalStore(root))
        check.load()
        snapshot = check.snapshot()
        ok = sum(e.status == "success" for e in snapshot.partitions.values())
        assert ok == args.days * args.partitions, f"{ok} success entries after {n} shards"
        assert snapshot.last_compacted_date is None  # a backfill never moves it
        row: dict[str, Any] = {"shards": n}
        for name in ("writes", "lost", "gets", "conflicts", "day_writes", "records",
                     "flushes", "flush_s"):
            row[name] = sum(r[name] for r in results)
        row["time_scale"] = args.time_scale
        row["per_shard_hours"] = max(r["sim_hours"] for r in results)
        row["wall_s"] = max(r["wall_s"] for r in results)
        rows.append(row)
        shutil.rmtree(root)
        print(f"  {n} shards: {row}", file=sys.stderr)
    return rows


# ---------------------------------------------------------------- report


def _label(years: float) -> str:
    return f"{years:g} y" if years >= 1 else f"{round(365 * years)} days"


def _fmt_s(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"


def print_tables(scale: list[dict[str, float]], shards: list[dict[str, Any]],
                 args: argparse.Namespace) -> None:
    if scale:
        print(f"\nState at scale ({args.partitions:,} partitions a day, LocalStore, "
              f"one process each)\n")
        n = f"{args.partitions:,}"
        print(f"| state | entries | _state.json | load+validate | merge {n} | flush {n} "
              "| CAS round | RSS held | peak RSS load / flush / all |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in scale:
            print(f"| {_label(r['years'])} | {r['entries']:,.0f} | {r['size_mb']:.0f} MB "
                  f"| {_fmt_s(r['load_s'])} | {_fmt_s(r['merge_s'])} "
                  f"| {_fmt_s(r['flush_s'])} | {_fmt_s(r['cas_s'])} "
                  f"| {r['held_mb']:.0f} MB | {r['load_peak_mb']:.0f} / "
                  f"{r['flush_peak_mb']:.0f} / {r['peak_mb']:.0f} MB |")
        print(f"\n(RSS held = after the load minus the process's baseline of "
              f"{scale[0]['base_mb']:.0f} MB; peak includes the baseline.)")
    if shards:
        print(f"\nSharded backfill: {args.days} days x {args.partitions:,} partitions, "
              f"{args.partition_seconds:g} s per partition, flush every "
              f"{args.flush_every} updates or {args.flush_interval:g} s + each day's end\n")
        sizes = [(_label(r["years"]), r["cas_s"]) for r in scale]
        header = ("| shards | partitions/shard/day | hours/shard | state writes | at day ends "
                  "| writes/shard/hour | CAS retries | lost 30x in a row | time x "
                  "| mean flush (real) | collide as real shards with a CAS round of "
                  "| offered write load |")
        header += "".join(f" write load at {name} |" for name, _ in sizes)
        print(header)
        print("|---" * (12 + len(sizes)) + "|")
        # a flush with no other writer (the 1-shard row) over the time scale: real shards
        # whose CAS round is that long collide as often as the simulated ones
        alone = next((r["flush_s"] / max(1, r["flushes"]) for r in shards if r["shards"] == 1),
                     None)
        for r in shards:
            n = r["shards"]
            rate = r["writes"] / n / r["per_shard_hours"]  # per shard per simulated hour
            mean = r["flush_s"] / max(1, r["flushes"])
            equiv = offered = "-"
            if n > 1 and alone and r["time_scale"]:
                equiv = f"{alone / r['time_scale']:.1f} s"
                offered = f"{n * rate * alone / r['time_scale'] / 3600:.2f}"
            line = (f"| {n} | {args.partitions / n:,.0f} | {r['per_shard_hours']:.1f} "
                    f"| {r['writes']:,} | {r['day_writes']:,} | {rate:.0f} | {r['lost']:,} "
                    f"| {r['conflicts']} | {r['time_scale']:g} | {_fmt_s(mean)} | {equiv} "
                    f"| {offered} |")
            for _, cas_s in sizes:
                line += f" {n * rate * cas_s / 3600:.2f} |"
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--years", type=float, nargs="+", default=[1, 3])
    parser.add_argument("--partitions", type=int, default=1000, help="partitions a day")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--days", type=int, default=30, help="days of the backfill")
    parser.add_argument("--partition-seconds", type=float, default=5.0,
                        help="simulated wall seconds of one partition in a shard")
    parser.add_argument("--time-scale", type=float, default=0.0005,
                        help="real seconds per simulated second in part 2")
    parser.add_argument("--flush-every", type=int, default=500)
    parser.add_argument("--flush-interval", type=float, default=30.0)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-shards", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="qlc-state-cost-"))
    try:
        scale = [] if args.skip_scale else run_scale(args.years, args.partitions, tmp)
        shards = [] if args.skip_shards else run_shards(args.shards, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_tables(scale, shards, args)
    if args.json:
        print(json.dumps({"scale": scale, "shards": shards}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
