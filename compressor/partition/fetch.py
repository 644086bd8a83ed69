"""Fetch: a partition's raw objects, ready for the merge.

Each input reaches the merge in the cheapest form the raw store allows (its
`data_reader()`, "The data path" in compressor/storage/base.py):

- a LocalStore: the raw files themselves, where they lie (no copy); their real
  paths, always under the store's root;
- S3: each object's bytes in memory (`MemoryInput`, named by its raw key) while
  the partition's bytes so far, in key order, fit in `fetch_budget_bytes`; the
  objects past that point go to temp files in the partition's temp dir;
- any other store: temp files through its `get_file`, as before.

Each object is checked against its listing (size and ETag): an object changed
(or gone) since it was listed fails the partition (RawChangedError, retryable),
so a late rewrite is never merged as half of two listings. Files merged in place
are checked once more after the merge (`Fetched.check_unchanged`): one rewritten
or replaced while the merge read it fails the partition the same way. One
unreadable object fails its partition naming the key; the run goes on (docs/guarantees.md
"Failure classes"). Errors name the raw key, never a temp path.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

from compressor.discovery import Partition
from compressor.merge import MemoryInput, MergeAborted, Source, source_name
from compressor.partition import never
from compressor.storage.base import (
    DataReader,
    InPlaceReader,
    LocalObject,
    NotFound,
    ObjectData,
    ObjectInfo,
    ObjectUnreadable,
    Store,
    StoreError,
    TransientStoreError,
)
from compressor.text import human_size

log = logging.getLogger(__name__)


#: Raw objects downloaded at once per partition.
DOWNLOAD_WORKERS = 16
#: How often a running download checks for a stop request, seconds.
STOP_POLL_S = 0.2
#: Bytes of raw objects a partition keeps in memory by default; the rest go to temp files.
DEFAULT_FETCH_BUDGET = 256 << 20
#: Files located in place between two checks for a stop request (a few ms of work).
LOCATE_POLL_FILES = 256
#: Objects larger than this are streamed to their temp file, never held whole in memory.
STREAM_OVER_BYTES = 16 << 20


class TempSpaceError(OSError):
    """The temp disk (--tmp-dir) filled up: the partition fails (retryable), one clear line."""

    @classmethod
    def for_partition(cls, partition: Partition, tmp_root: Path) -> TempSpaceError:
        try:
            free = human_size(shutil.disk_usage(tmp_root).free)
        except OSError:
            free = "?"
        return cls(
            f"temp disk full: {free} free in {tmp_root}; this partition has "
            f"{human_size(partition.total_bytes)} of raw files and merging needs about 2-3x "
            "that: free space or point --tmp-dir at a bigger disk"
        )



def check_room(partition: Partition, tmp_root: Path) -> None:
    """Fail before downloading when the raw files alone cannot fit in the temp dir."""
    try:
        free = shutil.disk_usage(tmp_root).free
    except OSError:
        return  # not knowable here: the writes will tell
    if free < partition.total_bytes:
        raise TempSpaceError.for_partition(partition, tmp_root)



def no_space(exc: BaseException) -> bool:
    """Whether a local write failed for lack of space (stores keep only the strerror)."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        os.strerror(code) in str(exc) for code in (errno.ENOSPC, errno.EDQUOT)
    )



class RawChangedError(TransientStoreError):
    """A raw object changed (or vanished) between listing and merge; retry on the next run."""



class RawUnreadableError(StoreError):
    """One raw object cannot be read (403 from a foreign KMS key, an archived object).

    The partition fails naming `key` (the state's failed_key) and the run goes on;
    it is retried by the next run, so restoring the object is all it takes.
    """

    def __init__(self, key: str, cause: ObjectUnreadable) -> None:
        self.key = key
        super().__init__(f"{key}: cannot be read: {cause}")


