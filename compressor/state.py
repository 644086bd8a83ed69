"""The job's state at `compacted/_state.json`: shape, strict validation, merge, CAS writes.

Document (readers rely on it, BRIEF §2)::

    {
      "schema_version": 1,
      "last_compacted_date": "YYYYMMDD" | null,
      "last_compacted_moved_at": ISO-8601 UTC "Z" (when it last moved; optional),
      "updated_at": "2024-01-02T02:31:00.123Z",
      "partitions": {
        "<ex>/<stream>/<sym>/<YYYYMMDD>": {
          "status": "success" | "failed" | "quarantined" | "in_progress",
          "rows": int, "total_size_bytes": int, "attempts": int,
          "updated_at": ISO-8601 UTC "Z", "started_at": ISO-8601 UTC "Z",
          "error": one line (failed/quarantined only), "failed_key": str (on failure),
          "day_quality_post": "GOOD" | "DEGRADED" | "BAD" | "PARTIAL" | "UNKNOWN" (optional),
          "post_filter_version": str (the rules behind that label, optional),
          "quality": {a compact subset of meta.json's quality figures} (optional),
          "source_fingerprint": str (the raw listing compacted, optional),
          "skipped_files": [str] (optional)
        }
      }
    }

Serialized compactly and deterministically (sorted keys, no whitespace). Unknown
keys are rejected: `schema_version` is how the shape evolves.

Merge rule (see `merge_entries`): an entry belongs to one *attempt*, identified by
`started_at` (when the attempt began, after it took the partition lease). Between two
entries for the same partition the newer attempt wins; within one attempt the later
`updated_at` wins; exact ties go to the more final status (success > quarantined >
failed > in_progress), then to the canonical JSON. `attempts` is the max of both.
So a `success` is never replaced by the `in_progress` or `failed` of an attempt that
started before it (e.g. a paused run that lost its lease and reports it late), but a
newer attempt (an `--overwrite` re-run, new raw files) that fails does replace it:
the state tells the truth about the latest attempt while the published meta.json and
data.parquet stay the previous, consistent pair. The rule is a max over a total
order, so it is commutative, associative and idempotent: the order in which
concurrent runs flush, and retries of a write whose outcome was unknown, never
change the result.

`last_compacted_date` only passes a day that is compacted at the moment it is written
(README "Readiness never lies"). A run does not write a value it computed earlier:
it *vouches* for days (`vouch_for`: each day with the state keys of its partitions
that have raw data), and every compare-and-swap write recomputes the watermark from
the document it replaces: from that document's value it moves over the next vouched
day, and the next, as long as each is the very next calendar day and every one of
its partitions has a `success` entry in the merged document. So a `--mode cleanup`
that lowered the value and marked or removed a day's entries (`hold_back`, `forget`)
between a run's check of the day and its write holds the run back before that day:
no larger value computed from an older read is restored. `advance_last_compacted`
(an operator's or a test's seed) is trusted as given and only moves it forward.
`ready_date` computes a run's candidate value.

Repair: a malformed state is never overwritten by the job (`StateCorruptError`,
exit 2). `StateStore.backup_and_reset()` copies the bad object to
`compacted/_state.json.corrupt-<UTC stamp>` and writes a fresh state that keeps
whatever still validates (see its docstring).
"""

from __future__ import annotations

import gc
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from compressor.labels import LABELS, Label
from compressor.layout import STATE_KEY, PartitionId, format_day, parse_day
from compressor.storage.base import (
    NotFound,
    PreconditionFailed,
    Store,
    TransientStoreError,
)
from compressor.text import one_line, parse_utc_iso, utc_iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("success", "failed", "quarantined", "in_progress")
FAILURE_STATUSES = ("failed", "quarantined")
#: Tie-break between entries of the same attempt with the same updated_at.
_STATUS_RANK = {"in_progress": 0, "failed": 1, "quarantined": 2, "success": 3}
_TOP_KEYS = {"schema_version", "last_compacted_date", "last_compacted_moved_at", "updated_at",
             "partitions"}
