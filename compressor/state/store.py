"""The state's store: reads `_state.json`, queues updates, writes them by compare-and-swap.

Repair: a malformed state is never overwritten by the job (`StateCorruptError`,
exit 2). `StateStore.backup_and_reset()` copies the bad object to
`compacted/_state.json.corrupt-<UTC stamp>` and writes a fresh state that keeps
whatever still validates (see its docstring).

Updates are batched: `record` queues, `flush` merges the queue onto the latest
document by the rule of `compressor.state.merge` and writes it with If-Match.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from compressor.layout import STATE_KEY, PartitionId, format_day, parse_day
from compressor.state.document import (
    _PARTITION_KEY_RE,
    SCHEMA_VERSION,
    PartitionState,
    StateCorruptError,
    _needs_migration,
    _salvage,
    derived_event_day_from,
    empty_document,
    parse_document,
    serialize_document,
)
from compressor.state.merge import _max_day, merge_entries, vouched_watermark
from compressor.storage.base import (
    NotFound,
    PreconditionFailed,
    Store,
    TransientStoreError,
)
from compressor.text import utc_iso

#: The state's logger keeps the name it had as one module (a log line's `logger` field).
log = logging.getLogger("compressor.state")


class StateConflictError(TransientStoreError):
    """Compare-and-swap kept losing against other writers; the queued updates are kept."""


@dataclass(frozen=True)
class StateSnapshot:
    """The whole state as readers see it, typed: the loaded document with queued updates."""

    last_compacted_date: str | None
    updated_at: str | None
    #: Entries by state key, `<ex>/<stream>/<sym>/<YYYYMMDD>`.
    partitions: dict[str, PartitionState]
    #: When last_compacted_date last moved (None: not recorded, e.g. by versions < 1.1).
    last_compacted_moved_at: str | None = None


@dataclass(frozen=True)
class RepairResult:
    """What `backup_and_reset` did. backup_key is None when there was nothing to repair."""

    backup_key: str | None
    kept_entries: int
    dropped_entries: int
    last_compacted_date: str | None


# ---------------------------------------------------------------- the store


class StateStore:
    """Reads and updates `_state.json` in `store` with batched compare-and-swap writes.

    `record` and `advance_last_compacted` queue updates; `flush` applies them onto the
    latest document (read with its ETag) and writes it with If-Match (If-None-Match
    when absent), retrying with jittered backoff when another writer got in first.
    `record` flushes by itself once `flush_every` updates are queued or the oldest one
    has waited `flush_interval_s`; call `flush()` at the end of each day and at exit.
    Thread-safe. A malformed document is never overwritten: StateCorruptError.
    """

    def __init__(
        self,
        store: Store,
        *,
        key: str = STATE_KEY,
        flush_every: int = 500,
        flush_interval_s: float = 30.0,
        max_attempts: int = 30,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.key = key
        self.flush_every = max(1, flush_every)
        self.flush_interval_s = flush_interval_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()  # guards _pending*, _doc, _etag
        self._flush_lock = threading.Lock()  # one flush at a time
        self._pending: dict[str, PartitionState] = {}
        self._pending_lcd: str | None = None
        #: Days a run vouches for (`vouch_for`), each with its partitions' state keys.
        self._pending_vouch: dict[str, frozenset[str]] = {}
        self._pending_since: float | None = None
        #: A lowered event_day_from to write (`lower_event_day_from`).
        self._pending_edf: str | None = None
        self._doc: dict[str, Any] | None = None
        self._etag: str | None = None

    # -- reading -----------------------------------------------------------------

    def _fetch(self) -> tuple[dict[str, Any], str | None]:
        """Latest document and ETag; reuses the cached one when the ETag is unchanged."""
        with self._lock:
            cached, cached_etag = self._doc, self._etag
        if cached is not None and cached_etag is not None:
            info = self.store.head(self.key)
            if info is not None and info.etag == cached_etag:
                return cached, cached_etag
        try:
            data, etag = self.store.get_bytes(self.key)
        except NotFound:
            return empty_document(), None
        return parse_document(data, self.key), etag

    def _load(self) -> dict[str, Any]:
        doc, etag = self._fetch()
        with self._lock:
            self._doc, self._etag = doc, etag
        return doc

    def load(self) -> None:
        """Read and validate the current state (missing = empty). StateCorruptError if bad."""
        self._load()

    def _document(self) -> dict[str, Any]:
        """The cached document (loaded on first use). A flush that lost its CAS may drop
        the cache at any moment, so it is read once, under the lock."""
        with self._lock:
            doc = self._doc
        return self._load() if doc is None else doc

    @property
    def last_compacted_date(self) -> str | None:
        """Loaded value merged with any queued advance (a vouched one as if the days it
        vouches for were written now, over the loaded document and the queued entries)."""
        doc = self._document()
        with self._lock:
            value = _max_day(doc["last_compacted_date"], self._pending_lcd)
            if not self._pending_vouch:
                return value
            vouched = dict(self._pending_vouch)
            queued = {k: {"status": e.status} for k, e in self._pending.items()}
        return vouched_watermark(value, vouched, {**doc["partitions"], **queued})

    @property
    def written_last_compacted_date(self) -> str | None:
        """last_compacted_date of the document as last loaded or written (nothing queued)."""
        return cast(str | None, self._document()["last_compacted_date"])

    @property
    def event_day_from(self) -> str:
        """The first day whose midnights move rows to their event day (stored, or derived
        for a document written before it existed), lowered by any queued change."""
        doc = self._document()
        with self._lock:
            return _event_day_from(doc, self._pending_edf)

    def get(self, pid: PartitionId | str) -> PartitionState | None:
        """The partition's entry as loaded, merged with queued updates; None if absent."""
        skey = pid if isinstance(pid, str) else pid.state_key
        doc = self._document()
        with self._lock:
            raw = doc["partitions"].get(skey)
            queued = self._pending.get(skey)
        stored = PartitionState.from_json(raw) if raw is not None else None
        if stored is None or queued is None:
            return queued or stored
        return merge_entries(stored, queued)

    def partition_keys(self) -> list[str]:
        """Keys of the loaded document's partitions and the queued ones, sorted."""
        doc = self._document()
        with self._lock:
            return sorted(set(doc["partitions"]) | set(self._pending))

    def days_not_success(self, until: str) -> set[str]:
        """Days at or before `until` with an entry whose status is not `success`.

        A catch-up runs these days again (README "Readiness never lies"): a killed --overwrite
        backfill or a failure on a day already counted ready is retried by the next
        nightly run, without anyone having to remember it.
        """
        doc = self._document()
        with self._lock:
            raws = list(doc["partitions"].items())
            queued = {k: e.status for k, e in self._pending.items()}
        days = {key[-8:] for key, raw in raws
                if key[-8:] <= until and queued.get(key, raw.get("status")) != "success"}
        days |= {key[-8:] for key, status in queued.items()
                 if key[-8:] <= until and status != "success"}
        return days

    def days_labelled_by_other_rules(self, version: str) -> set[str]:
        """Days with a `success` entry whose `post_filter_version` is not `version`.

        The next daily or catch-up run covers them (docs/quality.md "Collector health windows"):
        every label made by older window rules is relabelled in place, without
        recompacting, like `days_not_success` brings failed days back.
        """
        doc = self._document()
        with self._lock:
            raws = list(doc["partitions"].items())
            queued = {k: (e.status, e.post_filter_version) for k, e in self._pending.items()}
        current = {key: (raw.get("status"), raw.get("post_filter_version")) for key, raw in raws}
        current.update(queued)
        return {key[-8:] for key, (status, made_by) in current.items()
                if status == "success" and made_by != version}

    def days_by_flush_rule(self) -> list[str]:
        """Days with a `success` entry whose output files rows by flush day: made before
        the event-day rule (no `day_rule`), or before event_day_from (docs/guarantees.md
        "Rows belong to their event day"). Ascending."""
        doc = self._document()
        edf = self.event_day_from
        with self._lock:
            raws = dict(doc["partitions"])
            queued = {k: e.to_json() for k, e in self._pending.items()}
        raws.update(queued)
        return sorted({key[-8:] for key, raw in raws.items() if raw.get("status") == "success"
                       and (key[-8:] < edf or not raw.get("day_rule"))})

    def snapshot(self) -> StateSnapshot:
        """Every entry (as `get` gives it), last_compacted_date and updated_at."""
        entries = {key: self.get(key) for key in self.partition_keys()}
        return StateSnapshot(
            last_compacted_date=self.last_compacted_date,
            updated_at=self._document()["updated_at"],
            partitions={key: entry for key, entry in entries.items() if entry is not None},
            last_compacted_moved_at=self._document().get("last_compacted_moved_at"),
        )

    # -- queueing ----------------------------------------------------------------

    def record(self, pid: PartitionId | str, entry: PartitionState) -> None:
        """Queue `entry` for the partition; flushes when the batch is full or old enough."""
        skey = pid if isinstance(pid, str) else pid.state_key
        if not _PARTITION_KEY_RE.fullmatch(skey):
            raise ValueError(f"not a partition state key: {skey!r}")
        with self._lock:
            self._queue(skey, entry)
        self.flush_if_due()

    def advance_last_compacted(self, day: str | None) -> None:
        """Queue a move of last_compacted_date to `day`; never moves it backward."""
        if day is None:
            return
        parse_day(day)
        with self._lock:
            self._pending_lcd = _max_day(self._pending_lcd, day)
            if self._pending_since is None:
                self._pending_since = self.clock()

    def lower_event_day_from(self, day: str) -> None:
        """Queue moving event_day_from back to `day` (a backfill that moves the days from
        `day` on to the event-day rule); it never moves forward. Written by the next flush."""
        parse_day(day)
        with self._lock:
            self._pending_edf = day if self._pending_edf is None else min(self._pending_edf, day)
            if self._pending_since is None:
                self._pending_since = self.clock()

    def vouch_for(self, days: Mapping[str, Iterable[str]]) -> None:
        """Queue a move of last_compacted_date over `days` (day -> the state keys of its
        partitions with raw data; none for a day without raw data). Each write counts
        a day only while it is whole in the document written (`vouched_watermark`)."""
        if not days:
            return
        with self._lock:
            for day, keys in days.items():
                parse_day(day)
                self._pending_vouch[day] = self._pending_vouch.get(day, frozenset()) | set(keys)
            if self._pending_since is None:
                self._pending_since = self.clock()

    def _queue(self, skey: str, entry: PartitionState) -> None:
        old = self._pending.get(skey)
        self._pending[skey] = entry if old is None else merge_entries(old, entry)
        if self._pending_since is None:
            self._pending_since = self.clock()

    def flush_if_due(self) -> bool:
        with self._lock:
            due = len(self._pending) >= self.flush_every or (
                self._pending_since is not None
                and self.clock() - self._pending_since >= self.flush_interval_s
            )
        return self.flush() if due else False

    # -- writing -----------------------------------------------------------------

    def flush(self) -> bool:
        """Write every queued update with CAS. False when nothing was queued.

        On failure (StateCorruptError, StateConflictError, store errors) the updates
        stay queued for the next flush.
        """
        with self._flush_lock:
            with self._lock:
                updates, lcd, vouch = self._pending, self._pending_lcd, self._pending_vouch
                self._pending, self._pending_lcd, self._pending_since = {}, None, None
                self._pending_vouch = {}
            with self._lock:
                edf_queued = self._pending_edf is not None
            if not updates and lcd is None and not vouch and not edf_queued:
                return False
            try:
                self._write(updates, lcd, vouch)
            except BaseException:
                self._requeue(updates, lcd, vouch)
                raise
            return True

    def _requeue(self, updates: dict[str, PartitionState], lcd: str | None,
                 vouch: dict[str, frozenset[str]]) -> None:
        with self._lock:
            for skey, entry in updates.items():
                self._queue(skey, entry)
            self._pending_lcd = _max_day(self._pending_lcd, lcd)
            for day, keys in vouch.items():
                self._pending_vouch[day] = self._pending_vouch.get(day, frozenset()) | keys
            if self._pending_since is None:
                self._pending_since = self.clock()

    def _write(self, updates: dict[str, PartitionState], lcd: str | None,
               vouch: Mapping[str, frozenset[str]]) -> None:
        self._compare_and_swap(lambda doc: self._apply(doc, updates, lcd, vouch),
                               "updates kept for the next flush")

    def _compare_and_swap(
        self, change: Callable[[dict[str, Any]], dict[str, Any]], on_give_up: str
    ) -> dict[str, Any]:
        """Write change(latest document) with If-Match on its ETag, again with jittered
        backoff whenever another writer got in first; the document written."""
        for attempt in range(self.max_attempts):
            doc, etag = self._fetch()
            with self._lock:
                edf = self._pending_edf
            new_doc = {**change(doc), "event_day_from": _event_day_from(doc, edf)}
            try:
                new_etag = self.store.put_bytes(
                    self.key, serialize_document(new_doc), if_match=etag,
                    if_none_match=etag is None,
                )
            except (PreconditionFailed, NotFound):
                with self._lock:
                    self._doc, self._etag = None, None
                self.sleep(self._backoff(attempt))
                continue
            with self._lock:
                self._doc, self._etag = new_doc, new_etag
                if self._pending_edf == edf:
                    self._pending_edf = None
            return new_doc
        raise StateConflictError(
            f"{self.key}: compare-and-swap lost {self.max_attempts} times in a row; {on_give_up}"
        )

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))

    def _apply(
        self, doc: dict[str, Any], updates: Mapping[str, PartitionState], lcd: str | None,
        vouch: Mapping[str, frozenset[str]] | None = None,
    ) -> dict[str, Any]:
        """A new document: `doc` (not modified) with the updates merged in and the
        watermark recomputed over the vouched days (compressor.state.merge)."""
        partitions = dict(doc["partitions"])
        for skey in [k for k, raw in partitions.items() if _needs_migration(raw)]:
            partitions[skey] = PartitionState.from_json(partitions[skey]).to_json()
        for skey, entry in updates.items():
            raw = partitions.get(skey)
            merged = entry if raw is None else merge_entries(PartitionState.from_json(raw), entry)
            partitions[skey] = merged.to_json()
        now = utc_iso(self.clock())
        new_lcd = _max_day(doc["last_compacted_date"], lcd)
        if vouch:
            new_lcd = self._vouched(new_lcd, vouch, partitions)
        moved = doc.get("last_compacted_moved_at")
        out = {
            "schema_version": SCHEMA_VERSION,
            "last_compacted_date": new_lcd,
            "updated_at": now,
            "partitions": partitions,
        }
        if new_lcd != doc["last_compacted_date"]:
            moved = now
        if moved is not None:
            out["last_compacted_moved_at"] = moved
        return out

    @staticmethod
    def _vouched(current: str | None, vouch: Mapping[str, frozenset[str]],
                 partitions: Mapping[str, Any]) -> str | None:
        value = vouched_watermark(current, vouch, partitions)
        wanted = max(vouch)
        if value is None or value < wanted:
            log.warning("last_compacted_date held at %s, not moved to %s: the day after it "
                        "is not compacted in the state now (a cleanup removed it meanwhile?)",
                        value or "-", wanted)
        return value

    # -- cleanup -------------------------------------------------------------------

    def hold_back(self, keys: Iterable[str], first_day: str) -> str | None:
        """Before a cleanup removes anything: mark its partitions and lower the watermark.

        One compare-and-swap: each key gets an `in_progress` entry of an attempt that
        starts now (newer than any run's, so it wins the merge), and last_compacted_date
        moves back to the day before `first_day` when it had reached it. From then on
        no run can vouch for those days (`vouched_watermark` needs `success`), while
        the outputs disappear and until `forget` removes the entries; a partition the
        cleanup then leaves alone stays `in_progress`, so the next catch-up checks it
        again. Returns the last_compacted_date written.
        """
        self.flush()
        now = utc_iso(self.clock())
        marks = {k: PartitionState.in_progress(started_at=now).to_json() for k in keys}

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            partitions = dict(doc["partitions"])
            for key, mark in marks.items():
                raw = partitions.get(key)
                partitions[key] = mark if raw is None else merge_entries(
                    PartitionState.from_json(raw), PartitionState.from_json(mark)).to_json()
            return self._lowered(doc, first_day, partitions)

        written = self._compare_and_swap(change, "nothing removed")
        return cast(str | None, written["last_compacted_date"])

    def forget(self, keys: Iterable[str], first_day: str) -> str | None:
        """Remove entries and hold readiness back before `first_day` (--mode cleanup).

        The one write that is not a merge: a compare-and-swap rewrite of the latest
        document without those entries, with last_compacted_date moved back to the day
        before `first_day` when it had reached it (never forward). Queued updates are
        flushed first. Returns the last_compacted_date written.
        """
        self.flush()
        gone = set(keys)

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            kept = {k: v for k, v in doc["partitions"].items() if k not in gone}
            return self._lowered(doc, first_day, kept)

        written = self._compare_and_swap(change, "nothing removed")
        return cast(str | None, written["last_compacted_date"])

    def _lowered(self, doc: dict[str, Any], first_day: str, partitions: dict[str, Any]
                 ) -> dict[str, Any]:
        """`doc` with these partitions and its watermark moved back before `first_day`."""
        before = format_day(parse_day(first_day) - timedelta(days=1))
        lcd = doc["last_compacted_date"]
        new_lcd = before if lcd is not None and lcd >= first_day else lcd
        new_doc = {
            "schema_version": SCHEMA_VERSION,
            "last_compacted_date": new_lcd,
            "updated_at": utc_iso(self.clock()),
            "partitions": partitions,
        }
        moved = new_doc["updated_at"] if new_lcd != lcd else doc.get("last_compacted_moved_at")
        if moved is not None:
            new_doc["last_compacted_moved_at"] = moved
        return new_doc

    # -- repair --------------------------------------------------------------------

    def backup_and_reset(self) -> RepairResult:
        """Repair a malformed state: back it up, then write a fresh valid one.

        Copies the object to `<key>.corrupt-<YYYYMMDDTHHMMSSZ>` (If-None-Match), then
        replaces it with If-Match on the bad object's ETag (so a concurrent repair or
        write is never clobbered). The fresh state keeps every partition entry that
        validates and a well-formed last_compacted_date (none of it survives garbage:
        catch-up then behaves as a fresh start).
        A valid state is left alone: RepairResult(backup_key=None, ...).
        """
        try:
            data, etag = self.store.get_bytes(self.key)
        except NotFound:
            return RepairResult(None, 0, 0, None)
        try:
            doc = parse_document(data, self.key)
        except StateCorruptError:
            pass
        else:
            return RepairResult(None, len(doc["partitions"]), 0, doc["last_compacted_date"])
        stamp = datetime.fromtimestamp(self.clock(), tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        backup_key = f"{self.key}.corrupt-{stamp}"
        self.store.put_bytes(backup_key, data, if_none_match=True)
        fresh, kept, dropped = _salvage(data)
        fresh["updated_at"] = utc_iso(self.clock())
        new_etag = self.store.put_bytes(self.key, serialize_document(fresh), if_match=etag)
        with self._lock:
            self._doc, self._etag = fresh, new_etag
        log.warning("%s: malformed state backed up to %s; kept %d entries, dropped %d",
                    self.key, backup_key, kept, dropped)
        return RepairResult(backup_key, kept, dropped, fresh["last_compacted_date"])


def event_day_from_of(doc: Mapping[str, Any]) -> str:
    """A document's event_day_from (derived when it has none): see `_event_day_from`."""
    return _event_day_from(doc, None)


def _event_day_from(doc: Mapping[str, Any], lowered: str | None) -> str:
    """The document's event_day_from (derived when it has none), lowered to `lowered`.
    Every write carries it, so it is derived once, from entries written before it
    existed; after that it only moves back (a minimum: writers in any order agree)."""
    stored = doc.get("event_day_from") or derived_event_day_from(doc["partitions"])
    return stored if lowered is None else min(stored, lowered)