@dataclass(frozen=True)
class RawInput:
    """One raw object as the merge gets it.

    `source` is a MemoryInput (its bytes, named `key`), a temp file holding a copy,
    or, fetched in place, the raw file itself.
    """

    key: str
    source: Source

    @property
    def name(self) -> str:
        """How the merge's errors name this input (see compressor.merge.schema.source_name)."""
        return source_name(self.source)


@dataclass
class Fetched:
    """A partition's inputs in key order, and what it takes to trust them to the end."""

    inputs: list[RawInput]
    #: Bytes held in memory, written to temp files, and merged in place.
    memory_bytes: int = 0
    file_bytes: int = 0
    in_place_bytes: int = 0
    _reader: InPlaceReader | None = None
    _located: list[LocalObject] = field(default_factory=list)

    def key_of(self, name: str) -> str | None:
        """The raw key of the input the merge names `name` (None if none is)."""
        for raw_input in self.inputs:
            if raw_input.name == name:
                return raw_input.key
        return None

    def release(self) -> None:
        """Drop the inputs (the bytes held in memory) once the merge is done with them."""
        self.inputs = []

    def check_unchanged(self) -> None:
        """RawChangedError naming the first raw file merged in place that is no longer
        the one the fetch checked against the listing (rewritten, replaced, removed).

        Call it after the merge (and when the merge fails: a file changing under it
        may be why). Copies and bytes in memory cannot change: nothing to do.
        """
        if self._reader is None:
            return
        for obj in self._located:
            if self._reader.changed(obj):
                raise RawChangedError(
                    f"{obj.info.key}: raw object changed while it was being merged"
                )


def fetch(
    partition: Partition,
    raw: Store,
    directory: Path,
    *,
    workers: int = DOWNLOAD_WORKERS,
    fetch_budget_bytes: int = DEFAULT_FETCH_BUDGET,
    should_stop: Callable[[], bool] = never,
) -> Fetched:
    """Every raw file of `partition`, checked against its listing, ready for the merge.

    In place for a local store, the files located one after another in the
    calling thread (a stop request is noticed within LOCATE_POLL_FILES files;
    `workers` does not apply). Else in memory while the bytes so far (in key
    order) fit in `fetch_budget_bytes`, then as temp files under `directory`
    (named in key order). `workers` objects are read at once. A stop request is
    noticed within STOP_POLL_S: queued reads are dropped and the ones in flight
    are left to finish in the background (MergeAborted).

    Raises RawChangedError (retryable), RawUnreadableError (naming the key),
    StoreError from the store, MergeAborted.
    """
    if fetch_budget_bytes < 0:
        raise ValueError(f"fetch_budget_bytes must be >= 0, got {fetch_budget_bytes}")
    reader = raw.data_reader()
    files = partition.files
    if isinstance(reader, InPlaceReader):
        located = _locate_all(reader, files, should_stop)
        inputs = [RawInput(obj.info.key, obj.path) for obj in located]
        return Fetched(inputs, in_place_bytes=sum(obj.info.size for obj in located),
                       _reader=reader, _located=located)

    in_memory = _memory_plan(files, fetch_budget_bytes if reader.in_memory else -1)
    if not all(in_memory):
        directory.mkdir(parents=True, exist_ok=True)

    def get(n: int, listed: ObjectInfo) -> Source:
        if in_memory[n]:
            got = _read(reader, listed)
            _check(listed, got.info)
            return MemoryInput(listed.key, got.data)
        path = directory / f"{n:06d}.parquet"
        _check(listed, _read_to_file(reader, listed, path))
        return path

    sources = _run(files, get, workers, should_stop)
    fetched = Fetched([RawInput(info.key, src) for info, src in zip(files, sources, strict=True)])
    for info, keep in zip(files, in_memory, strict=True):
        if keep:
            fetched.memory_bytes += info.size
        else:
            fetched.file_bytes += info.size
    return fetched


