"""Compact one partition: download, merge, verify, publish with meta.json as commit marker.

Publish order (README "Guarantees"; any crash or pause leaves a reader-consistent
bucket):

1. delete the old meta.json if there is one (the partition disappears for readers);
2. upload data.parquet (multipart when large);
3. put meta.json last, naming the uploaded data.parquet by its ETag.

Each write is conditional on what the writer saw under its lease (`Published`), so
whenever meta.json is visible, the data.parquet beside it is the one it names, also
during --overwrite and when a paused writer wakes up after losing its lease.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor import __version__
from compressor.discovery import Partition
from compressor.layout import PartitionId
from compressor.merge_errors import MergeAborted, MergeInputError, MergeResourceError
from compressor.merge_writer import MergeResult, MergeSettings, merge_files
from compressor.meta import ORDERING_COLUMNS as META_ORDERING
from compressor.meta import Meta, Published, read_published
from compressor.quality.labels import RULES_VERSION, Label
from compressor.quality.metrics import DayQuality, QualityAccumulator
from compressor.storage.base import (
    ObjectInfo,
    ObjectUnreadable,
    PreconditionFailed,
    Store,
    StoreError,
    TransientStoreError,
)
from compressor.text import human_size, utc_iso

log = logging.getLogger(__name__)

ORDERING_COLUMNS = list(META_ORDERING)
#: Raw objects downloaded at once per partition.
DOWNLOAD_WORKERS = 16
#: How often a running download checks for a stop request, seconds.
STOP_POLL_S = 0.2
#: Rows per batch when the output is re-read for verification.
VERIFY_BATCH_ROWS = 262_144
#: Per-partition temp dirs are named `<TMP_PREFIX><pid>-<random>` under the tmp root.
TMP_PREFIX = "qlc-part-"


class BadInputError(Exception):
    """A raw object the merge cannot use; the partition is quarantined.

    The message names the raw `key` (never the local download path); `cause` is the
    merge's own error (column, corrupt or not).
    """

    def __init__(self, key: str, cause: MergeInputError) -> None:
        self.key = key
        self.cause = cause
        column = f" column {cause.column!r}" if cause.column else ""
        super().__init__(f"{key}{column}: {cause.reason}")


class VerificationError(Exception):
    """The merged file failed its own check; nothing was published."""


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


def _check_room(partition: Partition, tmp_root: Path) -> None:
    """Fail before downloading when the raw files alone cannot fit in the temp dir."""
    try:
        free = shutil.disk_usage(tmp_root).free
    except OSError:
        return  # not knowable here: the writes will tell
    if free < partition.total_bytes:
        raise TempSpaceError.for_partition(partition, tmp_root)


def _no_space(exc: BaseException) -> bool:
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


@dataclass(frozen=True)
class CompactSettings:
    tmp_root: Path
    merge: MergeSettings = field(default_factory=MergeSettings)
    download_workers: int = DOWNLOAD_WORKERS
    skip_corrupt: bool = False


@dataclass
class CompactResult:
    """What one compaction published."""

    rows: int
    size_bytes: int
    sha256: str
    quality: DayQuality
    merge: MergeResult
    meta: Meta
    skipped_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verified:
    rows: int
    ts_event_min: int | None
    ts_event_max: int | None
    size_bytes: int
    sha256: str


def _never() -> bool:
    return False


def _no_fence() -> None:
    return None


def compact_partition(
    partition: Partition,
    raw: Store,
    compact: Store,
    settings: CompactSettings,
    *,
    should_stop: Callable[[], bool] = _never,
    fence: Callable[[], None] = _no_fence,
    base: Published | None = None,
    label: Label = Label.UNKNOWN,
    before_publish: Callable[[], None] = _no_fence,
) -> CompactResult:
    """Compact and publish one partition; its temp dir is removed whatever happens.

    `base` is the partition's outputs as read under the lease (read now when None):
    the publish replaces exactly them (see `publish`).
    Raises BadInputError (quarantine), MergeAborted (stop asked), VerificationError,
    PublishConflict, and StoreError/OSError from the stores and the disk.
    """
    if base is None:
        base = read_published(compact, partition.pid)
    settings.tmp_root.mkdir(parents=True, exist_ok=True)
    _check_room(partition, settings.tmp_root)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=settings.tmp_root))
    try:
        started = time.monotonic()
        try:
            inputs = download(partition, raw, work / "in", settings.download_workers,
                              should_stop)
            output = work / "data.parquet"
            merged, quality, skipped = _merge(partition, inputs, output, work, settings,
                                              should_stop)
            verified = verify_output(output, merged.input_rows, should_stop)
        except (OSError, StoreError) as exc:
            if _no_space(exc):
                raise TempSpaceError.for_partition(partition, settings.tmp_root) from None
            raise
        skipped_keys = [key for path, key in inputs if path in skipped]
        meta = build_meta(partition, verified, quality, merged, skipped_keys,
                          time.monotonic() - started, label)
        if should_stop():  # last moment to give up cheaply: nothing published yet
            raise MergeAborted("interrupted before publishing")
        before_publish()
        final = publish(compact, partition, output, meta, base, fence)
        return CompactResult(verified.rows, verified.size_bytes, verified.sha256, quality,
                             merged, final, skipped_keys)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clean_stale_tmp(tmp_root: Path, is_alive: Callable[[int], bool]) -> list[Path]:
    """Remove temp dirs left by runs on this host whose process is gone; returns them."""
    removed = []
    for path in tmp_root.glob(f"{TMP_PREFIX}*") if tmp_root.is_dir() else ():
        pid_text = path.name[len(TMP_PREFIX):].split("-", 1)[0]
        if path.is_dir() and pid_text.isdigit() and not is_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------- download


def download(
    partition: Partition,
    raw: Store,
    directory: Path,
    workers: int,
    should_stop: Callable[[], bool] = _never,
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


# --------------------------------------------------------------------------- merge


def _merge(
    partition: Partition,
    inputs: Sequence[tuple[Path, str]],
    output: Path,
    work: Path,
    settings: CompactSettings,
    should_stop: Callable[[], bool],
) -> tuple[MergeResult, DayQuality, set[Path]]:
    """merge_files, again without each corrupt object when --skip-corrupt asks for it."""
    keys = {path: key for path, key in inputs}
    skipped: set[Path] = set()
    spill = work / "spill"
    spill.mkdir(exist_ok=True)
    quality = QualityAccumulator(partition.pid.date, output, partition.pid.stream)
    while True:
        quality.reset()
        paths = [path for path, _ in inputs if path not in skipped]
        try:
            result = merge_files(paths, output, tmp_dir=spill, settings=settings.merge,
                                 on_batch=quality, should_stop=should_stop)
            return result, quality.result(result), skipped
        except MergeResourceError as exc:  # the machine's fault, not the object's
            key = keys.get(Path(exc.path), exc.path)
            raise MergeResourceError(key, "reading it", exc) from None
        except MergeInputError as exc:
            key = keys.get(Path(exc.path), exc.path)
            if not (settings.skip_corrupt and exc.corrupt and Path(exc.path) in keys):
                raise BadInputError(key, exc) from exc
            log.warning("%s: corrupt, skipped (--skip-corrupt): %s", key, exc.reason)
            skipped.add(Path(exc.path))
            output.unlink(missing_ok=True)


# --------------------------------------------------------------------------- verify


def verify_output(
    path: Path, expected_rows: int, should_stop: Callable[[], bool] = _never
) -> Verified:
    """Re-read the merged file: row count, ts_event non-decreasing, seq == 0..N-1.

    `should_stop` is polled per batch (MergeAborted), as the merge does."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if names[:2] != ORDERING_COLUMNS:
        raise VerificationError(f"{path.name}: columns start {names[:2]}, not {ORDERING_COLUMNS}")
    rows = pf.metadata.num_rows
    if rows != expected_rows:
        raise VerificationError(f"{path.name}: {rows} rows, but the inputs hold {expected_rows}")
    seen, ts_min, ts_max = 0, None, None
    for batch in pf.iter_batches(batch_size=VERIFY_BATCH_ROWS, columns=ORDERING_COLUMNS):
        if should_stop():
            raise MergeAborted("interrupted while verifying")
        ts, seq = batch.column(0), batch.column(1)
        if ts.null_count or seq.null_count:
            raise VerificationError(f"{path.name}: null ts_event or seq near row {seen}")
        ts_int = pc.cast(ts, "int64")
        first, last = ts_int[0].as_py(), ts_int[-1].as_py()
        if ts_max is not None and first < ts_max:
            raise VerificationError(f"{path.name}: ts_event decreases at row {seen}")
        if len(ts_int) > 1 and pc.min(pc.pairwise_diff(ts_int)).as_py() < 0:
            raise VerificationError(f"{path.name}: ts_event decreases near row {seen}")
        if seq[0].as_py() != seen or (
            len(seq) > 1 and not _all_equal(pc.pairwise_diff(seq), 1)
        ):
            raise VerificationError(f"{path.name}: seq is not 0..N-1 near row {seen}")
        ts_min = first if ts_min is None else ts_min
        ts_max = last
        seen += len(batch)
    if seen != rows:
        raise VerificationError(f"{path.name}: footer says {rows} rows, read {seen}")
    return Verified(rows, ts_min, ts_max, path.stat().st_size, file_sha256(path))


