"""The one storage interface every backend implements.

Keys are '/'-separated strings relative to the store's root (bucket + optional
prefix for S3, a directory for the local store). Listing is always in key
order (S3's lexicographic order of UTF-8 bytes). Writes are atomic: a reader
sees either the previous object or the complete new one, never a part.

The data path (`DataReader`, at the end): the Store interface is the control plane
(listing, conditional writes, state, leases). Reading thousands of tiny raw objects
per partition is a different job, with its own costs: `Store.data_reader()` gives
the cheapest way a store has to do it.

- LocalStore: `LocalReader` (in localdata.py), which hands out the files where
  they lie (`locate`), no copy at all;
- S3Store: `ObstoreReader` (in s3data.py), GETs through obstore, which holds
  no GIL while it waits and copies and costs about a fifth of boto3's CPU per
  object (bench/README.md, "Fetch cost");
- any other store (and a subclass that overrides how objects are read): this
  module's `StoreReader`, through the store's own `get_file`, as before.

Its errors are the Store's: NotFound, ObjectUnreadable, StoreError and its kinds,
their messages naming the key, never a credential. The readers live here, with the
Store whose `data_reader()` returns one, so that this module imports no other.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import pyarrow as pa

#: Names of the stores' temp files (downloads, local writes) start with this.
TMP_MARK = ".qlc-tmp-"
#: Read size when streaming files and objects.
CHUNK = 1 << 20


def normalize_etag(etag: str) -> str:
    """An ETag without the surrounding quotes (and blanks) S3 puts on it."""
    return etag.strip().strip('"')


def temp_name(name: str) -> str:
    """A unique name for a temp file that will become `name` (at most 255 characters)."""
    return f"{TMP_MARK}{uuid.uuid4().hex}.{name}"[:255]


def md5_file(fh: BinaryIO) -> bytes:
    """md5 digest of an open file from its current position to the end."""
    digest = hashlib.md5()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.digest()


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing or a HEAD describes it.

    `etag` is always normalized (unquoted, see normalize_etag), whatever the
    backend returned, so ETags from any two sources compare with `==`.
    """

    key: str
    size: int
    etag: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", normalize_etag(self.etag))


class StoreError(Exception):
    """Base of every storage failure. `retryable` says whether trying later may help."""

    retryable = False


class NotFound(StoreError):
    """The key (or the bucket, see StoreConfigError) does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: If-Match ETag differs, or If-None-Match found an object."""


class TransientStoreError(StoreError):
    """Throttling, 5xx, resets, timeouts: retries ran out, a later run may succeed."""

    retryable = True


class ObjectUnreadable(StoreError):
    """One object exists but cannot be read: access denied to it (e.g. encrypted with a
    KMS key these credentials may not use) or archived (S3 InvalidObjectState).

    A problem of that object, not of the store: the other objects are still
    readable, so it fails the partition that needs it, never the whole run.
    Not retryable: the next attempt gets the same answer until someone acts.
    """


class StoreConfigError(StoreError):
    """The store itself is unusable: missing bucket, bad credentials, unreachable endpoint.

    The job stops with exit code 2 on this; it is never a per-partition failure.
    """


