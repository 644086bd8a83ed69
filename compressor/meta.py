"""meta.json as a type, and the one rule that says whether an output is current.

meta.json is the commit marker of a partition (docs/guarantees.md "Guarantees under failure"): it is
written last, and it names the exact `data.parquet` it describes by that
object's ETag and size (`data_etag`, `size_bytes`). So a pair can be checked
without downloading the data: HEAD `data.parquet` (or GET it with
`If-Match: <data_etag>`) and compare. A pair that does not match is never
taken for an up-to-date output: planning and the re-check under the lease both
use `Published.current_for`, and compact such a partition again.

This module knows the document and the rule only; reading it from a store is
`read_published`, writing it is `compressor.partition.publish`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from compressor.layout import PartitionId
from compressor.storage.base import NotFound, ObjectInfo, Store, normalize_etag

SCHEMA_VERSION = 1
ORDERING_COLUMNS = ("ts_event", "seq")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: Keys every meta.json has (`data_etag` is absent only from outputs of versions < 1.1).
_REQUIRED = (
    "schema_version", "rows", "ts_event_min", "ts_event_max", "ordering_columns", "sha256",
    "size_bytes", "source_files", "source_fingerprint", "stream_type",
)


class MetaError(ValueError):
    """A meta.json that is not a valid document; the message names the key and the field."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


def _int(doc: dict[str, Any], name: str, *, nullable: bool = False) -> int | None:
    value = doc.get(name)
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _str(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class Meta:
    """One partition's meta.json (docs/operations.md "meta.json" lists every key).

    `extra` keeps the free-form figures (`day_quality`, `merge`, ...) as written;
    the typed fields are the ones any decision or reader relies on.
    """

    rows: int
    ts_event_min: int | None
    ts_event_max: int | None
    sha256: str
    size_bytes: int
    source_files: int
    source_fingerprint: str
    stream_type: str
    #: ETag of the data.parquet this document describes; None only in legacy outputs.
    data_etag: str | None = None
    skipped_files: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(f"sha256: expected 64 lower-case hex digits, got {self.sha256!r}")
        if self.rows and (self.ts_event_min is None or self.ts_event_max is None):
            raise ValueError("ts_event_min/ts_event_max: required when rows > 0")
        if self.data_etag is not None:
            object.__setattr__(self, "data_etag", normalize_etag(self.data_etag))

    # -- the rules -------------------------------------------------------------

    @property
    def rules_version(self) -> str | None:
        """`post_filter_version`: the window rules behind `day_quality` (None: absent)."""
        version = self.extra.get("post_filter_version")
        return version if isinstance(version, str) else None

    @property
    def day_rule(self) -> str | None:
        """`day_rule`: how rows were placed in days (None: by flush day, before 2.0;
        docs/guarantees.md "Rows belong to their event day")."""
        rule = self.extra.get("day_rule")
        return rule if isinstance(rule, str) else None

    def describes(self, data: ObjectInfo | None) -> bool:
        """Whether `data` (a HEAD or listing of data.parquet) is the file named here."""
        return (
            data is not None and self.data_etag is not None
            and data.etag == self.data_etag and data.size == self.size_bytes
        )

    def with_data(self, data: ObjectInfo) -> Meta:
        """This document naming the uploaded data.parquet `data`."""
        return replace(self, data_etag=data.etag)

    # -- JSON ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update({
            "schema_version": SCHEMA_VERSION,
            "rows": self.rows,
            "ts_event_min": self.ts_event_min,
            "ts_event_max": self.ts_event_max,
            "ordering_columns": list(ORDERING_COLUMNS),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "source_files": self.source_files,
            "source_fingerprint": self.source_fingerprint,
            "stream_type": self.stream_type,
        })
        if self.data_etag is not None:
            doc["data_etag"] = self.data_etag
        if self.skipped_files:
            doc["skipped_files"] = list(self.skipped_files)
        return doc

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, doc: Any) -> Meta:
        """Validate a decoded document; ValueError('<field>: <problem>') otherwise."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected an object, got {type(doc).__name__}")
        missing = [name for name in _REQUIRED if name not in doc]
        if missing:
            raise ValueError(f"{missing[0]}: missing")
        if doc["schema_version"] != SCHEMA_VERSION or isinstance(doc["schema_version"], bool):
            raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, "
                             f"got {doc['schema_version']!r}")
        if doc["ordering_columns"] != list(ORDERING_COLUMNS):
            raise ValueError(f"ordering_columns: expected {list(ORDERING_COLUMNS)}, "
                             f"got {doc['ordering_columns']!r}")
        etag = doc.get("data_etag")
        if etag is not None and (not isinstance(etag, str) or not etag.strip('" ')):
            raise ValueError(f"data_etag: expected a non-empty string, got {etag!r}")
        skipped = doc.get("skipped_files", [])
        if not isinstance(skipped, list) or not all(isinstance(k, str) for k in skipped):
            raise ValueError("skipped_files: expected a list of strings")
        typed = set(_REQUIRED) | {"data_etag", "skipped_files"}
        return cls(
            rows=_int(doc, "rows") or 0,
            ts_event_min=_int_or_none(doc, "ts_event_min"),
            ts_event_max=_int_or_none(doc, "ts_event_max"),
            sha256=_str(doc, "sha256"),
            size_bytes=_int(doc, "size_bytes") or 0,
            source_files=_int(doc, "source_files") or 0,
            source_fingerprint=_str(doc, "source_fingerprint"),
            stream_type=_str(doc, "stream_type"),
            data_etag=etag,
            skipped_files=tuple(skipped),
            extra={k: v for k, v in doc.items() if k not in typed},
        )

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> Meta:
        """Parse a stored meta.json; MetaError naming `key` and the field at fault."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MetaError(key, f"not JSON ({type(exc).__name__})") from None
        try:
            return cls.from_json(doc)
        except (ValueError, TypeError) as exc:
            raise MetaError(key, str(exc)) from None


