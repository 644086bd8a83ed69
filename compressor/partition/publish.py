"""Publish: the commit protocol, and the only code that writes outputs to the compact store.

Publish order (docs/guarantees.md "Guarantees under failure"; any crash or pause leaves
a reader-consistent bucket):

1. delete the old meta.json if there is one (the partition disappears for readers);
2. upload data.parquet (multipart when large);
3. put meta.json last, naming the uploaded data.parquet by its ETag.

Each write is conditional on what the writer saw under its lease (`Published`), so
whenever meta.json is visible, the data.parquet beside it is the one it names, also
during --overwrite and when a paused writer wakes up after losing its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from compressor.discovery import Partition
from compressor.labels import RULES_VERSION, Label
from compressor.layout import PartitionId
from compressor.meta import Meta, Published, read_published
from compressor.storage.base import (
    PreconditionFailed,
    Store,
    StoreError,
    TransientStoreError,
)

log = logging.getLogger(__name__)


def no_fence() -> None:
    return None



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
    fence: Callable[[], None] = no_fence,
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
            _delete_meta(compact, pid, base)
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


def _delete_meta(compact: Store, pid: PartitionId, base: Published) -> None:
    """Delete the meta.json `base` saw. Already gone while data.parquet is still the one
    `base` saw is the state we want: a writer that lost its lease had its own delete of
    the same meta.json land late (a request held in flight past the takeover). Anything
    else that changed is another writer's work: PreconditionFailed."""
    try:
        compact.delete(pid.meta_key, if_match=base.meta_etag)
    except PreconditionFailed:
        now = read_published(compact, pid)
        if now.meta_etag is not None or now.problem is not None or now.data != base.data:
            raise
        log.info("%s: meta.json already deleted (a late delete of a run that lost its "
                 "lease); going on", pid.state_key)


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