class Store(ABC):
    """Object storage with S3 semantics. Implementations: S3Store, LocalStore."""

    #: Printable location, e.g. 's3://quantlab-raw' or '/data/raw'. Never holds secrets.
    uri: str

    @property
    def location(self) -> str:
        """Where the store is, for messages (S3Store names its endpoint). No secrets."""
        return f"store {self.uri}"

    @abstractmethod
    def check(self) -> None:
        """Verify the store is reachable and usable; raise StoreConfigError naming the problem."""

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """Common prefixes one level below `prefix` (a LIST with Delimiter='/').

        `prefix` is '' or ends with '/'; results are full prefixes ending with '/',
        in key order.
        """

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively, in key order."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    @abstractmethod
    def get_bytes(self, key: str) -> tuple[bytes, str]:
        """(content, etag). Raises NotFound."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> ObjectInfo:
        """Download `key` to local `path` (written atomically). Raises NotFound."""

    @abstractmethod
    def put_file(
        self,
        key: str,
        path: Path,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Upload local `path` to `key` (multipart when large); visible only when complete.

        The conditions are put_bytes's: if_match writes only over the object with
        that ETag (PreconditionFailed when it differs or the object is gone),
        if_none_match only where no object exists. A failed condition leaves
        nothing behind (S3: the multipart upload is aborted).
        """

    @abstractmethod
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write `data` to `key`, return the new ETag (normalized, as in ObjectInfo).

        if_match: write only if the current object's ETag equals it (quoted or not).
        if_none_match: write only if no object exists at `key`.
        Either condition failing raises PreconditionFailed.
        """

    @abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete `key`; deleting a missing key is not an error.

        if_match: delete only if the current object's ETag equals it (quoted or
        not); PreconditionFailed when it differs or when the object is gone. This
        is how a lease is released without ever deleting the next holder's lock.
        """

    def remove_tombstone(self, key: str) -> None:
        """Remove what a conditional `delete` left at `key` on a store that cannot delete
        conditionally (S3Store on Ceph RGW 16.2 writes a tombstone). Call it only where
        no other writer may be creating `key` (under its lease). Nothing to do here."""
        return None

    def data_reader(self) -> DataReader:
        """How the fetch reads this store's raw objects (see "The data path" above).

        This default goes through `get_file`; LocalStore and S3Store have cheaper ones.
        """
        return StoreReader(self)

    def clock_offset(self, host_clock: Callable[[], float] = time.time) -> float:
        """Seconds to add to `host_clock()` to get the store's time (see compressor/clock.py).

        Lease expiry and "the newer attempt wins" compare times written by
        different hosts; measured against the one store they share, those times
        agree however far the hosts' own clocks drift. A store without a clock
        of its own (a local directory) shares the host's: 0.0.
        """
        return 0.0

    def check_conditional_writes(self, prefix: str) -> None:
        """StoreConfigError unless writes honour if_none_match and if_match, and
        deletes honour if_match.

        Leases and the state's compare-and-swap rely on them; an S3-compatible
        server that ignores If-None-Match/If-Match makes both last-writer-wins
        without any error, and one that ignores If-Match on DELETE lets a run
        releasing its lease delete the next holder's lock. Writes one small probe
        object under `prefix` (a new key per call, so concurrent runs don't
        disturb each other) three times, tries to delete it with a wrong ETag,
        then deletes it: call it once per run, only on a store the run writes to.
        """
        key = f"{prefix}conditional-writes-{uuid.uuid4().hex}"
        try:
            ignored = self._conditions_ignored(key)
        except BaseException:
            with suppress(StoreError):
                self.delete(key)
            raise
        self.delete(key)
        if ignored:
            raise StoreConfigError(
                f"{self.location} does not honour conditional writes "
                f"(If-None-Match/If-Match); leases and state need them ({ignored})"
            )

    def _conditions_ignored(self, key: str) -> str | None:
        """How the store failed the probe on the fresh `key`, or None if it passed.

        The writes meant to fail carry bytes other than the object's: a lost reply
        retried into a 412 is never taken for their own write (S3Store.put_bytes).
        """
        try:
            self.put_bytes(key, b"probe 1", if_none_match=True)
        except (StoreConfigError, TransientStoreError):
            raise
        except StoreError as exc:  # e.g. NotImplemented: the server rejects the header
            return f"a create with If-None-Match failed: {exc}"
        wrong_etag = hashlib.md5(b"probe 0").hexdigest()
        must_fail = {
            "a second create with If-None-Match succeeded": lambda: self.put_bytes(
                key, b"probe 2", if_none_match=True
            ),
            "a write with a wrong If-Match ETag succeeded": lambda: self.put_bytes(
                key, b"probe 2", if_match=wrong_etag
            ),
        }
        for what, write in must_fail.items():
            try:
                write()
            except PreconditionFailed:
                continue
            return what
        try:
            self.delete(key, if_match=wrong_etag)
        except (StoreConfigError, TransientStoreError):
            raise
        except PreconditionFailed:
            pass
        except StoreError as exc:  # e.g. NotImplemented: the server rejects the header
            return f"a delete with a wrong If-Match ETag failed: {exc}"
        else:
            return "a delete with a wrong If-Match ETag succeeded"
        if self.head(key) is None:
            return "a delete with a wrong If-Match ETag removed the object"
        return None

    def remove_stale_partials(self, max_age_s: float = 86400.0) -> int:
        """Clean up invisible leftovers of writers killed mid-write; returns how many.

        Local store: temp files; S3: incomplete multipart uploads under the
        store's prefix. Only leftovers older than `max_age_s` are touched, so a
        concurrent run's in-flight write is safe with a generous age.
        """
        return 0