_ENTRY_KEYS = {
    "status", "rows", "total_size_bytes", "attempts", "updated_at", "started_at",
    "error", "failed_key", "day_quality_post", "post_filter_version", "quality",
    "source_fingerprint", "skipped_files",
}
_DAY_RE = re.compile(r"\d{8}")
_PARTITION_KEY_RE = re.compile(r"[^/]+/[^/]+/[^/]+/\d{8}")
REPAIR_HINT = "run with --repair-state to back it up and start a fresh state"


# ---------------------------------------------------------------- errors


class StateCorruptError(Exception):
    """_state.json exists but is not a valid state; the message is one line naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: malformed state: {problem}; {REPAIR_HINT}")


class StateConflictError(TransientStoreError):
    """Compare-and-swap kept losing against other writers; the queued updates are kept."""


# ---------------------------------------------------------------- one partition


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")


def _check_time(name: str, value: Any) -> None:
    try:
        parse_utc_iso(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _check_optional_str(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name}: expected a string or null, got {type(value).__name__}")


@dataclass(frozen=True)
class PartitionState:
    """One `partitions[...]` entry. Construct with the `success`/`failed`/... factories."""

    status: str
    updated_at: str
    rows: int = 0
    total_size_bytes: int = 0
    attempts: int = 1
    started_at: str | None = None
    error: str | None = None
    failed_key: str | None = None
    #: The day's label (compressor.labels.Label value), compared literally.
    day_quality_post: str | None = None
    post_filter_version: str | None = None
    quality: dict[str, Any] | None = None
    source_fingerprint: str | None = None
    skipped_files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status: expected one of {'|'.join(STATUSES)}, got {self.status!r}")
        _check_time("updated_at", self.updated_at)
        if self.started_at is not None:
            _check_time("started_at", self.started_at)
        for name in ("rows", "total_size_bytes", "attempts"):
            _check_int(name, getattr(self, name))
        self._check_failure_fields()
        self._check_optional_fields()

    def _check_failure_fields(self) -> None:
        _check_optional_str("error", self.error)
        _check_optional_str("failed_key", self.failed_key)
        if self.status in FAILURE_STATUSES and not self.error:
            raise ValueError(f"error: required when status is {self.status!r}")
        if self.error is not None and ("\n" in self.error or "\r" in self.error):
            raise ValueError("error: must be one line")

    def _check_optional_fields(self) -> None:
        dq = self.day_quality_post
        if dq is not None and dq not in LABELS:
            raise ValueError(f"day_quality_post: expected one of {'|'.join(LABELS)}, got {dq!r}")
        for name in ("post_filter_version", "source_fingerprint"):
            _check_optional_str(name, getattr(self, name))
        if self.quality is not None and not isinstance(self.quality, dict):
            raise ValueError(f"quality: expected an object, got {self.quality!r}")
        files = self.skipped_files
        if files is not None and (
            not isinstance(files, tuple) or not all(isinstance(f, str) for f in files)
        ):
            raise ValueError("skipped_files: expected a list of strings")

    # -- factories -------------------------------------------------------------

    @classmethod
    def in_progress(cls, *, started_at: str, attempts: int = 1) -> PartitionState:
        return cls(status="in_progress", updated_at=started_at, started_at=started_at,
                   attempts=attempts)

    @classmethod
    def success(
        cls, *, rows: int, total_size_bytes: int, started_at: str, attempts: int = 1,
        updated_at: str | None = None, day_quality_post: str | None = None,
        post_filter_version: str | None = None, quality: dict[str, Any] | None = None,
        source_fingerprint: str | None = None, skipped_files: Iterable[str] | None = None,
    ) -> PartitionState:
        return cls(
            status="success", updated_at=updated_at or utc_iso(time.time()),
            started_at=started_at, rows=rows, total_size_bytes=total_size_bytes,
            attempts=attempts, day_quality_post=day_quality_post,
            post_filter_version=post_filter_version, quality=quality,
            source_fingerprint=source_fingerprint,
            skipped_files=tuple(skipped_files) if skipped_files is not None else None,
        )

    @classmethod
    def failure(
        cls, *, status: str, error: str, started_at: str, failed_key: str | None = None,
        attempts: int = 1, updated_at: str | None = None,
    ) -> PartitionState:
        """A `failed` (retryable) or `quarantined` (bad input) entry; `error` made one line."""
        if status not in FAILURE_STATUSES:
            raise ValueError(f"status: expected failed|quarantined, got {status!r}")
        return cls(
            status=status, updated_at=updated_at or utc_iso(time.time()),
            started_at=started_at, error=one_line(error) or status,
            failed_key=failed_key, attempts=attempts,
        )

    # -- JSON ------------------------------------------------------------------

    @property
    def attempt_started_at(self) -> str:
        """When the attempt this entry belongs to began (entries without it: updated_at)."""
        return self.started_at or self.updated_at

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status, "rows": self.rows,
            "total_size_bytes": self.total_size_bytes, "attempts": self.attempts,
            "updated_at": self.updated_at, "started_at": self.attempt_started_at,
        }
        for name in ("error", "failed_key", "day_quality_post", "post_filter_version",
                     "quality", "source_fingerprint"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.skipped_files is not None:
            out["skipped_files"] = list(self.skipped_files)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> PartitionState:
        """Validate one entry; ValueError('<field>: <problem>') when it is not valid."""
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object, got {type(raw).__name__}")
        if not raw.keys() <= _ENTRY_KEYS:
            raise ValueError(f"unknown field {sorted(raw.keys() - _ENTRY_KEYS)[0]!r}")
        for name in ("status", "updated_at", "rows", "total_size_bytes", "attempts"):
            if name not in raw:
                raise ValueError(f"{name}: missing")
        files = raw.get("skipped_files")
        if files is not None and not isinstance(files, list):
            raise ValueError("skipped_files: expected a list of strings")
        kwargs = _migrated(raw)
        if files is not None:
            kwargs["skipped_files"] = tuple(files)
        return cls(**kwargs)


def _migrated(raw: dict[str, Any]) -> dict[str, Any]:
    """An entry in the current shape. Writers before 1.1 put the data figures (a dict)
    in `day_quality_post`, where readers compare a label string: the figures move to
    `quality` and the label becomes UNKNOWN until the day is scored again."""
    entry = dict(raw)
    legacy = entry.get("day_quality_post")
    if isinstance(legacy, dict):
        entry["day_quality_post"] = Label.UNKNOWN.value
        entry.setdefault("quality", legacy)
    return entry


def _needs_migration(raw: Any) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("day_quality_post"), dict)


def _merge_key(entry: PartitionState) -> tuple[float, float, int, str]:
    canonical = entry.to_json()
    canonical.pop("attempts")
    return (
        parse_utc_iso(entry.attempt_started_at),
        parse_utc_iso(entry.updated_at),
        _STATUS_RANK[entry.status],
        json.dumps(canonical, sort_keys=True),
    )


def merge_entries(a: PartitionState, b: PartitionState) -> PartitionState:
    """The entry to keep when two writers recorded the same partition (module docstring)."""
    winner = max(a, b, key=_merge_key)
    attempts = max(a.attempts, b.attempts)
    return winner if winner.attempts == attempts else replace(winner, attempts=attempts)


# ---------------------------------------------------------------- readiness


def ready_date(previous: str | None, days: Iterable[tuple[str, bool]]) -> str | None:
    """New last_compacted_date after a run.

    `days`: the days this run processed, ascending, each with True when every one of
    its partitions is done (success or already up to date). The date advances to the
    last day D such that every processed day up to D is done; the first day not done
    holds it back even when later days were compacted. Never moves backward; days at
    or before `previous` do not count.
    """
    result = previous
    last_seen: str | None = None
    for day, done in days:
        parse_day(day)
        if last_seen is not None and day <= last_seen:
            raise ValueError(f"days must be ascending and unique: {day} after {last_seen}")
        last_seen = day
        if previous is not None and day <= previous:
            continue
        if not done:
            break
        result = day
    return result


def _next_day(day: str) -> str:
    return format_day(parse_day(day) + timedelta(days=1))


def vouched_watermark(current: str | None, vouched: Mapping[str, frozenset[str]],
                      partitions: Mapping[str, Any]) -> str | None:
    """The watermark a vouching write may set over `current` (module docstring).

    `partitions`: the raw entries of the document being written. It moves over each
    vouched day after `current` in order and stops at the first one that is not the
    next calendar day (nobody vouches for the gap: a cleanup lowered the value below
    what the run started from) or that has a partition without a `success` entry.
    """
    value = current
    for day in sorted(vouched):
        if value is not None and day <= value:
            continue
        if value is not None and day != _next_day(value):
            break
        keys = vouched[day]
        if any(partitions.get(k, {}).get("status") != "success" for k in keys):
            break
        value = day
    return value


def _max_day(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)


# ---------------------------------------------------------------- the document


def empty_document() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "last_compacted_date": None,
            "updated_at": None, "partitions": {}}


def _check_top(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise ValueError(f"top level: expected an object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level field {unknown[0]!r}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    lcd = doc.get("last_compacted_date")
    if lcd is not None and not (isinstance(lcd, str) and _DAY_RE.fullmatch(lcd)):
        raise ValueError(f"last_compacted_date: expected YYYYMMDD or null, got {lcd!r}")
    if lcd is not None:
        parse_day(lcd)
    for name in ("updated_at", "last_compacted_moved_at"):
        if doc.get(name) is not None:
            _check_time(name, doc[name])
    if not isinstance(doc.get("partitions"), dict):
        raise ValueError("partitions: expected an object")


def _check_entry(key: Any, raw: Any) -> None:
    if not isinstance(key, str) or not _PARTITION_KEY_RE.fullmatch(key):
        raise ValueError(f"partitions: key {key!r} is not <ex>/<stream>/<sym>/<YYYYMMDD>")
    try:
        PartitionState.from_json(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"partitions[{key!r}].{exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON number {name}")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding 365k small objects triggers the cyclic GC over and over; none are cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_document(data: bytes, key: str = STATE_KEY) -> dict[str, Any]:
    """Decode and strictly validate a state document; StateCorruptError otherwise."""
    with _gc_paused():
        return _parse_document(data, key)


def _parse_document(data: bytes, key: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateCorruptError(key, f"not JSON ({one_line(str(exc), 200)})") from None
    try:
        _check_top(doc)
        for pkey, raw in doc["partitions"].items():
            _check_entry(pkey, raw)
    except ValueError as exc:
        raise StateCorruptError(key, one_line(str(exc), 300)) from None
    return doc


def serialize_document(doc: Mapping[str, Any]) -> bytes:
    """Compact, deterministic JSON (sorted keys, no whitespace)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _salvage(data: bytes) -> tuple[dict[str, Any], int, int]:
    """(fresh document keeping what validates, entries kept, entries dropped)."""
    doc = empty_document()
    try:
        old = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        return doc, 0, 0
    if not isinstance(old, dict):
        return doc, 0, 0
    lcd = old.get("last_compacted_date")
    if isinstance(lcd, str) and _DAY_RE.fullmatch(lcd):
        try:
            doc["last_compacted_date"] = format(parse_day(lcd), "%Y%m%d")
        except ValueError:
            pass
    parts = old.get("partitions")
    kept = dropped = 0
    for pkey, raw in (parts.items() if isinstance(parts, dict) else ()):
        try:
            _check_entry(pkey, raw)
        except ValueError:
            dropped += 1
            continue
        doc["partitions"][pkey] = raw
        kept += 1
    return doc, kept, dropped


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

        A catch-up runs these days again (README "Readiness"): a killed --overwrite
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

        The next daily or catch-up run covers them (README "Collector health windows"):
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
            if not updates and lcd is None and not vouch:
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
            new_doc = change(doc)
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
        watermark recomputed over the vouched days (module docstring)."""
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
