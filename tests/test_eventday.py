"""Rows belong to their event day (docs/guarantees.md "Rows belong to their event day").

The rule on its own (every row kept by exactly one day, whatever the keys, times and
edge modes), then whole runs through `run.py` on the local store and on S3 (moto):
the real collector's midnight, generated midnights with the collector's clock skewed
both ways, a stream that stops before midnight, a next day that arrives late, and a
store compacted by the flush-day rule before.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.chaos.skew import HOST_SHIM, faketime_library, skew_environment
from compressor.discovery import list_day
from compressor.eventday import (
    DAY_MS,
    HORIZON_S,
    SETTLE_GRACE_S,
    EdgeMode,
    Edges,
    midnight_s,
    near,
    shift,
)
from compressor.layout import PartitionId, raw_file_name
from compressor.partition.edges import neighbours_with_rows
from compressor.partition.fetch import RawChangedError
from compressor.planning import Action, Mode, PlanOptions, Reason, build_plan
from compressor.state import StateStore
from compressor.storage import LocalStore, Store
from tests.conftest import make_s3_store, old_checkout, require_tool

REPO = Path(__file__).resolve().parents[1]
COLLECTOR_REAL = Path(__file__).parent / "fixtures" / "collector-real"
D = "20261123"

# --------------------------------------------------------------------------- the rule


def _keeper(folder: str, flushed: int, ts: int, modes: dict[str, EdgeMode]) -> list[str]:
    """Every day among folder-2..folder+2 whose compaction keeps the row."""
    key = f"exchange=x/stream=trade/symbol=s/date={folder}/{raw_file_name(flushed, 0)}"
    keepers = []
    for offset in range(-2, 3):
        day = shift(folder, offset)
        edges = Edges(day, modes[shift(day, -1)], modes[day])
        if offset == 0:
            keep = edges.keep(key, own=True)
        elif offset == 1 and near(key, midnight_s(day)) and edges.previous is EdgeMode.EVENT:
            keep = edges.keep(key, own=False)  # the day after: key is one of its `before`
        elif offset == -1 and near(key, midnight_s(folder)) and edges.next is EdgeMode.EVENT:
            keep = edges.keep(key, own=False)  # the day before: one of its `after`
        else:
            continue
        if keep is None or any(lo <= ts < hi for lo, hi in keep):
            keepers.append(day)
    return keepers


@settings(max_examples=400, deadline=None)
@given(flush_offset=st.integers(-5, 86_400 + 5), ts_offset=st.integers(-2 * DAY_MS, 3 * DAY_MS),
       modes=st.lists(st.sampled_from(list(EdgeMode)), min_size=6, max_size=6))
def test_every_row_is_kept_by_exactly_one_day(flush_offset: int, ts_offset: int,
                                              modes: list[EdgeMode]) -> None:
    """Whatever the flush time, the row's time and the modes of the midnights around,
    exactly one day keeps a raw row: the adjacent event day across an `event` midnight
    the file was flushed near, else the day its folder names."""
    start = midnight_s(D)
    days = {shift(D, k): mode for k, mode in zip(range(-3, 3), modes, strict=True)}
    flushed, ts = start + flush_offset, start * 1000 + ts_offset
    keepers = _keeper(D, flushed, ts, days)
    assert len(keepers) == 1, keepers
    event_day = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y%m%d")
    if event_day == shift(D, -1) and abs(flushed - start) < HORIZON_S and (
            days[shift(D, -1)] is EdgeMode.EVENT):
        assert keepers == [event_day]
    elif event_day == shift(D, 1) and abs(flushed - start - 86400) < HORIZON_S and (
            days[D] is EdgeMode.EVENT):
        assert keepers == [event_day]
    else:
        assert keepers == [D]


def test_a_key_without_a_flush_time_never_gives_rows_away() -> None:
    key = f"exchange=x/stream=trade/symbol=s/date={D}/other.parquet"
    edges = Edges(D, EdgeMode.EVENT, EdgeMode.EVENT)
    assert edges.keep(key, own=True) is None
    assert not near(key, midnight_s(D))


# --------------------------------------------------------------------------- raw files


def _rows(ts: list[int], start_id: int = 0) -> pa.Table:
    """Trade rows as the collector writes them (arrival order as given)."""
    n = len(ts)
    return pa.table({
        "ts_event": pa.array(ts, pa.int64()), "ts_recv": pa.array([t + 5 for t in ts], pa.int64()),
        "exchange": ["binance"] * n, "symbol": ["BTCUSDT"] * n, "stream": ["trade"] * n,
        "stream_version": pa.array([1] * n, pa.int8()),
        "price": [100.0 + i for i in range(n)], "qty": [1.0] * n,
        "side": pa.array([1] * n, pa.int8()),
        "trade_id": [str(start_id + i) for i in range(n)],
    })


def _put(store: Store, day: str, flushed: int, counter: int, table: pa.Table) -> str:
    key = (f"exchange=binance/stream=trade/symbol=btcusdt/date={day}/"
           f"{raw_file_name(flushed, counter)}")
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.put_bytes(key, sink.getvalue())
    return key


def _expected_day(key: str, ts: int) -> str:
    """The rule, written plainly: every midnight here is an event edge."""
    folder = key.split("date=")[1][:8]
    flushed = int(key.rsplit("/", 1)[1].split("-")[1])
    event_day = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y%m%d")
    for other, midnight in ((shift(folder, -1), midnight_s(folder)),
                            (shift(folder, 1), midnight_s(shift(folder, 1)))):
        if event_day == other and abs(flushed - midnight) < HORIZON_S:
            return other
    return folder


def _skewed_lake(store: Store) -> dict[str, str]:
    """Three days with rows across both midnights, the collector's clock skewed both
    ways. Returns raw key -> its folder day."""
    m0, m1 = midnight_s(D), midnight_s(shift(D, 1))
    ms0, ms1 = m0 * 1000, m1 * 1000
    files = [
        (shift(D, -1), m0 - 3600, [ms0 - 3_600_000 + i for i in range(5)]),
        # clock behind: flushed 23:59:50 by the collector, two rows of D already
        (shift(D, -1), m0 - 10, [ms0 - 20_000, ms0 - 20_000, ms0 + 1_000, ms0 + 2_000]),
        # the usual: the first file after midnight holds the day before's last rows
        (D, m0 + 120, [ms0 - 100_000, ms0 - 5, ms0 - 5, ms0, ms0 + 50_000]),
        (D, m0 + 7200, [ms0 + 7_000_000, ms0 + 7_000_000 + 1]),
        # a row two days off stays where it was filed (counted out of day)
        (D, m0 + 9000, [ms0 + 9_000_000, ms0 - 2 * DAY_MS]),
        (D, m1 - 30, [ms1 - 60_000, ms1 + 10_000]),          # clock behind again
        (shift(D, 1), m1 + 179, [ms1 - 170_000, ms1 - 1, ms1 + 100]),
        # flushed past the horizon: its row of D stays in D+1 (out of day there)
        (shift(D, 1), m1 + HORIZON_S + 60, [ms1 - 1_000, ms1 + 900_000]),
        (shift(D, 1), m1 + 5000, [ms1 + 4_000_000]),
    ]
    keys = {}
    for n, (day, flushed, ts) in enumerate(files):
        keys[_put(store, day, flushed, n, _rows(ts, 1000 * n))] = day
    return keys


def _raw_rows(store: Store, keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key in keys:
        table = pq.read_table(io.BytesIO(store.get_bytes(key)[0]))
        out.extend((key, row) for row in table.to_pylist())
    return out


def _published(store: Store, pid: PartitionId) -> tuple[pa.Table, dict[str, Any]]:
    data = pq.read_table(io.BytesIO(store.get_bytes(pid.data_key)[0]))
    return data, json.loads(store.get_bytes(pid.meta_key)[0])


def _run(raw: str, compact: str, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--raw", raw, "--compact", compact, *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)


@pytest.fixture(params=["local", "s3"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, Store, str, str]:
    """A raw and a compact store, and the URIs run.py is given for them."""
    if request.param == "local":
        (tmp_path / "raw").mkdir()
        (tmp_path / "compact").mkdir()
        return (LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "compact"),
                str(tmp_path / "raw"), str(tmp_path / "compact"))
    endpoint = request.getfixturevalue("moto_server")
    factory = request.getfixturevalue("bucket_factory")
    raw_bucket, compact_bucket = factory(), factory()
    return (make_s3_store(endpoint, raw_bucket), make_s3_store(endpoint, compact_bucket),
            f"s3://{raw_bucket}", f"s3://{compact_bucket}")


@pytest.fixture
def run_env(request: pytest.FixtureRequest, stores: tuple[Store, Store, str, str]
            ) -> dict[str, str] | None:
    if stores[2].startswith("s3://"):
        return dict(request.getfixturevalue("cli_env"))
    return None


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, v) for k, v in row.items() if k != "seq"))


def _check_days(compact: Store, raw_rows: list[tuple[str, dict[str, Any]]],
                days: list[str], stream: str = "trade", exchange: str = "binance",
                symbol: str = "btcusdt") -> dict[str, dict[str, Any]]:
    """Each day holds exactly the rows the rule gives it, sorted, seq 0..N-1; returns
    day -> meta.json."""
    want: dict[str, Counter[tuple[Any, ...]]] = {day: Counter() for day in days}
    for key, row in raw_rows:
        want.setdefault(_expected_day(key, row["ts_event"]), Counter())[_row_key(row)] += 1
    metas = {}
    for day in days:
        data, meta = _published(compact, PartitionId(exchange, stream, symbol, day))
        rows = data.to_pylist()
        assert Counter(_row_key(r) for r in rows) == want[day], day
        assert [r["seq"] for r in rows] == list(range(len(rows)))
        assert [r["ts_event"] for r in rows] == sorted(r["ts_event"] for r in rows)
        assert meta["rows"] == len(rows)
        metas[day] = meta
    return metas


def test_generated_midnights_skewed_both_ways(stores: tuple[Store, Store, str, str],
                                              run_env: dict[str, str] | None) -> None:
    """Each compact day holds exactly its rows by the rule; every raw row is in exactly
    one day (the union is the raw rows); the figures say what crossed each midnight;
    verify --deep re-reads the neighbour files and agrees; a second run changes nothing."""
    raw, compact, raw_uri, compact_uri = stores
    keys = _skewed_lake(raw)
    days = [shift(D, -1), D, shift(D, 1)]
    done = _run(raw_uri, compact_uri, "--mode", "backfill", "--date-from", days[0],
                "--date-to", days[-1], "--today", shift(D, 3), env=run_env)
    assert done.returncode == 0, done.stderr[-3000:]
    raw_rows = _raw_rows(raw, sorted(keys))
    metas = _check_days(compact, raw_rows, days)
    assert sum(m["rows"] for m in metas.values()) == len(raw_rows)
    edges = metas[D]["edges"]
    assert (edges["previous"], edges["next"]) == ("event", "event")
    # from D-1's 23:59:50 file: two rows of D; to D-1: three rows of its file flushed 00:02
    assert edges["rows_from_previous"] == 2 and edges["rows_to_previous"] == 3
    # to D+1: one row of the file flushed 23:59:30; from D+1: two rows of 00:02:59
    assert edges["rows_to_next"] == 1 and edges["rows_from_next"] == 2
    assert [f["key"].split("/")[-2:] for f in edges["neighbour_files"]] == [
        [f"date={shift(D, -1)}", raw_file_name(midnight_s(D) - 10, 1)],
        [f"date={shift(D, 1)}", raw_file_name(midnight_s(shift(D, 1)) + 179, 6)]]
    assert metas[D]["day_rule"] == "event_day/1"
    assert metas[D]["quality"]["out_of_day_rows"] == 1  # the row two days off
    deep = _run(raw_uri, compact_uri, "--mode", "verify", "--deep", "--date-from", days[0],
                "--date-to", days[-1], "--today", shift(D, 3), env=run_env)
    assert deep.returncode == 0, deep.stdout + deep.stderr[-2000:]
    etags = {o.key: o.etag for o in compact.list_objects("exchange=")}
    again = _run(raw_uri, compact_uri, "--mode", "backfill", "--date-from", days[0],
                 "--date-to", days[-1], "--today", shift(D, 3), env=run_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {o.key: o.etag for o in compact.list_objects("exchange=")} == etags


def _copy_fixture(store: Store) -> list[str]:
    keys = []
    for path in sorted(COLLECTOR_REAL.glob("exchange=*/*/*/*/*.parquet")):
        key = path.relative_to(COLLECTOR_REAL).as_posix()
        store.put_file(key, path)
        keys.append(key)
    return keys


def test_the_real_collectors_midnight(stores: tuple[Store, Store, str, str],
                                      run_env: dict[str, str] | None) -> None:
    """The real collector's files (tests/fixtures/collector-real): every stream's
    2026-02-28 gets the last rows the collector filed under 2026-03-01, 2026-03-01
    starts at midnight, and the two days together hold every raw row once."""
    raw, compact, raw_uri, compact_uri = stores
    keys = _copy_fixture(raw)
    done = _run(raw_uri, compact_uri, "--mode", "backfill", "--date-from", "20260228",
                "--date-to", "20260301", "--today", "20260303", env=run_env)
    assert done.returncode == 0, done.stderr[-3000:]
    by_partition: dict[tuple[str, str, str], list[str]] = {}
    for key in keys:
        pid = PartitionId.from_prefix(key.rsplit("/", 1)[0] + "/")
        by_partition.setdefault((pid.exchange, pid.stream, pid.symbol), []).append(key)
    moved = {}
    for (exchange, stream, symbol), part_keys in by_partition.items():
        rows = _raw_rows(raw, part_keys)
        metas = _check_days(compact, rows, ["20260228", "20260301"], stream, exchange, symbol)
        first, second = (_published(compact, PartitionId(exchange, stream, symbol, d))[0]
                         for d in ("20260228", "20260301"))
        start = midnight_s("20260301") * 1000
        assert max(first.column("ts_event").to_pylist()) < start
        assert min(second.column("ts_event").to_pylist()) >= start
        assert metas["20260228"]["edges"]["rows_from_next"] == (
            metas["20260301"]["edges"]["rows_to_previous"])
        moved[stream] = metas["20260228"]["edges"]["rows_from_next"]
    # the README's straddling files: all but okx/funding give 2026-02-28 rows
    assert moved["funding"] == 0
    assert all(moved[s] > 0 for s in ("bbo", "trade", "mark_price", "open_interest"))


# --------------------------------------------------------------------------- readiness


def _plan(raw: Store, compact: Store, now: datetime, mode: Mode = Mode.CATCH_UP,
          today: str | None = None, backfill: tuple[date, date] | None = None) -> Any:
    today_date = datetime.strptime(today or shift(D, 1), "%Y%m%d").date()
    return build_plan(raw, compact, StateStore(compact),
                      PlanOptions(mode=mode, today=today_date, now=now, backfill=backfill))


def _at(seconds_after_next_midnight: int) -> datetime:
    return datetime.fromtimestamp(midnight_s(shift(D, 1)) + seconds_after_next_midnight, UTC)


def test_a_day_waits_for_its_next_midnight_to_settle(tmp_path: Path) -> None:
    """Until the next day's folder shows a file flushed past the horizon, or the grace
    has passed (a stream that stopped), the day is not compacted and not ready; the
    02:30 nightly run always finds it settled."""
    (tmp_path / "r").mkdir()
    (tmp_path / "c").mkdir()
    raw, compact = LocalStore(tmp_path / "r"), LocalStore(tmp_path / "c")
    _put(raw, D, midnight_s(D) + 600, 0, _rows([midnight_s(D) * 1000 + 1]))
    early = _plan(raw, compact, _at(600), mode=Mode.DAILY)
    assert [(p.action, p.reason) for p in early.partitions] == [(Action.SKIP, Reason.UNSETTLED)]
    assert _plan(raw, compact, _at(SETTLE_GRACE_S)).partitions[0].action is Action.COMPACT
    assert _plan(raw, compact, _at(2 * 3600 + 1800), mode=Mode.DAILY
                 ).partitions[0].action is Action.COMPACT
    # the next day's collector has flushed past the horizon: settled before the grace
    _put(raw, shift(D, 1), midnight_s(shift(D, 1)) + HORIZON_S + 5, 1,
         _rows([midnight_s(shift(D, 1)) * 1000 + 10]))
    assert _plan(raw, compact, _at(HORIZON_S + 10)).partitions[0].action is Action.COMPACT


def test_a_stream_that_stops_before_midnight_keeps_its_rows(
        stores: tuple[Store, Store, str, str], run_env: dict[str, str] | None) -> None:
    """No next folder: its next midnight moves nothing (`flush`), the day holds its own
    rows, and it is compacted once the grace has passed."""
    raw, compact, raw_uri, compact_uri = stores
    m1 = midnight_s(shift(D, 1)) * 1000
    _put(raw, D, midnight_s(shift(D, 1)) - 600, 0, _rows([m1 - 700_000, m1 + 5]))
    done = _run(raw_uri, compact_uri, "--mode", "catch-up", "--today", shift(D, 1), env=run_env)
    assert done.returncode == 0, done.stderr[-3000:]
    data, meta = _published(compact, PartitionId("binance", "trade", "btcusdt", D))
    assert data.num_rows == 2 and meta["edges"]["next"] == "flush"
    assert json.loads(compact.get_bytes("compacted/_state.json")[0])[
        "last_compacted_date"] == D


def test_a_late_next_day_recompacts_the_day_before(
        stores: tuple[Store, Store, str, str], run_env: dict[str, str] | None) -> None:
    """D compacted while D+1 had no folder (its rows of D were not there yet); when D+1
    arrives with rows of D, the next catch-up compacts D+1 without them and D again
    with them (the lookback): together exactly the raw rows."""
    raw, compact, raw_uri, compact_uri = stores
    m1 = midnight_s(shift(D, 1))
    first = _put(raw, D, midnight_s(D) + 4000, 0, _rows([midnight_s(D) * 1000 + 3_000_000]))
    done = _run(raw_uri, compact_uri, "--mode", "catch-up", "--today", shift(D, 1), env=run_env)
    assert done.returncode == 0, done.stderr[-3000:]
    late = [_put(raw, shift(D, 1), m1 + 170, 1, _rows([m1 * 1000 - 30_000, m1 * 1000 + 10])),
            _put(raw, shift(D, 1), m1 + 3600, 2, _rows([m1 * 1000 + 3_500_000]))]
    again = _run(raw_uri, compact_uri, "--mode", "catch-up", "--today", shift(D, 2),
                 env=run_env)
    assert again.returncode == 0, again.stderr[-3000:]
    metas = _check_days(compact, _raw_rows(raw, [first, *late]), [D, shift(D, 1)])
    assert metas[D]["rows"] == 2 and metas[shift(D, 1)]["rows"] == 2
    assert [f["key"] for f in metas[D]["edges"]["neighbour_files"]] == [late[0]]


def test_listing_the_next_day_stops_past_the_horizon(tmp_path: Path) -> None:
    """Only the next folder's files up to the first one flushed past the horizon are
    candidates; the day before's are those flushed within the horizon of midnight."""
    raw = LocalStore(tmp_path)
    m0, m1 = midnight_s(D), midnight_s(shift(D, 1))
    before = [_put(raw, shift(D, -1), m0 - s, s, _rows([m0 * 1000 - 1])) for s in (2000, 30)]
    _put(raw, D, m0 + 100, 0, _rows([m0 * 1000 + 1]))
    after = [_put(raw, shift(D, 1), m1 + s, s, _rows([m1 * 1000])) for s in (60, 600, 1000)]
    part = list_day(raw, PartitionId("binance", "trade", "btcusdt", D), "19700101",
                    datetime.fromtimestamp(m1 + 5000, UTC))
    assert part.edges is not None
    assert [f.key for f in part.edges.before] == [before[1]]
    assert [f.key for f in part.edges.after] == after[:2]