# -- the data path --------------------------------------------------------------


@dataclass(frozen=True)
class ObjectData:
    """One object's bytes, and its size and ETag as the store served them."""

    data: pa.Buffer
    info: ObjectInfo


@dataclass(frozen=True)
class LocalObject:
    """An object of a local store, as the file that holds it.

    `path` is real (no symlink in it) and under the store's root; `stamp` is
    (st_dev, st_ino, st_size, st_mtime_ns) of the file when `info` was taken:
    a file replaced or rewritten since then has another stamp.
    """

    path: Path
    info: ObjectInfo
    stamp: tuple[int, int, int, int]


class DataReader(ABC):
    """Reads whole objects of one store for the merge."""

    #: Whether `read` keeps the bytes in memory cheaply. False: the store's objects
    #: are best read as files (`read_to_file`), whatever the memory budget.
    in_memory = True

    @abstractmethod
    def read(self, key: str) -> ObjectData:
        """The object's bytes. Raises NotFound, ObjectUnreadable, StoreError."""

    @abstractmethod
    def read_to_file(self, key: str, path: Path) -> ObjectInfo:
        """Write the object to local `path` (atomically: a partial file is never seen there)."""

    def read_tail(self, listed: ObjectInfo, nbytes: int) -> tuple[bytes, ObjectInfo]:
        """The last `nbytes` of the object (a Parquet footer), and its size and ETag as
        served. This default reads it whole; readers that can ask for a range do."""
        got = self.read(listed.key)
        return got.data.to_pybytes()[-nbytes:], got.info


class InPlaceReader(DataReader):
    """A reader whose objects are local files the merge can read where they lie."""

    @abstractmethod
    def locate(self, key: str) -> LocalObject:
        """The object's file, its info (size, ETag) and stamp. Raises NotFound,
        ObjectUnreadable, StoreError (a key that is not a regular file under the root)."""

    @abstractmethod
    def changed(self, obj: LocalObject) -> bool:
        """Whether the file is no longer the one `locate` found (replaced, rewritten, gone)."""

    def read_tail(self, listed: ObjectInfo, nbytes: int) -> tuple[bytes, ObjectInfo]:
        obj = self.locate(listed.key)
        with obj.path.open("rb") as fh:
            fh.seek(max(0, obj.info.size - nbytes))
            return fh.read(nbytes), obj.info


class ObjectSource(Protocol):
    """What a StoreReader reads through: a Store's own GETs (any Store is one)."""

    def get_bytes(self, key: str) -> tuple[bytes, str]: ...

    def get_file(self, key: str, path: Path) -> ObjectInfo: ...


class StoreReader(DataReader):
    """Through the Store interface: `get_file` (today's fetch), `get_bytes` for `read`.

    Objects are read as files (`in_memory` False): a store with no data path of its
    own is a wrapper or a test double, and its `get_file` is what it intercepts.
    """

    in_memory = False

    def __init__(self, store: ObjectSource) -> None:
        self.store = store

    def read(self, key: str) -> ObjectData:
        data, etag = self.store.get_bytes(key)
        return ObjectData(pa.py_buffer(data), ObjectInfo(key, len(data), etag))

    def read_to_file(self, key: str, path: Path) -> ObjectInfo:
        return self.store.get_file(key, path)