def _all_equal(values: Any, expected: int) -> bool:
    valid = pc.drop_null(values)
    return bool(pc.all(pc.equal(valid, expected)).as_py())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- meta + publish


def build_meta(
    partition: Partition,
    verified: Verified,
    quality: DayQuality,
    merged: MergeResult,
    skipped_keys: list[str],
    seconds: float,
    label: Label = Label.UNKNOWN,
) -> Meta:
    """meta.json: BRIEF §2 keys, the source fingerprint, the day label and figures.

    `data_etag` is filled in by `publish` once the store has named the upload."""
    figures = asdict(merged)
    figures.pop("columns", None)
    figures["seconds"] = round(seconds, 3)
    return Meta(
        rows=verified.rows,
        ts_event_min=verified.ts_event_min,
        ts_event_max=verified.ts_event_max,
        sha256=verified.sha256,
        size_bytes=verified.size_bytes,
        source_files=partition.file_count - len(skipped_keys),
        source_fingerprint=partition.fingerprint,
        stream_type=partition.pid.stream,
        skipped_files=tuple(skipped_keys),
        extra={
            "day_quality": label.value,
            "post_filter_version": RULES_VERSION,
            "quality": quality.to_json(),
            "compactor_version": __version__,
            "created_at": utc_iso(time.time()),
            "merge": figures,
        },
    )


