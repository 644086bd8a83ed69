"""Fetch: a partition's raw objects as local files for the merge.

Each object is checked against its listing (size and ETag): an object changed
since it was listed fails the partition (retryable), so a late rewrite is never
merged as half of two listings. One unreadable object fails its partition naming
the key; the run goes on (README "Failure classes").
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from compressor.discovery import Partition
from compressor.merge_errors import MergeAborted
from compressor.partition import never
from compressor.storage.base import (
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
    """A raw object changed between listing and download; retry on the next run."""



class RawUnreadableError(StoreError):
    """One raw object cannot be read (403 from a foreign KMS key, an archived object).

    The partition fails naming `key` (the state's failed_key) and the run goes on;
    it is retried by the next run, so restoring the object is all it takes.
    """

    def __init__(self, key: str, cause: ObjectUnreadable) -> None:
        self.key = key
        super().__init__(f"{key}: cannot be read: {cause}")






def download(
    partition: Partition,
    raw: Store,
    directory: Path,
    workers: int,
    should_stop: Callable[[], bool] = never,
) -> list[tuple[Path, str]]:
    """Fetch every raw file to `directory` (names keep key order); [(path, key)].

    A stop request is noticed within STOP_POLL_S: queued downloads are dropped and
    the ones in flight are left to finish in the background.
    """
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(directory / f"{n:06d}.parquet", info) for n, info in enumerate(partition.files)]
    stop = threading.Event()

    def fetch(path: Path, listed: ObjectInfo) -> None:
        if stop.is_set():
            return
        try:
            got = raw.get_file(listed.key, path)
        except ObjectUnreadable as exc:
            raise RawUnreadableError(listed.key, exc) from None
        if got.size != listed.size or got.etag != listed.etag:  # ObjectInfo ETags are unquoted
            raise RawChangedError(f"{listed.key}: raw object changed since it was listed")

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="get")
    aborted = False
    try:
        pending = {pool.submit(fetch, path, info) for path, info in jobs}
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
    return [(path, info.key) for path, info in jobs]


