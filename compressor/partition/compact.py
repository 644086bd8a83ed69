"""One partition end to end: fetch -> merge (with the --skip-corrupt loop) -> verify -> publish.

Its temp dir is removed whatever happens. The caller (the job) holds the lease and
passes what it read under it (`base`), the fence and the day's label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from compressor import __version__
from compressor.discovery import Partition
from compressor.eventday import DAY_RULE
from compressor.labels import RULES_VERSION, Label
from compressor.merge import (
    MergeAborted,
    MergeInputError,
    MergeResourceError,
    MergeResult,
    MergeSettings,
    merge_files,
)
from compressor.meta import Meta, Published, read_published
from compressor.partition import never
from compressor.partition.edges import (
    EdgeFigures,
    neighbours_with_rows,
    place_rows,
    with_neighbours,
)
from compressor.partition.fetch import (
    DEFAULT_FETCH_BUDGET,
    DOWNLOAD_WORKERS,
    Fetched,
    TempSpaceError,
    check_room,
    fetch,
    no_space,
)
from compressor.partition.publish import no_fence, publish
from compressor.partition.verify import Verified, verify_output
from compressor.partition.workdir import work_dir
from compressor.quality.metrics import DayQuality, QualityAccumulator
from compressor.storage.base import (
    InPlaceReader,
    Store,
    StoreError,
)
from compressor.text import utc_iso

log = logging.getLogger(__name__)


class BadInputError(Exception):
    """A raw object the merge cannot use; the partition is quarantined.

    The message names the raw `key` (never a local path); `cause` is the
    merge's own error (column, corrupt or not).
    """

    def __init__(self, key: str, cause: MergeInputError) -> None:
        self.key = key
        self.cause = cause
        column = f" column {cause.column!r}" if cause.column else ""
        remedy = "" if cause.skippable else (
            " (--skip-corrupt does not skip a type conflict: fix or delete the object whose "
            "type is the odd one; README \"Runbook\")")
        super().__init__(f"{key}{column}: {cause.reason}{remedy}")


@dataclass(frozen=True)
class CompactSettings:
    tmp_root: Path
    merge: MergeSettings = field(default_factory=MergeSettings)
    download_workers: int = DOWNLOAD_WORKERS
    skip_corrupt: bool = False
    #: Raw bytes of one partition held in memory; the rest are fetched to temp files.
    fetch_budget_bytes: int = DEFAULT_FETCH_BUDGET


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


def compact_partition(
    partition: Partition,
    raw: Store,
    compact: Store,
    settings: CompactSettings,
    *,
    should_stop: Callable[[], bool] = never,
    fence: Callable[[], None] = no_fence,
    base: Published | None = None,
    label: Label = Label.UNKNOWN,
    before_publish: Callable[[], None] = no_fence,
    timings: dict[str, float] | None = None,
) -> CompactResult:
    """Compact and publish one partition; its temp dir is removed whatever happens.

    `base` is the partition's outputs as read under the lease (read now when None):
    the publish replaces exactly them (see `publish`).
    Raises BadInputError (quarantine), MergeAborted (stop asked), VerificationError,
    PublishConflict, and StoreError/OSError from the stores and the disk.
    `timings`, when given, gets each step's seconds as it ends: fetch, merge, verify, upload.
    """
    if base is None:
        base = read_published(compact, partition.pid)
    settings.tmp_root.mkdir(parents=True, exist_ok=True)
    check_room(partition, settings.tmp_root)
    with work_dir(settings.tmp_root) as work:
        started = lap = time.monotonic()
        try:
            inputs = with_neighbours(partition,
                                     neighbours_with_rows(partition, raw))
            fetched = fetch(inputs, raw, work / "in", workers=settings.download_workers,
                            fetch_budget_bytes=_fetch_budget(inputs, settings),
                            should_stop=should_stop)
            edge_figures = _place(partition, fetched, inputs)
            lap = _lap(timings, "fetch", lap)
            output = work / "data.parquet"
            try:
                merged, quality, skipped_keys = _merge(partition, fetched, output, work,
                                                       settings, should_stop)
            except BaseException:
                fetched.check_unchanged()  # a raw file changing under the merge is the story
                raise
            fetched.check_unchanged()
            fetched.release()  # the raw bytes held in memory are not needed past the merge
            lap = _lap(timings, "merge", lap)
            verified = verify_output(output, merged.input_rows, should_stop)
            lap = _lap(timings, "verify", lap)
        except (OSError, StoreError) as exc:
            if no_space(exc):
                raise TempSpaceError.for_partition(partition, settings.tmp_root) from None
            raise
        if edge_figures is not None:
            quality = replace(quality, rows_from_previous=edge_figures.rows_from_previous,
                              rows_from_next=edge_figures.rows_from_next,
                              rows_to_previous=edge_figures.rows_to_previous,
                              rows_to_next=edge_figures.rows_to_next)
        meta = build_meta(partition, verified, quality, merged, skipped_keys,
                          time.monotonic() - started, label, edge_figures)
        if should_stop():  # last moment to give up cheaply: nothing published yet
            raise MergeAborted("interrupted before publishing")
        before_publish()
        final = publish(compact, partition, output, meta, base, fence)
        _lap(timings, "upload", lap)
        return CompactResult(verified.rows, verified.size_bytes, verified.sha256, quality,
                             merged, final, skipped_keys)


def _place(partition: Partition, fetched: Fetched, inputs: Partition) -> EdgeFigures | None:
    """Rows in their event day (compressor.partition.edges). A day placed by flush day
    on both midnights merges its own files whole; its figures still say so."""
    edges = partition.edges
    if edges is None:
        return None
    if not edges.moves_rows:
        return EdgeFigures(edges.previous.value, edges.next.value)
    fetched.inputs, figures = place_rows(fetched.inputs, partition.pid.prefix, edges,
                                         inputs.files)
    return figures


def _fetch_budget(partition: Partition, settings: CompactSettings) -> int:
    """Raw bytes to hold in memory: the settings', unless the partition does not fit
    them and is big enough to merge in slices: then none, as slice processes read
    their inputs as files (docs/guarantees.md "How a run works"). A partition that fits stays
    in memory and is merged in this process: fetching to temp files would cost
    more client CPU per object than the slices save."""
    if _sliceable(partition, settings) and partition.total_bytes > settings.fetch_budget_bytes:
        return 0
    return settings.fetch_budget_bytes


def may_merge_in_slices(partition: Partition, settings: CompactSettings, raw: Store) -> bool:
    """Whether this partition's merge will run in slice processes: enough files,
    cores for them, and its inputs as files (a local store's, in place; or temp
    files, for a partition beyond the fetch budget). The run keeps spare slice
    processes only for such a plan."""
    if not _sliceable(partition, settings):
        return False
    in_place = isinstance(raw.data_reader(), InPlaceReader)
    return in_place or partition.total_bytes > settings.fetch_budget_bytes


def _sliceable(partition: Partition, settings: CompactSettings) -> bool:
    merge = settings.merge
    return merge.processes > 1 and partition.file_count >= merge.parallel_min_files


def _lap(timings: dict[str, float] | None, step: str, since: float) -> float:
    """Record the seconds since `since` as `step` (when timings are asked for); now."""
    now = time.monotonic()
    if timings is not None:
        timings[step] = now - since
    return now


def _merge(
    partition: Partition,
    fetched: Fetched,
    output: Path,
    work: Path,
    settings: CompactSettings,
    should_stop: Callable[[], bool],
) -> tuple[MergeResult, DayQuality, list[str]]:
    """merge_files, again without each corrupt object when --skip-corrupt asks for it.

    Returns the keys skipped, in key order. Errors name the raw key, whatever form
    the input had (bytes, temp file, raw file in place)."""
    skipped: set[str] = set()
    spill = work / "spill"
    spill.mkdir(exist_ok=True)
    quality = QualityAccumulator(partition.pid.date, output, partition.pid.stream)
    while True:
        quality.reset()
        sources = [item.source for item in fetched.inputs if item.key not in skipped]
        try:
            result = merge_files(sources, output, tmp_dir=spill, settings=settings.merge,
                                 on_batch=quality, should_stop=should_stop)
            skipped_keys = [item.key for item in fetched.inputs if item.key in skipped]
            return result, quality.result(result), skipped_keys
        except MergeResourceError as exc:  # the machine's fault, not the object's
            key = fetched.key_of(exc.path) or exc.path
            raise MergeResourceError(key, exc.action, exc.cause) from None
        except MergeInputError as exc:
            found = fetched.key_of(exc.path)
            key = found or exc.path
            if not (settings.skip_corrupt and exc.skippable and found is not None):
                raise BadInputError(key, exc) from exc
            log.warning("%s: %s, skipped (--skip-corrupt): %s", key,
                        "corrupt" if exc.corrupt else "unusable", exc.reason)
            skipped.add(key)
            output.unlink(missing_ok=True)


def build_meta(
    partition: Partition,
    verified: Verified,
    quality: DayQuality,
    merged: MergeResult,
    skipped_keys: list[str],
    seconds: float,
    label: Label = Label.UNKNOWN,
    edges: EdgeFigures | None = None,
) -> Meta:
    """meta.json: BRIEF §2 keys, the source fingerprint, the day label and figures.

    `data_etag` is filled in by `publish` once the store has named the upload."""
    figures = asdict(merged)
    figures.pop("columns", None)
    figures["seconds"] = round(seconds, 3)
    extra: dict[str, Any] = {"day_rule": DAY_RULE}
    if edges is not None:
        extra["edges"] = edges.to_json()
    return Meta(
        rows=verified.rows,
        ts_event_min=verified.ts_event_min,
        ts_event_max=verified.ts_event_max,
        sha256=verified.sha256,
        size_bytes=verified.size_bytes,
        source_files=partition.file_count - len([k for k in skipped_keys
                                                 if k.startswith(partition.pid.prefix)]),
        source_fingerprint=partition.fingerprint,
        stream_type=partition.pid.stream,
        skipped_files=tuple(skipped_keys),
        extra={
            **extra,
            "day_quality": label.value,
            "post_filter_version": RULES_VERSION,
            "quality": quality.to_json(),
            "compactor_version": __version__,
            "created_at": utc_iso(time.time()),
            "merge": figures,
        },
    )


