"""A multipart upload: a large file sent in parts, in parallel, then completed with
the write's conditions; and the removal of uploads a killed run left behind.

Until CompleteMultipartUpload nothing is visible, so that is where the conditions
go (AWS honours If-Match and If-None-Match there), and any failure, a failed
condition included, aborts the upload so nothing half shows. A server that ignores
conditions there never gets a conditional upload in parts (compressor/storage/s3compat.py,
docs/operations.md "Store compatibility").

Separate from s3.py because it is the one write of many requests (parts, threads,
abort); the outcome of its condition is the store's single conditional-write rule,
which it calls. It knows the store by a protocol (S3Uploader), so s3.py imports it
and it never imports s3.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from .base import ObjectInfo, StoreError
from .s3compat import S3Fallible, completed_etag
from .s3errors import error_code

#: Parts of one multipart upload sent at once.
_UPLOAD_THREADS = 4
#: S3's most parts in one upload.
_MAX_PARTS = 10_000


class S3Uploader(S3Fallible, Protocol):
    """What a multipart upload uses of the S3Store (s3.py's S3Store is one)."""

    bucket: str
    prefix: str
    multipart_chunksize: int
    _client: Any

    def _full(self, key: str) -> str: ...

    def _mapped(self, op: str, key: str | None) -> AbstractContextManager[None]: ...

    def _error(self, exc: ClientError | BotoCoreError, op: str, key: str | None
               ) -> StoreError: ...

    def _conditional(self, key: str, ours: str, if_match: str | None, if_none_match: bool,
                     send: Callable[[dict[str, str]], str]) -> str: ...

    def start_upload(self, key: str) -> str: ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str: ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...


def put_multipart(
    store: S3Uploader, key: str, path: Path, size: int, if_match: str | None,
    if_none_match: bool,
) -> ObjectInfo:
    """Parts in parallel, then complete (with the conditions); aborted on any
    failure, a failed condition included, so nothing half shows."""
    chunk = max(store.multipart_chunksize, -(-size // _MAX_PARTS))
    upload_id = store.start_upload(key)
    try:
        uploaded = _put_parts(store, key, upload_id, path, size, chunk)
        expected = multipart_etag([md5 for _, md5 in uploaded])

        def send(conditions: dict[str, str]) -> str:
            resp = store._client.complete_multipart_upload(
                Bucket=store.bucket,
                Key=store._full(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": [
                    {"ETag": etag, "PartNumber": n + 1} for n, (etag, _) in enumerate(uploaded)
                ]},
                **conditions,
            )
            return completed_etag(store, key, str(resp.get("ETag") or ""), expected)

        etag = store._conditional(key, expected, if_match, if_none_match, send)
    except BaseException:
        with suppress(StoreError, ClientError, BotoCoreError):
            store.abort_upload(key, upload_id)
        raise
    return ObjectInfo(key, size, etag)


def _put_parts(
    store: S3Uploader, key: str, upload_id: str, path: Path, size: int, chunk: int
) -> list[tuple[str, bytes]]:
    """Send the file's parts of `chunk` bytes, _UPLOAD_THREADS at once: (ETag as the
    server gave it, md5 digest) per part, in order."""
    offsets = list(range(0, size, chunk))
    numbers = range(1, len(offsets) + 1)

    def put_part(number: int, offset: int) -> tuple[str, bytes]:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(chunk)
        return store.upload_part(key, upload_id, number, data), hashlib.md5(data).digest()

    with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
        return list(pool.map(put_part, numbers, offsets))


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a completed multipart upload of unencrypted (or SSE-S3)
    parts: md5 of the concatenated part md5 digests, then '-' and the part count."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def abort_stale(store: S3Uploader, max_age_s: float) -> int:
    """Abort incomplete multipart uploads under the prefix older than `max_age_s`."""
    cutoff = time.time() - max_age_s
    aborted = 0
    with store._mapped("list uploads", None):
        pages = store._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=store.bucket, Prefix=store.prefix
        )
        stale = [
            (up["Key"], up["UploadId"])
            for page in pages
            for up in page.get("Uploads", [])
            if up["Initiated"].timestamp() < cutoff
        ]
    for full_key, upload_id in stale:
        try:
            store._client.abort_multipart_upload(
                Bucket=store.bucket, Key=full_key, UploadId=upload_id
            )
            aborted += 1
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) != "NoSuchUpload":  # gone already: another run aborted it
                raise store._error(exc, "abort upload", full_key[len(store.prefix) :]) from None
    return aborted
