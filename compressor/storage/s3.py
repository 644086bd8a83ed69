"""S3 and S3-compatible object stores (AWS, MinIO, Ceph, moto) through boto3: the
S3Store, its listing, reads, writes and the one rule of a conditional write.

Around it, one module per concept, each knowing the store by a protocol so that
none imports this one: reaching the bucket (s3connect.py: the clients, the
start-up check, the clock), the error mapping (s3errors.py: what survives
botocore's retries becomes TransientStoreError, a GET or HEAD refused for one
object ObjectUnreadable, bucket-wide failures StoreConfigError; never server
text, so no credential leaks), multipart uploads (s3multipart.py), the fallbacks
for servers honouring fewer conditions than AWS (s3compat.py, found out by
s3probe.py: docs/operations.md "Store compatibility"), and the data path
(s3data.py). Credentials are handed to the boto3 session (and, on the first
`data_reader()`, to obstore) and not kept as attributes of the store object.

ETags are returned normalized (without the surrounding quotes S3 puts on them),
as the local store does; `if_match` accepts either form.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    CHUNK,
    DataReader,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
    md5_file,
    normalize_etag,
    temp_name,
)
from .s3compat import (
    TOMBSTONE,
    condition_headers,
    is_tombstone,
    learnt_unquoted,
    one_put_instead,
    refuse_over_one_put,
    send_again,
)
from .s3connect import (
    DEFAULT_CHECK_TIMEOUT_S,
    MAX_POOL_CONNECTIONS,
    check_try_timeout,
    first_list,
    new_clients,
    refuse_skew,
    server_date,
)
from .s3errors import NETWORK_ERRORS, S3Errors, error_code, was_retried
from .s3multipart import abort_stale, put_multipart
from .s3probe import ServerFeatures, probe

log = logging.getLogger(__name__)

MiB = 1 << 20
_LIST_PAGE = 1000


class S3Store(Store):
    """A bucket (optionally under a key prefix) on S3 or an S3-compatible server."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        *,
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT_S,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StoreConfigError(f"invalid bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = _redact(endpoint_url) if endpoint_url else f"AWS S3 ({region or 'default'})"
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self._max_attempts = max(1, max_attempts)
        self.check_timeout = check_timeout
        self._check_try_s = check_try_timeout(check_timeout, read_timeout)
        self._errors = S3Errors(bucket, self.endpoint, self._max_attempts)
        try:
            self._client, self._check_client = new_clients(
                endpoint_url,
                region,
                access_key,
                secret_key,
                max_attempts=self._max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                check_timeout=check_timeout,
            )
        except (BotoCoreError, ValueError) as exc:
            raise StoreConfigError(
                f"cannot set up S3 client for bucket {bucket!r} at {self.endpoint}: "
                f"{type(exc).__name__} (check the endpoint URL, the region and the credentials)"
            ) from None
        self._reader: DataReader | None = None
        self._reader_lock = threading.Lock()
        #: What the server honours (AWS until check_conditional_writes finds otherwise).
        self.features = ServerFeatures()
        self._make_reader = _reader_maker(
            self,
            endpoint_url=endpoint_url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            max_attempts=self._max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            pool_size=MAX_POOL_CONNECTIONS,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    def data_reader(self) -> DataReader:
        """GETs through obstore (compressor/storage/s3data.py), set up on first use.

        A subclass that overrides get_file or get_bytes keeps them (the default reader).
        """
        cls = type(self)
        if cls.get_file is not S3Store.get_file or cls.get_bytes is not S3Store.get_bytes:
            return super().data_reader()
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._make_reader()
            return self._reader

    @property
    def location(self) -> str:
        return f"S3 endpoint {self.endpoint} (bucket {self.bucket!r})"

    # ----------------------------------------------------------------- checks

    def check(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """A LIST of at most one key, then the clock check (compressor/storage/s3connect.py).

        An endpoint that refuses or never accepts connections fails fast
        (StoreConfigError, a few seconds). One that takes connections but does not
        answer, or answers with throttling, 5xx or a dropped connection, is tried
        again, one log line per failed try with its number, until `check_timeout`
        seconds have passed (docs/operations.md "Configuration", S3_CHECK_TIMEOUT): then
        StoreConfigError saying what was waited for.
        """
        resp = first_list(self, sleep)
        refuse_skew(self.endpoint, server_date(resp))

    def check_conditional_writes(self, prefix: str) -> None:
        """Find out which conditional requests the server honours (see s3probe.py) and
        keep the Store contract with a fallback for each one it lacks, logged as a
        warning (never a silent downgrade). StoreConfigError when PUT's own
        If-None-Match or If-Match is not honoured: nothing can stand in for those."""
        key = f"{prefix}conditional-writes-{uuid.uuid4().hex}"
        try:
            self.features = probe(self, key)
        finally:
            with suppress(StoreError):
                self.delete(key)
        for fallback in self.features.fallbacks:
            log.warning("%s: %s", self.location, fallback)

    def clock_offset(self, host_clock: Callable[[], float] = time.time) -> float:
        """The server's clock minus `host_clock`, from one LIST of at most one key.

        offset = Date + 0.5 - (host_clock() before + after the request) / 2. The
        `Date` header has a resolution of one second (it is truncated, hence the
        half second added), so the offset is right within about ±1 s: ±0.5 s of
        Date, plus half the round trip, plus the host clock's own step over the
        request. Enough for leases, whose clock-skew allowance is tens of seconds.
        A server that sends no Date header: 0.0 (its clock is taken as ours).
        """
        request = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": 1}
        with self._mapped("clock", None):
            before = host_clock()
            resp = self._client.list_objects_v2(**request)
            after = host_clock()
        server = server_date(resp)
        if server is None:
            return 0.0
        return server + 0.5 - (before + after) / 2

    # ---------------------------------------------------------------- listing

    def list_prefixes(self, prefix: str) -> list[str]:
        full = self.prefix + prefix
        found: list[str] = []
        with self._mapped("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=full,
                Delimiter="/",
                PaginationConfig={"PageSize": _LIST_PAGE},
            )
            for page in pages:
                found.extend(
                    cp["Prefix"][len(self.prefix) :] for cp in page.get("CommonPrefixes", [])
                )
        return found

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self.prefix + prefix
        with self._mapped("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": _LIST_PAGE}
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    info = ObjectInfo(obj["Key"][len(self.prefix) :], int(obj["Size"]), obj["ETag"])
                    if not is_tombstone(info):
                        yield info

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo | None:
        info = self._head_raw(key)
        return None if is_tombstone(info) else info

    def _head_raw(self, key: str) -> ObjectInfo | None:
        """head() that also shows a tombstone."""
        try:
            with self._mapped("head", key):
                resp = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except NotFound:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["ETag"])

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        for attempt in range(self._max_attempts):
            with self._mapped("get", key):
                resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
                try:
                    data = resp["Body"].read()
                except NETWORK_ERRORS:
                    if attempt + 1 == self._max_attempts:
                        raise
                    continue  # botocore does not retry a body cut off mid-stream
            if len(data) != int(resp["ContentLength"]):
                continue
            if data == TOMBSTONE:
                raise NotFound(f"get {self._where(key)}: deleted (a tombstone)")
            return data, normalize_etag(resp["ETag"])
        raise TransientStoreError(f"get {self._where(key)}: body kept arriving incomplete")

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        path = Path(path)
        tmp = path.parent / temp_name(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(self._max_attempts):
                with self._mapped("get", key):
                    resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
                    try:
                        size = _stream_to(resp["Body"], tmp)
                    except NETWORK_ERRORS:
                        if attempt + 1 == self._max_attempts:
                            raise
                        continue
                if size == int(resp["ContentLength"]):
                    info = ObjectInfo(key, size, resp["ETag"])
                    if is_tombstone(info) and tmp.read_bytes() == TOMBSTONE:
                        raise NotFound(f"get {self._where(key)}: deleted (a tombstone)")
                    os.replace(tmp, path)
                    return info
            raise TransientStoreError(f"get {self._where(key)}: body kept arriving incomplete")
        except OSError as exc:
            raise StoreError(f"cannot write local file {str(path)!r}: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------- writes

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """A single PUT below multipart_threshold, else a multipart upload.

        The conditions go on the PUT, or on CompleteMultipartUpload: until that
        completes nothing is visible, so that is where the check belongs (AWS
        honours If-Match and If-None-Match there). On a server whose
        CompleteMultipartUpload ignores them (`features.conditional_multipart`), a
        conditional upload goes as one PUT instead, up to SINGLE_PUT_MAX
        (s3compat.py). The outcomes of a condition are put_bytes's (see `_conditional`).
        """
        conditional = if_match is not None or if_none_match
        try:
            size = os.path.getsize(path)
            one_put = one_put_instead(self.features, conditional)
            if size >= self.multipart_threshold and not one_put:
                return put_multipart(self, key, Path(path), size, if_match, if_none_match)
            refuse_over_one_put(self, key, size)
            with open(path, "rb") as fh:
                md5 = md5_file(fh)

                def send(conditions: dict[str, str]) -> str:
                    fh.seek(0)
                    resp = self._client.put_object(
                        Bucket=self.bucket, Key=self._full(key), Body=fh,
                        ContentMD5=_b64(md5), **conditions,
                    )
                    return str(resp["ETag"])

                etag = self._conditional(key, md5.hex(), if_match, if_none_match, send)
        except OSError as exc:
            raise StoreError(f"cannot read local file {str(path)!r}: {exc.strerror}") from None
        return ObjectInfo(key, size, etag)

    # The multipart steps, used by the upload (s3multipart.py) and the probe (s3probe.py).

    def start_upload(self, key: str) -> str:
        with self._mapped("put", key):
            resp = self._client.create_multipart_upload(Bucket=self.bucket, Key=self._full(key))
        return str(resp["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Send one part; its ETag as the server gave it."""
        with self._mapped("put", key):
            resp = self._client.upload_part(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
                PartNumber=number, Body=data, ContentMD5=_b64(hashlib.md5(data).digest()),
            )
        return str(resp["ETag"])

    def complete_upload(self, key: str, upload_id: str, part_etags: list[str], *,
                        if_match: str | None = None, if_none_match: bool = False) -> None:
        """CompleteMultipartUpload with the conditions as given (no fallback: the probe)."""
        parts = [{"ETag": etag, "PartNumber": n + 1} for n, etag in enumerate(part_etags)]
        with self._mapped("put", key):
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                **condition_headers(self.features, if_match, if_none_match),
            )

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an upload (a bucket lifecycle rule should reap any that survive)."""
        with self._mapped("abort upload", key):
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id
            )

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        digest = hashlib.md5(data)

        def send(conditions: dict[str, str]) -> str:
            resp = self._client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data,
                ContentMD5=_b64(digest.digest()), **conditions,
            )
            return str(resp["ETag"])

        return self._conditional(key, digest.hexdigest(), if_match, if_none_match, send)

    def _conditional(
        self,
        key: str,
        ours: str,
        if_match: str | None,
        if_none_match: bool,
        send: Callable[[dict[str, str]], str],
    ) -> str:
        """`send(condition headers)` -> ETag, with the outcomes of a conditional write.

        - A lost reply retried into a 412 (or NoSuchUpload) whose object now holds
          exactly our bytes (its ETag is `ours`: md5 of a single PUT, the multipart
          ETag of an upload) is our own write that won: `ours` is returned.
        - A 412 a fallback explains (a tombstone where If-None-Match was asked, an
          If-Match the server compares unquoted) is sent again as it says
          (`send_again`, compressor/storage/s3compat.py).
        Anything else is mapped as every request is (If-Match on a missing key:
        PreconditionFailed).
        """
        for _ in range(3):
            try:
                return normalize_etag(send(condition_headers(self.features, if_match,
                                                             if_none_match)))
            except (ClientError, BotoCoreError) as exc:
                err = self._error(exc, "put", key)
                if isinstance(err, NotFound) and if_match is not None:
                    err = PreconditionFailed(f"put {self._where(key)}: object is gone (if_match)")
                lost_reply = was_retried(exc) and (
                    isinstance(err, PreconditionFailed) or error_code(exc) == "NoSuchUpload")
                if not isinstance(err, PreconditionFailed) and not lost_reply:
                    raise err from None
                current = self._head_raw(key)
                if lost_reply and current is not None and current.etag == ours:
                    return ours
                if not isinstance(err, PreconditionFailed):
                    raise err from None
                again = send_again(self, current, if_match, if_none_match)
                if again is None:
                    raise err from None
                if_match, if_none_match = again
        raise PreconditionFailed(f"put {self._where(key)}: the condition kept failing")

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """See Store.delete. With if_match S3 answers 412 when the ETag differs and
        404 when the object is gone: both are PreconditionFailed.

        A lost reply retried into a 404 is taken as our own delete: the object
        with that ETag is gone either way, and nothing else was deleted. On a
        server whose DeleteObject ignores If-Match (`features.conditional_delete`),
        the key is overwritten with a tombstone, If-Match: the one atomic
        conditional step that server offers. The job reads a tombstone as absent;
        `remove_tombstone` removes one where no other writer can be racing.
        """
        if if_match is not None and not self.features.conditional_delete:
            self.put_bytes(key, TOMBSTONE, if_match=if_match)
            return
        try:
            self.raw_delete(key, if_match=if_match)
        except NotFound as exc:
            if if_match is None or exc.args[0].endswith("(retried)"):
                return
            raise PreconditionFailed(
                f"delete {self._where(key)}: object is gone (if_match)") from None

    def raw_delete(self, key: str, *, if_match: str | None = None) -> None:
        """One DeleteObject as the server takes it (the probe's view): NotFound for a 404
        (its message ends '(retried)' after a lost reply)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        kwargs.update(condition_headers(self.features, if_match, False))
        for _ in range(2):
            try:
                self._client.delete_object(**kwargs)
                return
            except (ClientError, BotoCoreError) as exc:
                err = self._error(exc, "delete", key)
                if isinstance(err, NotFound) and was_retried(exc):
                    raise NotFound(f"{err} (retried)") from None
                current = None if if_match is None else self._head_raw(key)
                if not (isinstance(err, PreconditionFailed)
                        and learnt_unquoted(self, current, if_match)):
                    raise err from None
                kwargs.update(condition_headers(self.features, if_match, False))

    def remove_tombstone(self, key: str) -> None:
        """Delete `key` if it holds a tombstone (see `delete`). Only for a key that no
        other writer can be creating right now: a HEAD then a plain DELETE is not
        atomic on a server without conditional DeleteObject."""
        if is_tombstone(self._head_raw(key)):
            with self._mapped("delete", key):
                self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def remove_stale_partials(self, max_age_s: float = 86400.0) -> int:
        """Abort incomplete multipart uploads under the prefix older than `max_age_s`."""
        return abort_stale(self, max_age_s)

    # ---------------------------------------------------------------- helpers

    def _full(self, key: str) -> str:
        if not key or len((self.prefix + key).encode("utf-8")) > 1024:
            raise StoreError(f"invalid key {key!r}: empty or longer than 1024 bytes")
        return self.prefix + key

    def _where(self, key: str | None) -> str:
        if key is None:
            return f"bucket {self.bucket!r} at {self.endpoint}"
        return f"s3://{self.bucket}/{self.prefix}{key}"

    @contextmanager
    def _mapped(self, op: str, key: str | None) -> Iterator[None]:
        """Turn boto errors raised in the block into StoreError subclasses."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, op, key) from None

    def _error(self, exc: ClientError | BotoCoreError, op: str, key: str | None) -> StoreError:
        """The StoreError for a boto3 failure of `op` on `key` (None: the bucket)."""
        return self._errors.of(exc, op, self._where(key), per_object=key is not None)


def _reader_maker(store: S3Store, **settings: Any) -> Callable[[], DataReader]:
    """What builds the store's data path on first use (s3data.py) with `settings`: the
    credentials among them stay in this closure, not attributes of the store."""

    def make_reader() -> DataReader:
        from .s3data import new_reader

        return new_reader(store, **settings)

    return make_reader


def _stream_to(body: Any, tmp: Path) -> int:
    """Write a response body to a scratch file; its size.

    No fsync: downloads are scratch copies for the merge, a crash loses nothing
    that the next run would not fetch again, and the caller's rename keeps a
    partial copy from being seen (as LocalStore's `atomic_copy`, localwrite.py).
    """
    size = 0
    with open(tmp, "wb") as out:
        while chunk := body.read(CHUNK):
            out.write(chunk)
            size += len(chunk)
    return size


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _redact(url: str) -> str:
    """An endpoint URL without any user:password@ part, for messages.

    open_store validates endpoints (naming the variable); a malformed URL given
    to S3Store directly is not shown at all, as it may hold a password.
    """
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "(malformed endpoint URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