def relabel(compact: Store, pid: PartitionId, base: Published, label: Label) -> Meta:
    """Put the day's new label into an up-to-date meta.json, in place.

    The data is unchanged and the new meta.json names the same data.parquet, so the
    pair stays whole at every moment; If-Match on the meta.json read under the lease
    makes any other writer's change win (PublishConflict)."""
    assert base.meta is not None and base.meta_etag is not None
    extra = {**base.meta.extra, "day_quality": label.value,
             "post_filter_version": RULES_VERSION}
    meta = replace(base.meta, extra=extra)
    try:
        compact.put_bytes(pid.meta_key, meta.to_bytes(), if_match=base.meta_etag)
    except PreconditionFailed:
        raise _conflict(compact, pid, "changed by another run while relabelling") from None
    return meta


class PublishConflict(TransientStoreError):
    """Another writer changed the partition's outputs after this one read them.

    `published` is what the store holds now: the job counts the partition up to
    date when that is a whole pair of the same raw listing, else failed (retried).
    """

    def __init__(self, message: str, published: Published) -> None:
        super().__init__(message)
        self.published = published


def publish(
    compact: Store,
    partition: Partition,
    data_path: Path,
    meta: Meta,
    base: Published,
    fence: Callable[[], None] = _no_fence,
) -> Meta:
    """Replace exactly the pair `base` saw with ours, meta.json last; the Meta written.

    1. delete the old meta.json, If-Match its ETag in `base` (readers stop seeing it);
    2. upload data.parquet, If-Match the ETag in `base` (If-None-Match when absent);
    3. put meta.json, naming the uploaded ETag, If-None-Match.

    Every write is conditional on what the writer saw under its lease, so a writer
    paused past its lease (whose fence check passed before the pause) cannot
    overwrite a newer pair: its write fails with PublishConflict. The fence still
    runs before each write, so a writer that knows it lost the lease stops early.
    """
    pid = partition.pid
    try:
        if base.meta_etag is not None:
            fence()
            compact.delete(pid.meta_key, if_match=base.meta_etag)
        fence()
        if base.data is not None:
            uploaded = compact.put_file(pid.data_key, data_path, if_match=base.data.etag)
        else:
            uploaded = compact.put_file(pid.data_key, data_path, if_none_match=True)
    except PreconditionFailed:
        raise _conflict(compact, pid, "changed by another run since this one read them") from None
    if uploaded.size != meta.size_bytes:
        raise TransientStoreError(
            f"{pid.data_key}: uploaded {uploaded.size} bytes, expected {meta.size_bytes}"
        )
    final = meta.with_data(uploaded)
    fence()
    try:
        compact.put_bytes(pid.meta_key, final.to_bytes(), if_none_match=True)
    except PreconditionFailed:
        _settle_meta_race(compact, pid, final, fence)
    return final


def _settle_meta_race(compact: Store, pid: PartitionId, final: Meta, fence: Callable[[], None]
                      ) -> None:
    """Our meta.json put found another: a writer that lost its lease put its own meta.json
    after we uploaded data.parquet. Ours is the data beside it, so, still holding the
    lease, replace that meta.json (which names another data.parquet) with ours."""
    now = read_published(compact, pid)
    if now.consistent or not final.describes(now.data) or now.meta_etag is None:
        raise _conflict(compact, pid, "meta.json put by another run meanwhile", now)
    log.warning("%s: %s; replacing it with ours", pid.state_key, now.mismatch())
    fence()
    try:
        compact.delete(pid.meta_key, if_match=now.meta_etag)
        compact.put_bytes(pid.meta_key, final.to_bytes(), if_none_match=True)
    except PreconditionFailed:
        raise _conflict(compact, pid, "meta.json changed by another run meanwhile") from None


def _conflict(
    compact: Store, pid: PartitionId, what: str, published: Published | None = None
) -> PublishConflict:
    if published is None:
        try:
            published = read_published(compact, pid)
        except StoreError:
            published = Published()
    return PublishConflict(f"{pid.prefix}: outputs {what}; nothing of ours is visible",
                           published)
