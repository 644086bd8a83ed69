"""compacted/_state.json: strict validation, merge rules, batched CAS flushes, repair.

Store-backed tests run against both stores through the shared `store` fixture.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from compressor.layout import STATE_KEY, PartitionId
from compressor.state import (
    PartitionState,
    StateConflictError,
    StateCorruptError,
    StateStore,
    merge_entries,
    ready_date,
    serialize_document,
)
from compressor.storage import LocalStore, S3Store
from compressor.storage.base import (
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreError,
    TransientStoreError,
)
from compressor.text import utc_iso
from tests.conftest import make_rgw_store, make_s3_store
from tests.support.rgwserver import ACCESS_KEY as RGW_ACCESS_KEY
from tests.support.rgwserver import RGW
from tests.support.rgwserver import SECRET_KEY as RGW_SECRET_KEY

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PID = PartitionId("binance", "trade", "btcusdt", "20240101")


def at(seconds: float) -> str:
    return utc_iso(T0 + seconds)


def ok(started: float, updated: float | None = None, rows: int = 10) -> PartitionState:
    return PartitionState.success(rows=rows, total_size_bytes=rows * 10, started_at=at(started),
                                  updated_at=at(updated if updated is not None else started))


def failed(started: float, updated: float, status: str = "failed") -> PartitionState:
    return PartitionState.failure(status=status, error="boom\nsecond line", started_at=at(started),
                                  updated_at=at(updated), failed_key="k/part-1.parquet")


def running(started: float) -> PartitionState:
    return PartitionState.in_progress(started_at=at(started))


def valid_doc() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "last_compacted_date": "20240101",
        "updated_at": at(0),
        "partitions": {PID.state_key: ok(0).to_json()},
    }


# ------------------------------------------------------------------ store helpers (shared)


class CountingStore(Store):
    """Delegates to `inner`, counting requests; `fail_puts` next puts raise `error` instead."""

    def __init__(self, inner: Store, *, fail_puts: int = 0,
                 error: StoreError | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.puts = self.gets = self.heads = 0
        self.fail_puts = fail_puts
        self.error = error

    def check(self) -> None:
        self.inner.check()

    def list_prefixes(self, prefix: str) -> list[str]:
        return self.inner.list_prefixes(prefix)

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list_objects(prefix)

    def head(self, key: str) -> ObjectInfo | None:
        self.heads += 1
        return self.inner.head(key)

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        self.gets += 1
        return self.inner.get_bytes(key)

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        return self.inner.get_file(key, path)

    def put_file(self, key: str, path: Path, *, if_match: str | None = None,
                 if_none_match: bool = False) -> ObjectInfo:
        return self.inner.put_file(key, path, if_match=if_match, if_none_match=if_none_match)

    def put_bytes(self, key: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        self.puts += 1
        if self.fail_puts > 0 and self.error is not None:
            self.fail_puts -= 1
            raise self.error
        return self.inner.put_bytes(key, data, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.inner.delete(key, if_match=if_match)


def FaultyStore(inner: Store, *, fail_puts: int, error: StoreError) -> CountingStore:  # noqa: N802
    return CountingStore(inner, fail_puts=fail_puts, error=error)


def store_spec(store: Store) -> tuple[str, str, str]:
    """A picklable description of a test store, to reopen it in another process."""
    if isinstance(store, LocalStore):
        return ("local", str(store.root), "")
    assert isinstance(store, S3Store)
    kind = "rgw" if getattr(store, "on_rgw", False) else "s3"
    return (kind, store.bucket, store._client.meta.endpoint_url)


def open_spec(spec: tuple[str, str, str]) -> Store:
    kind, where, endpoint = spec
    if kind == "local":
        return LocalStore(where)
    if kind == "rgw":
        return make_rgw_store(RGW(endpoint, RGW_ACCESS_KEY, RGW_SECRET_KEY, "", 0.0), where,
                              max_attempts=3, read_timeout=10.0)
    return make_s3_store(endpoint, where, max_attempts=3, read_timeout=10.0)


# ------------------------------------------------------------------ shape and round trip


def test_missing_state_is_empty(store: Store) -> None:
    state = StateStore(store)
    state.load()
    assert state.last_compacted_date is None
    assert state.get(PID) is None
    assert state.partition_keys() == []
    assert store.head(STATE_KEY) is None  # loading never creates it


def test_flush_writes_reader_shape(store: Store) -> None:
    state = StateStore(store, clock=lambda: T0 + 5)
    other = PartitionId("okx", "bbo", "ethusdt", "20240101")
    state.record(PID, PartitionState.success(
        rows=7, total_size_bytes=70, started_at=at(1), updated_at=at(2),
        day_quality_post="GOOD", skipped_files=["a/b.parquet"]))
    state.record(other, failed(1, 3, "quarantined"))
    state.advance_last_compacted("20240101")
    assert state.flush() is True
    data, _ = store.get_bytes(STATE_KEY)
    assert b": " not in data and b", " not in data  # compact
    doc = json.loads(data)
    assert list(doc) == sorted(doc)  # sorted keys: deterministic bytes
    assert doc["schema_version"] == 1
    assert doc["last_compacted_date"] == "20240101"
    assert doc["updated_at"] == "2023-11-14T22:13:25.000Z"
    entry = doc["partitions"]["binance/trade/btcusdt/20240101"]
    assert entry["status"] == "success" and entry["rows"] == 7
    assert entry["total_size_bytes"] == 70 and entry["attempts"] == 1
    assert entry["day_quality_post"] == "GOOD" and entry["skipped_files"] == ["a/b.parquet"]
    bad = doc["partitions"]["okx/bbo/ethusdt/20240101"]
    assert bad["status"] == "quarantined"
    assert bad["error"] == "boom second line"  # made one line
    assert bad["failed_key"] == "k/part-1.parquet"
    assert serialize_document(doc) == data
    fresh = StateStore(store)
    fresh.load()
    assert fresh.get(PID) == state.get(PID)
    assert fresh.get(other) == failed(1, 3, "quarantined")


def test_snapshot_is_the_loaded_state_with_queued_updates(store: Store) -> None:
    other = PartitionId("okx", "bbo", "ethusdt", "20240101")
    first = StateStore(store, clock=lambda: T0 + 5)
    first.record(PID, ok(0))
    first.advance_last_compacted("20240101")
    first.flush()
    state = StateStore(store)
    state.record(PID, ok(1, rows=11))  # a newer attempt, still queued
    state.record(other, running(2))
    state.advance_last_compacted("20240102")
    snap = state.snapshot()
    assert snap.partitions == {PID.state_key: ok(1, rows=11), other.state_key: running(2)}
    assert snap.last_compacted_date == "20240102"
    assert snap.updated_at == "2023-11-14T22:13:25.000Z"  # of the stored document


def test_days_labelled_by_other_rules(tmp_path: Path) -> None:
    """Days with a success entry whose label another rules version made (stored or
    queued); failures and entries of the current version are not."""
    def entry(version: str | None, status: str = "success") -> PartitionState:
        if status != "success":
            return failed(1, 2, status)
        return PartitionState.success(rows=1, total_size_bytes=1, started_at=at(1),
                                      updated_at=at(1), day_quality_post="GOOD",
                                      post_filter_version=version)
    store = LocalStore(tmp_path)
    first = StateStore(store)
    for day, version in (("20240101", "1.0.0"), ("20240102", "2.0.0"), ("20240103", None),
                         ("20240104", "1.0.0")):
        first.record(PartitionId("binance", "trade", "btcusdt", day), entry(version))
    first.record(PartitionId("okx", "trade", "btcusdt", "20240105"), entry(None, "failed"))
    first.flush()
    state = StateStore(store)
    assert state.days_labelled_by_other_rules("2.0.0") == {"20240101", "20240103", "20240104"}
    state.record(PartitionId("binance", "trade", "btcusdt", "20240104"), entry("2.0.0"))
    state.record(PartitionId("bybit", "trade", "btcusdt", "20240106"), entry("1.0.0"))
    assert state.days_labelled_by_other_rules("2.0.0") == {"20240101", "20240103", "20240106"}


def test_nothing_queued_writes_nothing(store: Store) -> None:
    counting = CountingStore(store)
    assert StateStore(counting).flush() is False
    assert counting.puts == 0


# ------------------------------------------------------------------ malformed states

BAD_DOCS: dict[str, bytes] = {
    "not json": b"{not json",
    "truncated": serialize_document(valid_doc())[:-7],
    "empty file": b"",
    "top is a list": b"[]",
    "bad utf-8": b"\xff\xfe{}",
}
_MUTATIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "schema_version 2": (("schema_version",), 2),
    "lcd dashed": (("last_compacted_date",), "2024-01-01"),
    "lcd int": (("last_compacted_date",), 20240101),
    "lcd impossible day": (("last_compacted_date",), "20240231"),
    "updated_at no Z": (("updated_at",), "2024-01-01T00:00:00"),
    "partitions list": (("partitions",), []),
    "unknown top key": (("extra",), 1),
    "status unknown": (("partitions", PID.state_key, "status"), "done"),
    "rows string": (("partitions", PID.state_key, "rows"), "12"),
    "rows negative": (("partitions", PID.state_key, "rows"), -1),
    "rows bool": (("partitions", PID.state_key, "rows"), True),
    "size float": (("partitions", PID.state_key, "total_size_bytes"), 1.5),
    "entry updated_at": (("partitions", PID.state_key, "updated_at"), "yesterday"),
    "entry unknown key": (("partitions", PID.state_key, "color"), "red"),
    "failed without error": (("partitions", PID.state_key, "status"), "failed"),
    "skipped not list": (("partitions", PID.state_key, "skipped_files"), "a.parquet"),
    "entry not object": (("partitions", PID.state_key), "success"),
    "bad partition key": (("partitions", "binance/trade/20240101"), ok(0).to_json()),
}


def _mutated(path: tuple[str, ...], value: Any) -> bytes:
    doc = valid_doc()
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return json.dumps(doc).encode()


for _name, (_path, _value) in _MUTATIONS.items():
    BAD_DOCS[_name] = _mutated(_path, _value)
BAD_DOCS["rows NaN"] = _mutated(("partitions", PID.state_key, "rows"), 0).replace(
    b'"rows": 0', b'"rows": NaN')
assert b'"rows": NaN' in BAD_DOCS["rows NaN"]
BAD_DOCS["multi-line error"] = _mutated(("partitions", PID.state_key), {
    **failed(0, 1).to_json(), "error": "line one\nline two"})


@pytest.mark.parametrize("name", sorted(BAD_DOCS))
def test_malformed_state_rejected_and_untouched(store: Store, name: str) -> None:
    bad = BAD_DOCS[name]
    store.put_bytes(STATE_KEY, bad)
    before = store.get_bytes(STATE_KEY)
    state = StateStore(store)
    with pytest.raises(StateCorruptError) as err:
        state.load()
    message = str(err.value)
    assert STATE_KEY in message and "\n" not in message and "--repair-state" in message
    state.record(PID, ok(10))
    state.advance_last_compacted("20240301")
    with pytest.raises(StateCorruptError):
        state.flush()
    assert store.get_bytes(STATE_KEY) == before  # never overwritten
    store.delete(STATE_KEY)  # once repaired, the kept updates are written
    assert state.flush() is True
    check = StateStore(store)
    check.load()
    assert check.get(PID) == ok(10) and check.last_compacted_date == "20240301"


def test_valid_doc_control_loads(store: Store) -> None:
    """The base of every mutation above is itself valid (so each test fails for its reason)."""
    store.put_bytes(STATE_KEY, json.dumps(valid_doc()).encode())
    state = StateStore(store)
    state.load()
    assert state.last_compacted_date == "20240101"
    assert state.get(PID) == ok(0)


def test_corrupt_message_names_the_entry(store: Store) -> None:
    store.put_bytes(STATE_KEY, BAD_DOCS["rows string"])
    with pytest.raises(StateCorruptError, match=r"binance/trade/btcusdt/20240101.*rows"):
        StateStore(store).load()


def test_backup_and_reset_salvages(store: Store) -> None:
    doc = valid_doc()
    doc["partitions"]["okx/bbo/ethusdt/20240101"] = {"status": "weird"}
    bad = json.dumps(doc).encode()
    store.put_bytes(STATE_KEY, bad)
    state = StateStore(store, clock=lambda: T0)
    result = state.backup_and_reset()
    assert result.backup_key == f"{STATE_KEY}.corrupt-20231114T221320Z"
    assert store.get_bytes(result.backup_key)[0] == bad  # the bad object is kept verbatim
    assert (result.kept_entries, result.dropped_entries) == (1, 1)
    fresh = StateStore(store)
    fresh.load()  # valid again
    assert fresh.last_compacted_date == "20240101"
    assert fresh.partition_keys() == [PID.state_key]


def test_backup_and_reset_of_garbage_and_of_a_valid_state(store: Store) -> None:
    store.put_bytes(STATE_KEY, b"garbage")
    result = StateStore(store).backup_and_reset()
    assert result.backup_key is not None and result.kept_entries == 0
    fresh = StateStore(store)
    fresh.load()
    assert fresh.last_compacted_date is None and fresh.partition_keys() == []
    before = store.get_bytes(STATE_KEY)
    again = StateStore(store).backup_and_reset()
    assert again.backup_key is None  # a valid state is left alone
    assert store.get_bytes(STATE_KEY) == before


# ------------------------------------------------------------------ merge rules


def test_success_not_replaced_by_older_attempt() -> None:
    success = ok(started=100, updated=200)
    late_failure = failed(started=0, updated=900)  # paused run reporting after losing its lease
    stale_progress = running(started=50)
    assert merge_entries(success, late_failure).status == "success"
    assert merge_entries(late_failure, success).status == "success"
    assert merge_entries(success, stale_progress) == success


def test_newer_attempt_replaces_success() -> None:
    success = ok(started=100, updated=200)
    assert merge_entries(success, running(started=300)).status == "in_progress"
    newer_failure = failed(started=300, updated=310)
    assert merge_entries(success, newer_failure) == newer_failure


def test_same_attempt_later_update_wins() -> None:
    start = running(started=10)
    done = ok(started=10, updated=20)
    assert merge_entries(start, done) == done
    assert merge_entries(done, start) == done
    tie = failed(started=10, updated=20)
    assert merge_entries(tie, done) == done  # exact tie: the more final status


def test_attempts_is_max() -> None:
    a = PartitionState.in_progress(started_at=at(500), attempts=2)
    b = PartitionState.success(rows=1, total_size_bytes=1, started_at=at(100), attempts=5,
                               updated_at=at(150))
    merged = merge_entries(a, b)
    assert merged.status == "in_progress" and merged.attempts == 5


def test_merge_order_never_matters() -> None:
    entries = [ok(100, 200), failed(0, 900), running(50), running(300), failed(300, 310),
               ok(300, 310), PartitionState.in_progress(started_at=at(300), attempts=3)]
    results = set()
    for perm in itertools.permutations(entries, 5):
        left = perm[0]
        for entry in perm[1:]:
            left = merge_entries(left, entry)
        right = perm[-1]
        for entry in reversed(perm[:-1]):
            right = merge_entries(entry, right)
        assert left == right
        results.add((frozenset(perm), json.dumps(left.to_json(), sort_keys=True)))
    by_set: dict[frozenset[PartitionState], set[str]] = {}
    for members, result in results:
        by_set.setdefault(members, set()).add(result)
    assert all(len(r) == 1 for r in by_set.values())


def test_partition_state_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="status"):
        PartitionState(status="ok", updated_at=at(0))
    with pytest.raises(ValueError, match="updated_at"):
        PartitionState(status="success", updated_at="2024-01-01 00:00:00")
    with pytest.raises(ValueError, match="error"):
        PartitionState(status="failed", updated_at=at(0))
    with pytest.raises(ValueError, match="rows"):
        PartitionState(status="success", updated_at=at(0), rows=-3)


# ------------------------------------------------------------------ last_compacted_date


def test_ready_date_failed_day_holds_back() -> None:
    days = [("20240102", True), ("20240103", False), ("20240104", True), ("20240105", True)]
    assert ready_date("20240101", days) == "20240102"


def test_ready_date_rules() -> None:
    assert ready_date("20240101", [("20240102", True), ("20240103", True)]) == "20240103"
    assert ready_date("20240101", [("20240102", False), ("20240103", True)]) == "20240101"
    assert ready_date(None, [("20240102", True)]) == "20240102"
    assert ready_date(None, [("20240102", False)]) is None
    assert ready_date("20240105", []) == "20240105"
    # days at or before the previous value neither hold back nor move it backward
    assert ready_date("20240105", [("20240103", False), ("20240106", True)]) == "20240106"
    with pytest.raises(ValueError, match="ascending"):
        ready_date(None, [("20240103", True), ("20240102", True)])
    with pytest.raises(ValueError):
        ready_date(None, [("2024-01-03", True)])


def test_last_compacted_never_moves_backward(store: Store) -> None:
    ahead, behind = StateStore(store), StateStore(store)
    behind.load()  # stale view taken before the other run advanced
    ahead.advance_last_compacted("20240110")
    ahead.flush()
    behind.advance_last_compacted("20240105")
    behind.flush()
    check = StateStore(store)
    check.load()
    assert check.last_compacted_date == "20240110"
    behind.advance_last_compacted("20240111")
    behind.flush()
    check.load()
    assert check.last_compacted_date == "20240111"


def test_a_vouched_watermark_passes_only_days_whole_in_the_document_written(
    store: Store,
) -> None:
    """A run vouches for 0102..0104 after checking them; a cleanup then marks and
    removes 0103 and lowers the value. The run's write stops before 0103, and a
    vouch that does not reach down to the value written (a gap) moves nothing."""
    keys = {d: f"ex/trade/btc/{d}" for d in ("20240102", "20240103", "20240104")}
    run = StateStore(store)
    run.advance_last_compacted("20240101")
    for key in keys.values():
        run.record(key, ok(started=1))
    run.flush()
    cleanup = StateStore(store)
    assert cleanup.hold_back([keys["20240103"]], "20240103") == "20240101"
    assert StateStore(store).get(keys["20240103"]).status == "in_progress"  # type: ignore[union-attr]
    run.vouch_for({d: [k] for d, k in keys.items()})
    run.flush()
    assert StateStore(store).last_compacted_date == "20240102"
    cleanup.forget([keys["20240103"]], "20240103")
    run.vouch_for({d: [k] for d, k in keys.items()})
    run.flush()
    assert StateStore(store).last_compacted_date == "20240102"
    late = StateStore(store)
    late.vouch_for({"20240104": [keys["20240104"]]})  # nothing vouches for 0103
    late.flush()
    assert StateStore(store).last_compacted_date == "20240102"
    run.record(keys["20240103"], ok(started=time.time()))  # compacted again
    run.vouch_for({d: [k] for d, k in keys.items()})
    run.flush()
    assert StateStore(store).last_compacted_date == "20240104"


# ------------------------------------------------------------------ batching


def test_batching_counts_writes(store: Store) -> None:
    counting = CountingStore(store)
    state = StateStore(counting, flush_every=50, flush_interval_s=3600)
    for i in range(120):
        state.record(PartitionId("bybit", "bbo", f"s{i:03d}", "20240101"), ok(i))
    assert counting.puts == 2  # at 50 and at 100, not 120
    written = StateStore(store)
    written.load()
    assert len(written.partition_keys()) == 100
    state.flush()
    assert counting.puts == 3
    assert counting.gets <= 1  # our own writes are reused: HEADs, not re-downloads
    final = StateStore(store)
    final.load()
    assert len(final.partition_keys()) == 120


def test_interval_flush(store: Store) -> None:
    now = [T0]
    counting = CountingStore(store)
    state = StateStore(counting, flush_every=1000, flush_interval_s=30, clock=lambda: now[0])
    state.record(PID, running(0))
    now[0] += 29
    state.record(PartitionId("okx", "bbo", "x", "20240101"), running(0))
    assert counting.puts == 0
    now[0] += 2  # the oldest queued update is now 31 s old
    state.record(PartitionId("okx", "bbo", "y", "20240101"), running(0))
    assert counting.puts == 1
    check = StateStore(store)
    check.load()
    assert len(check.partition_keys()) == 3  # all three queued updates went out together


def test_failed_flush_keeps_updates(store: Store) -> None:
    faulty = FaultyStore(store, fail_puts=1, error=TransientStoreError("503 SlowDown"))
    state = StateStore(faulty)
    state.record(PID, ok(0))
    with pytest.raises(TransientStoreError):
        state.flush()
    assert store.head(STATE_KEY) is None
    assert state.flush() is True  # the update was kept for this flush
    check = StateStore(store)
    check.load()
    assert check.get(PID) == ok(0)


def test_conflicts_exhausted(store: Store) -> None:
    faulty = FaultyStore(store, fail_puts=10**6, error=PreconditionFailed(STATE_KEY))
    state = StateStore(faulty, max_attempts=4, sleep=lambda s: None)
    state.record(PID, ok(0))
    with pytest.raises(StateConflictError, match="compare-and-swap"):
        state.flush()
    assert faulty.puts == 4
    faulty.fail_puts = 0
    assert state.flush() is True  # the update was kept for this flush
    assert faulty.puts == 5


# ------------------------------------------------------------------ concurrency


def _day(i: int) -> str:
    return (date(2024, 1, 1) + timedelta(days=i)).strftime("%Y%m%d")


def test_concurrent_flushers_threads(store: Store) -> None:
    writers, per_writer = 6, 30
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            state = StateStore(store, flush_every=4, backoff_base_s=0.005)
            barrier.wait()
            for i in range(per_writer):
                state.record(PartitionId("binance", "bbo", f"w{w}", _day(i)), ok(w * 100 + i))
                # every writer also touches one shared partition: the newest attempt must win
                if i == per_writer - 1:
                    state.record(PID, ok(started=w, updated=w))
            state.advance_last_compacted(_day(w))
            state.flush()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check = StateStore(store)
    check.load()
    assert len(check.partition_keys()) == writers * per_writer + 1
    assert check.get(PID) == ok(started=writers - 1, updated=writers - 1)
    assert check.last_compacted_date == _day(writers - 1)


def _process_writer(spec: tuple[Any, ...], w: int, per_writer: int, start: Any) -> None:
    store = open_spec(spec)
    state = StateStore(store, flush_every=3, backoff_base_s=0.005)
    start.wait()
    for i in range(per_writer):
        state.record(PartitionId("okx", "trade", f"p{w}", _day(i)), ok(w * 100 + i))
    state.advance_last_compacted(_day(10 + w))
    state.flush()


def test_concurrent_flushers_processes(store: Store) -> None:
    writers, per_writer = 4, 24
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(store_spec(store), w, per_writer, start))
             for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * writers
    check = StateStore(store)
    check.load()
    keys = check.partition_keys()
    assert len(keys) == writers * per_writer
    for w in range(writers):
        assert check.get(PartitionId("okx", "trade", f"p{w}", _day(0))) == ok(w * 100)
    assert check.last_compacted_date == _day(10 + writers - 1)


# ------------------------------------------------------------------ cost at a year of state


def test_year_of_state_flush_cost(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """365 days x 1,000 partitions: measure load and one batched flush (printed, not asserted)."""
    stamp = at(0)
    entry = PartitionState.success(rows=3_300_000, total_size_bytes=123_456_789,
                                   started_at=stamp, updated_at=stamp,
                                   day_quality_post="GOOD").to_json()
    days = [_day(d) for d in range(365)]
    partitions = {f"binance/trade/s{i:04d}/{day}": entry for day in days for i in range(1000)}
    doc = {"schema_version": 1, "last_compacted_date": _day(364), "updated_at": stamp,
           "partitions": partitions}
    store.put_bytes(STATE_KEY, serialize_document(doc))
    del partitions, doc
    counting = CountingStore(store)
    state = StateStore(counting, flush_every=10_000)
    t0 = time.perf_counter()
    state.load()
    load_s = time.perf_counter() - t0
    for i in range(1000):  # one more day
        state.record(PartitionId("binance", "trade", f"s{i:04d}", _day(365)), ok(i))
    t0 = time.perf_counter()
    state.flush()
    flush_s = time.perf_counter() - t0
    info = store.head(STATE_KEY)
    assert info is not None
    size = info.size
    assert counting.puts == 1 and len(state.partition_keys()) == 366_000
    assert size < 366_000 * 260  # compact: well under 260 bytes per entry
    with capsys.disabled():
        print(f"\n[state cost {type(store).__name__}] 366k entries: {size / 1e6:.1f} MB, "
              f"load+validate {load_s:.2f} s, one flush of 1,000 updates {flush_s:.2f} s")


def test_entries_holding_the_old_figures_dict_are_read_as_labels_and_rewritten(
    store: Store,
) -> None:
    """Writers before 1.1 put the data figures in day_quality_post, where readers compare
    a label string: they read as UNKNOWN with the figures under `quality`, and the next
    write stores every such entry in the new shape."""
    old_figures = {"rows": 10, "out_of_day_rows": 1, "duplicate_rows": 0, "max_gap_ms": 5,
                   "lag_p50_ms": 3, "lag_p99_ms": 9}
    legacy = {"status": "success", "rows": 10, "total_size_bytes": 100, "attempts": 1,
              "updated_at": "2026-11-20T02:31:00.000Z", "started_at": "2026-11-20T02:30:00.000Z",
              "day_quality_post": old_figures}
    doc = {"schema_version": 1, "last_compacted_date": "20261120", "updated_at": None,
           "partitions": {"okx/bbo/ethusdt/20261120": legacy,
                          "okx/bbo/btcusdt/20261120": dict(legacy)}}
    store.put_bytes(STATE_KEY, json.dumps(doc).encode())
    state = StateStore(store)
    entry = state.get("okx/bbo/ethusdt/20261120")
    assert entry is not None and entry.day_quality_post == "UNKNOWN"
    assert entry.quality == old_figures
    state.record("binance/trade/btcusdt/20261121", PartitionState.in_progress(
        started_at=utc_iso(time.time())))
    state.flush()
    stored = json.loads(store.get_bytes(STATE_KEY)[0])["partitions"]
    for key in ("okx/bbo/ethusdt/20261120", "okx/bbo/btcusdt/20261120"):
        assert stored[key]["day_quality_post"] == "UNKNOWN"
        assert stored[key]["quality"] == old_figures
    # a consumer's filter no longer trips over a dict
    assert sorted(k for k, e in stored.items()
                  if e["status"] == "success" and e.get("day_quality_post") != "BAD") == [
        "okx/bbo/btcusdt/20261120", "okx/bbo/ethusdt/20261120"]


def test_a_label_that_is_not_one_of_the_five_is_rejected() -> None:
    with pytest.raises(ValueError, match="day_quality_post"):
        PartitionState.success(rows=1, total_size_bytes=1, started_at=utc_iso(0),
                               day_quality_post="OK")
