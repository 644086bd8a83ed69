"""The document at `compacted/_state.json`: its shape, its entries, strict validation.

Document (readers rely on it, BRIEF §2)::

    {
      "schema_version": 1,
      "last_compacted_date": "YYYYMMDD" | null,
      "last_compacted_moved_at": ISO-8601 UTC "Z" (when it last moved; optional),
      "event_day_from": "YYYYMMDD" (the first day whose midnights move rows to their
                        event day, docs/guarantees.md "Rows belong to their event day"),
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
          "skipped_files": [str] (optional),
          "day_rule": str (the rule that placed rows in days, optional: absent = the
                      flush-day rule of versions before 2.0)
        }
      }
    }

Serialized compactly and deterministically (sorted keys, no whitespace). Unknown
keys are rejected: `schema_version` is how the shape evolves. How two writers'
entries combine is `compressor.state.merge`; how the document is read and written
is `compressor.state.store`.
"""

from __future__ import annotations

import gc
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from compressor.labels import LABELS, Label
from compressor.layout import STATE_KEY, format_day, parse_day
from compressor.text import one_line, parse_utc_iso, utc_iso

SCHEMA_VERSION = 1
STATUSES = ("success", "failed", "quarantined", "in_progress")
FAILURE_STATUSES = ("failed", "quarantined")
_TOP_KEYS = {"schema_version", "last_compacted_date", "last_compacted_moved_at", "updated_at",
             "partitions", "event_day_from"}
_ENTRY_KEYS = {
    "status", "rows", "total_size_bytes", "attempts", "updated_at", "started_at",
    "error", "failed_key", "day_quality_post", "post_filter_version", "quality",
    "source_fingerprint", "skipped_files", "day_rule",
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
    #: eventday.DAY_RULE for outputs placed by event day; None: by flush day (before 2.0).
    day_rule: str | None = None

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
        for name in ("post_filter_version", "source_fingerprint", "day_rule"):
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
        day_rule: str | None = None,
    ) -> PartitionState:
        return cls(
            status="success", updated_at=updated_at or utc_iso(time.time()),
            started_at=started_at, rows=rows, total_size_bytes=total_size_bytes,
            attempts=attempts, day_quality_post=day_quality_post,
            post_filter_version=post_filter_version, quality=quality,
            source_fingerprint=source_fingerprint,
            skipped_files=tuple(skipped_files) if skipped_files is not None else None,
            day_rule=day_rule,
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
                     "quality", "source_fingerprint", "day_rule"):
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
    edf = doc.get("event_day_from")
    if edf is not None:
        if not (isinstance(edf, str) and _DAY_RE.fullmatch(edf)):
            raise ValueError(f"event_day_from: expected YYYYMMDD, got {edf!r}")
        parse_day(edf)
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


#: event_day_from of a store that never held an output of the flush-day rule.
ALL_EVENT_DAYS = "19700101"


def derived_event_day_from(partitions: Mapping[str, Any]) -> str:
    """event_day_from for a document written before it existed: the day after the
    newest day with any entry (every output there was placed by flush day), or
    ALL_EVENT_DAYS for a store without entries (docs/guarantees.md "Rows belong to
    their event day")."""
    days = [key[-8:] for key in partitions]
    if not days:
        return ALL_EVENT_DAYS
    return format_day(parse_day(max(days)) + timedelta(days=1))