def _memory_plan(files: Sequence[ObjectInfo], budget: int) -> list[bool]:
    """Which files stay in memory: the longest prefix, in key order, within `budget`."""
    plan, total = [], 0
    for info in files:
        total += info.size
        plan.append(budget >= 0 and total <= budget)
    return plan


def _locate_all(
    reader: InPlaceReader, files: Sequence[ObjectInfo], should_stop: Callable[[], bool]
) -> list[LocalObject]:
    """Every file located, in order, in the calling thread; should_stop polled every
    LOCATE_POLL_FILES files (MergeAborted).

    Not on the download pool: a locate is a few syscalls and a little Python, all
    of it under the GIL, so threads would only add contention (16 of them took
    seconds for a partition of 17,280 files that one thread locates in a fraction
    of that).
    """
    located = []
    for n, listed in enumerate(files):
        if n % LOCATE_POLL_FILES == 0 and should_stop():
            raise MergeAborted("interrupted while downloading")
        located.append(_locate(reader, listed))
    return located


def _locate(reader: InPlaceReader, listed: ObjectInfo) -> LocalObject:
    try:
        obj = reader.locate(listed.key)
    except ObjectUnreadable as exc:
        raise RawUnreadableError(listed.key, exc) from None
    except NotFound:
        raise RawChangedError(f"{listed.key}: raw object gone since it was listed") from None
    _check(listed, obj.info)
    return obj


def _read(reader: DataReader, listed: ObjectInfo) -> ObjectData:
    try:
        return reader.read(listed.key)
    except ObjectUnreadable as exc:
        raise RawUnreadableError(listed.key, exc) from None
    except NotFound:
        raise RawChangedError(f"{listed.key}: raw object gone since it was listed") from None


def _read_to_file(reader: DataReader, listed: ObjectInfo, path: Path) -> ObjectInfo:
    """The object into `path`: streamed when large or when the reader wants files,
    else read whole and written here (so a failed write names the key, not `path`)."""
    if not reader.in_memory or listed.size > STREAM_OVER_BYTES:
        try:
            return reader.read_to_file(listed.key, path)
        except ObjectUnreadable as exc:
            raise RawUnreadableError(listed.key, exc) from None
        except NotFound:
            raise RawChangedError(
                f"{listed.key}: raw object gone since it was listed"
            ) from None
    got = _read(reader, listed)
    try:
        with open(path, "wb") as out:
            out.write(got.data)
    except OSError as exc:
        raise StoreError(
            f"{listed.key}: cannot write its copy to the temp dir: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    return got.info


def _check(listed: ObjectInfo, got: ObjectInfo) -> None:
    if got.size != listed.size or got.etag != listed.etag:  # ObjectInfo ETags are unquoted
        raise RawChangedError(f"{listed.key}: raw object changed since it was listed")


_T = TypeVar("_T")


def _run(
    files: Sequence[ObjectInfo],
    job: Callable[[int, ObjectInfo], _T],
    workers: int,
    should_stop: Callable[[], bool],
) -> list[_T]:
    """job(n, info) for every file, `workers` at once; the results in file order.

    The first failure is raised; a stop request is noticed within STOP_POLL_S
    (MergeAborted). Either way queued jobs are dropped and jobs in flight are
    left to finish in the background.
    """
    results: list[_T | None] = [None] * len(files)
    stop = threading.Event()

    def one(n: int, info: ObjectInfo) -> None:
        if stop.is_set():
            return
        results[n] = job(n, info)

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="get")
    aborted = False
    try:
        pending = {pool.submit(one, n, info) for n, info in enumerate(files)}
        while pending:
            done, pending = wait(pending, timeout=STOP_POLL_S, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
            if should_stop():
                aborted = True
                raise MergeAborted("interrupted while downloading")
    finally:
        stop.set()
        pool.shutdown(wait=not aborted, cancel_futures=True)
    return cast(list[_T], results)  # every job ran: none is None