def _run_at(when: int, raw: Path, compact: Path, *args: str
            ) -> subprocess.CompletedProcess[str]:
    """run.py on local stores with the host's wall clock at `when` (libfaketime)."""
    library = require_tool("libfaketime", found=faketime_library(), package="faketime")
    env = {**os.environ, **skew_environment(library, when - time.time())}
    return subprocess.run(
        [sys.executable, "-c", HOST_SHIM, str(REPO / "run.py"), "--raw", str(raw),
         "--compact", str(compact), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)


def test_a_run_just_after_midnight_waits_and_a_later_one_compacts(tmp_path: Path) -> None:
    """A catch-up at 00:10 UTC (its host clock faked) leaves yesterday alone and says so,
    exit 0, readiness not moved; the same run at 01:05 compacts it and moves readiness."""
    raw_dir, compact_dir = tmp_path / "raw", tmp_path / "compact"
    raw_dir.mkdir()
    compact_dir.mkdir()
    m1 = midnight_s(shift(D, 1))
    _put(LocalStore(raw_dir), D, m1 - 200, 0, _rows([m1 * 1000 - 300_000]))
    early = _run_at(m1 + 600, raw_dir, compact_dir, "--mode", "catch-up")
    assert early.returncode == 0, early.stderr[-3000:]
    assert "1 waiting for the next day" in early.stdout + early.stderr
    assert not list(compact_dir.glob("exchange=*/*/*/*/data.parquet"))
    state_file = compact_dir / "compacted/_state.json"
    assert not state_file.exists() or json.loads(state_file.read_text())[
        "last_compacted_date"] is None
    later = _run_at(m1 + SETTLE_GRACE_S + 300, raw_dir, compact_dir, "--mode", "catch-up")
    assert later.returncode == 0, later.stderr[-3000:]
    assert len(list(compact_dir.glob("exchange=*/*/*/*/data.parquet"))) == 1
    state = json.loads((compact_dir / "compacted/_state.json").read_text())
    assert state["last_compacted_date"] == D


#: The last commit that filed rows by flush day (the code before the event-day rule).
FLUSH_RULE_COMMIT = "844aec3be9ba6e2d2f39bf11eddddb626b2324e9"


def test_a_store_compacted_by_flush_day_is_moved_only_by_a_backfill(tmp_path: Path) -> None:
    """Days compacted by the code before the rule stay as they are (their outputs are
    current, the run names them and the backfill that moves them); the first new day
    keeps the old rule at its first midnight, so no row is lost or doubled between them;
    the backfill moves event_day_from back, compacts the old days and the first new day
    again, and then every day holds its event day's rows."""
    raw_dir, compact_dir = tmp_path / "raw", tmp_path / "compact"
    raw_dir.mkdir()
    compact_dir.mkdir()
    raw, compact = LocalStore(raw_dir), LocalStore(compact_dir)
    keys = sorted(_skewed_lake(raw))
    days = [shift(D, -1), D, shift(D, 1)]
    old = old_checkout(FLUSH_RULE_COMMIT, tmp_path / "old")
    made = subprocess.run([sys.executable, str(old / "run.py"), "--raw", str(raw_dir),
                           "--compact", str(compact_dir), "--mode", "backfill", "--date-from",
                           days[0], "--date-to", days[1], "--today", shift(D, 2)],
                          env={**os.environ, "PYTHONPATH": str(old)}, cwd=old,
                          capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stderr[-3000:]
    old_etags = {o.key: o.etag for o in compact.list_objects("exchange=")}
    assert all("day_rule" not in json.loads(compact.get_bytes(k)[0])
               for k in old_etags if k.endswith("meta.json"))

    nightly = _run(str(raw_dir), str(compact_dir), "--mode", "catch-up", "--today", shift(D, 2))
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    assert (f"2 published day(s) {days[0]}..{days[1]} keep rows filed by flush day"
            in nightly.stderr)
    assert f"--date-from {days[0]} --date-to {days[1]} moves them" in nightly.stderr
    assert {k: e for k, e in ((o.key, o.etag) for o in compact.list_objects("exchange="))
            if k in old_etags} == old_etags  # nothing changed behind the operator's back
    state = json.loads(compact.get_bytes("compacted/_state.json")[0])
    assert state["event_day_from"] == days[2]
    _, first_new = _published(compact, PartitionId("binance", "trade", "btcusdt", days[2]))
    assert first_new["edges"]["previous"] == "flush"
    raw_rows = _raw_rows(raw, keys)
    total = sum(_published(compact, PartitionId("binance", "trade", "btcusdt", d))[0].num_rows
                for d in days)
    assert total == len(raw_rows)  # the flush-rule midnight loses and doubles nothing

    plan = _run(str(raw_dir), str(compact_dir), "--mode", "backfill", "--date-from", days[0],
                "--date-to", days[1], "--today", shift(D, 2), "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert f"event_day_from: moved back to {days[0]}" in plan.stdout
    assert plan.stdout.count("rows move to their event day") == 2
    assert f"binance/trade/btcusdt/{days[2]}" in plan.stdout  # the first new day again
    moved = _run(str(raw_dir), str(compact_dir), "--mode", "backfill", "--date-from", days[0],
                 "--date-to", days[1], "--today", shift(D, 2))
    assert moved.returncode == 0, moved.stderr[-3000:]
    _check_days(compact, raw_rows, days)
    state = json.loads(compact.get_bytes("compacted/_state.json")[0])
    assert state["event_day_from"] == days[0]
    assert all(e.get("day_rule") == "event_day/1" for e in state["partitions"].values())
    again = _run(str(raw_dir), str(compact_dir), "--mode", "catch-up", "--today", shift(D, 2))
    assert again.returncode == 0 and "flush day" not in again.stderr, again.stderr[-2000:]


def test_only_neighbour_files_whose_footer_says_so_are_read(
        stores: tuple[Store, Store, str, str]) -> None:
    """A neighbour file near midnight is read whole only when its footer's ts_event
    statistics reach into the day (one ranged GET of the footer otherwise); a corrupt
    one is left to its own day; a file rewritten since the listing is a retry."""
    raw = stores[0]
    m1 = midnight_s(shift(D, 1))
    _put(raw, D, m1 - 7200, 0, _rows([m1 * 1000 - 7_300_000]))
    gives = _put(raw, shift(D, 1), m1 + 60, 1, _rows([m1 * 1000 - 50, m1 * 1000 + 5]))
    _put(raw, shift(D, 1), m1 + 240, 2, _rows([m1 * 1000 + 200_000]))
    broken = (f"exchange=binance/stream=trade/symbol=btcusdt/date={shift(D, 1)}/"
              f"{raw_file_name(m1 + 400, 3)}")
    raw.put_bytes(broken, b"PAR1 not a footer PAR1")
    part = list_day(raw, PartitionId("binance", "trade", "btcusdt", D), "19700101",
                    datetime.fromtimestamp(m1 + 5000, UTC))
    assert part.edges is not None and len(part.edges.after) == 3
    assert [f.key for f in neighbours_with_rows(part, raw)] == [gives]
    raw.put_bytes(gives, pq_bytes(_rows([m1 * 1000 - 40])))  # rewritten since the listing
    with pytest.raises(RawChangedError):
        neighbours_with_rows(part, raw)


def pq_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