def _int_or_none(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer or null, got {value!r}")
    return value


# ------------------------------------------------------------------ what is published


@dataclass(frozen=True)
class Published:
    """What the compact store holds for one partition, as read at one moment.

    `meta_etag` and `data` are also the conditions of the next publish
    (`compressor.partition.publish`): a writer replaces exactly what it saw under its lease,
    so anyone else's write in between makes its own fail.
    """

    meta: Meta | None = None
    meta_etag: str | None = None
    data: ObjectInfo | None = None
    #: Why a meta.json that exists is not usable (malformed), else None.
    problem: str | None = None

    @property
    def consistent(self) -> bool:
        """meta.json exists, parses and names the data.parquet beside it."""
        return self.meta is not None and self.meta.describes(self.data)

    def current_for(self, fingerprint: str) -> bool:
        """THE rule: the published pair is whole and made from this raw listing."""
        return self.consistent and self.meta is not None and (
            self.meta.source_fingerprint == fingerprint
        )

    def labelled_by(self, rules_version: str) -> bool:
        """Whether meta.json's day label was made by these window rules. An up-to-date
        pair whose label another version made is relabelled in place, never compacted
        again (docs/quality.md "Collector health windows")."""
        return self.meta is not None and self.meta.rules_version == rules_version

    def mismatch(self) -> str | None:
        """Why a visible meta.json cannot be trusted (None when absent or consistent)."""
        if self.problem is not None:
            return self.problem
        if self.meta is None or self.consistent:
            return None
        if self.meta.data_etag is None:
            return "meta.json names no data.parquet ETag (written by a version before 1.1)"
        if self.data is None:
            return "meta.json is visible without its data.parquet"
        return (f"meta.json names data.parquet {self.meta.data_etag} ({self.meta.size_bytes} "
                f"bytes) but {self.data.etag} ({self.data.size} bytes) is there")


def read_published(compact: Store, pid: PartitionId) -> Published:
    """GET meta.json, then HEAD data.parquet. StoreError when the store cannot tell."""
    try:
        body, meta_etag = compact.get_bytes(pid.meta_key)
    except NotFound:
        return Published(data=compact.head(pid.data_key))
    data = compact.head(pid.data_key)
    try:
        meta = Meta.from_bytes(body, pid.meta_key)
    except MetaError as exc:
        return Published(None, meta_etag, data, problem=f"malformed meta.json: {exc.problem}")
    return Published(meta, meta_etag, data)


# ------------------------------------------------------------------ the deep check


def check_data_file(meta: Meta, path: Path) -> list[str]:
    """Problems between `meta` and a downloaded data.parquet (empty: they agree).

    The deep half of the pair check (the cheap half is `Meta.describes`): the bytes'
    sha256 and size, and the row count in the file's footer.
    """
    import pyarrow.parquet as pq  # only the deep check needs it

    problems = []
    if file_sha256(path) != meta.sha256:
        problems.append("data.parquet has another sha256 than meta.json states")
    if path.stat().st_size != meta.size_bytes:
        problems.append(f"data.parquet has {path.stat().st_size} bytes, meta.json "
                        f"states {meta.size_bytes}")
    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:  # any unreadable footer is a finding, not a crash
        problems.append(f"data.parquet footer unreadable ({type(exc).__name__})")
    else:
        if rows != meta.rows:
            problems.append(f"data.parquet holds {rows} rows, meta.json states {meta.rows}")
    return problems


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (meta.json's `sha256`), read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
