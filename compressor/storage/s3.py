"""S3 and S3-compatible object stores (AWS, MinIO, Ceph, moto) through boto3.

Retries of throttling, 5xx, resets and timeouts are botocore's ('standard' mode,
exponential backoff with jitter); what survives them becomes
TransientStoreError. A GET or HEAD of one object refused for that object alone
(AccessDenied, InvalidObjectState) is ObjectUnreadable; bucket-wide failures
(missing bucket, bad credentials, clock skew, check() or a listing refused) are
StoreConfigError. Errors are built from the error code, HTTP status and the
bucket/key/endpoint only, never from server text or the exception's own string,
so no credential can leak into a message. Credentials are handed to the boto3
session (and, on the first `data_reader()`, to obstore: compressor/storage/s3data.py)
and not kept as attributes of the store object.

ETags are returned normalized (without the surrounding quotes S3 puts on them),
as the local store does; `if_match` accepts either form.

Servers that honour fewer conditions than AWS (Ceph RGW 16.2) are found out by
`check_conditional_writes` (compressor/storage/s3probe.py), and the store keeps the
Store contract on them with a fallback for each (docs/operations.md "Store compatibility"):
If-Match sent unquoted, tombstones for conditional deletes, one PUT for
conditional uploads.
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from .base import (
    CHUNK,
    DataReader,
    NotFound,
    ObjectInfo,
    ObjectUnreadable,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
    md5_file,
    normalize_etag,
    temp_name,
)
from .s3probe import ServerFeatures, probe
from .s3session import new_client

log = logging.getLogger(__name__)

MiB = 1 << 20
#: S3's limit for one PUT; conditional uploads on a server whose CompleteMultipartUpload
#: ignores conditions go as one PUT, so they cannot be larger.
SINGLE_PUT_MAX = 5 * 1024 * MiB
#: What a conditional delete leaves on a server without conditional DeleteObject: a key
#: holding exactly these bytes reads as absent (head, get, list) and is created over.
TOMBSTONE = b'{"quantlab_compact": "deleted"}\n'
TOMBSTONE_ETAG = hashlib.md5(TOMBSTONE).hexdigest()
#: How long, in all, check() waits for an endpoint that takes connections but does not
#: answer (S3_CHECK_TIMEOUT, docs/operations.md "Configuration"), and the longest one try waits.
DEFAULT_CHECK_TIMEOUT_S = 60.0
_CHECK_TRY_TIMEOUT_S = 10.0
#: The job refuses to run when its clock and the S3 server's differ by more than this.
#: S3 itself rejects requests signed more than 15 minutes off (RequestTimeTooSkewed); the
#: state's and the leases' timestamps come from this clock too.
MAX_CLOCK_SKEW_S = 15 * 60
_LIST_PAGE = 1000
#: Parts of one multipart upload sent at once.
_UPLOAD_THREADS = 4
#: HTTP connections kept per client: the job's parallel downloads share one store.
_MAX_POOL_CONNECTIONS = 32

_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
#: Answers to a GET or HEAD of one key that concern that object only (ObjectUnreadable):
#: access denied to it (a bucket policy or a KMS key it is encrypted with), archived.
#: A HEAD has no body, so its 403 comes as the bare code "403".
_UNREADABLE = {"AccessDenied", "InvalidObjectState", "403"}
_OBJECT_READS = {"get", "head"}
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_CONFIG = {
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidBucketName",
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
    "403",
    "301",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
#: Errors of the HTTP layer that botocore already retried: the network, not the request.
_NETWORK_ERRORS = (ConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)


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
        self._check_try_s = _check_try_timeout(check_timeout, read_timeout)
        try:
            self._client, self._check_client = _new_clients(
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

        def make_reader() -> DataReader:
            from .s3data import new_reader

            return new_reader(
                self,
                endpoint_url=endpoint_url,
                access_key=access_key,
                secret_key=secret_key,
                region=region,
                max_attempts=self._max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                pool_size=_MAX_POOL_CONNECTIONS,
            )

        self._make_reader = make_reader

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
        """A LIST of at most one key, then the clock check (see `check_clock`).

        An endpoint that refuses or never accepts connections fails fast
        (StoreConfigError, a few seconds). One that takes connections but does not
        answer, or answers with throttling, 5xx or a dropped connection, is tried
        again, one log line per failed try with its number, until `check_timeout`
        seconds have passed (docs/operations.md "Configuration", S3_CHECK_TIMEOUT): then
        StoreConfigError saying what was waited for.
        """
        request = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": 1}
        deadline = time.monotonic() + self.check_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self._check_client.list_objects_v2(**request)
                break
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                raise StoreConfigError(
                    f"cannot reach S3 endpoint {self.endpoint} for bucket {self.bucket!r}: "
                    f"{type(exc).__name__}"
                ) from None
            except (ClientError, BotoCoreError) as exc:
                error = self._error(exc, "check", None)
                if not isinstance(error, TransientStoreError):
                    raise error from None
                why = _check_failure(exc)
            left = deadline - time.monotonic()
            pause = min(0.5 * 2 ** (attempt - 1), 5.0)
            if left < pause + self._check_try_s:  # the next try could not finish in time
                raise StoreConfigError(
                    f"S3 endpoint {self.endpoint} gave no usable answer for bucket "
                    f"{self.bucket!r} within {self.check_timeout:g}s ({attempt} tries, the "
                    f"last: {why}): is it an S3 server, and up? (S3_CHECK_TIMEOUT)"
                )
            log.warning("waiting for S3 endpoint %s (bucket %r): try %d: %s; trying again "
                        "for up to %.0fs more", self.endpoint, self.bucket, attempt, why, left)
            sleep(pause)
        self.check_clock(_server_date(resp))

    def check_clock(self, server_time: float | None) -> None:
        """StoreConfigError when this host's clock is more than MAX_CLOCK_SKEW_S off the
        server's (its `Date` header; no header, no check)."""
        if server_time is None:
            return
        skew = time.time() - server_time
        if abs(skew) > MAX_CLOCK_SKEW_S:
            side = "ahead of" if skew > 0 else "behind"
            raise StoreConfigError(
                f"this host's clock is {_duration(abs(skew))} {side} the S3 server at "
                f"{self.endpoint} (its Date header; at most {_duration(MAX_CLOCK_SKEW_S)} "
                "allowed): fix the system clock (NTP)"
            )

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
        server = _server_date(resp)
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
                    if not _is_tombstone(info):
                        yield info

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo | None:
        info = self._head_raw(key)
        return None if _is_tombstone(info) else info

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
                except _NETWORK_ERRORS:
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
                    except _NETWORK_ERRORS:
                        if attempt + 1 == self._max_attempts:
                            raise
                        continue
                if size == int(resp["ContentLength"]):
                    info = ObjectInfo(key, size, resp["ETag"])
                    if _is_tombstone(info) and tmp.read_bytes() == TOMBSTONE:
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
        conditional upload goes as one PUT instead, up to SINGLE_PUT_MAX. The
        outcomes of a condition are put_bytes's (see `_conditional`).
        """
        conditional = if_match is not None or if_none_match
        try:
            size = os.path.getsize(path)
            one_put = conditional and not self.features.conditional_multipart
            if size >= self.multipart_threshold and not one_put:
                return self._put_multipart(key, Path(path), size, if_match, if_none_match)
            if size > SINGLE_PUT_MAX:
                raise StoreError(
                    f"put {self._where(key)}: {size} bytes is more than one PUT may carry "
                    f"({SINGLE_PUT_MAX} bytes), and the server at {self.endpoint} ignores "
                    "conditions on CompleteMultipartUpload, so it cannot be published safely"
                )
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

    def _put_multipart(
        self, key: str, path: Path, size: int, if_match: str | None, if_none_match: bool
    ) -> ObjectInfo:
        """Parts in parallel, then complete (with the conditions); aborted on any
        failure, a failed condition included, so nothing half shows."""
        chunk = max(self.multipart_chunksize, -(-size // 10_000))
        upload_id = self.start_upload(key)
        try:
            offsets = list(range(0, size, chunk))
            numbers = range(1, len(offsets) + 1)

            def put_part(number: int, offset: int) -> tuple[str, bytes]:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(chunk)
                return self.upload_part(key, upload_id, number, data), hashlib.md5(data).digest()

            with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
                uploaded = list(pool.map(put_part, numbers, offsets))
            expected = multipart_etag([md5 for _, md5 in uploaded])

            def send(conditions: dict[str, str]) -> str:
                resp = self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [  # type: ignore[typeddict-item]
                        {"ETag": etag, "PartNumber": n + 1}
                        for n, (etag, _) in enumerate(uploaded)
                    ]},
                    **conditions,
                )
                return self._completed_etag(key, str(resp.get("ETag") or ""), expected)

            etag = self._conditional(key, expected, if_match, if_none_match, send)
        except BaseException:
            with suppress(StoreError, ClientError, BotoCoreError):
                self.abort_upload(key, upload_id)
            raise
        return ObjectInfo(key, size, etag)

    def _completed_etag(self, key: str, answered: str, expected: str) -> str:
        """The ETag of a completed upload. Ceph RGW 16.2 answers CompleteMultipartUpload
        with an empty one; the object's own (HEAD) is then taken, and must be the
        upload's, else another writer got in between (transient: retried)."""
        if normalize_etag(answered):
            return answered
        current = self._head_raw(key)
        if current is None or current.etag != expected:
            raise TransientStoreError(
                f"put {self._where(key)}: the upload completed without an ETag and the "
                "object is no longer the upload"
            )
        return current.etag

    # The multipart steps, also used by the probe (s3probe.py).

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
                **self._condition_headers(if_match, if_none_match),
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
        - If-None-Match that finds a tombstone (a key deleted on a server without
          conditional DeleteObject) is a create: it is sent again If-Match the
          tombstone, so of two creators exactly one wins, as over an absent key.
        - If-Match refused although the object's ETag is the one asked for: the
          server compares If-Match unquoted (Ceph RGW 16.2); learnt, and sent again.
        Anything else is mapped as every request is (If-Match on a missing key:
        PreconditionFailed).
        """
        for _ in range(3):
            try:
                return normalize_etag(send(self._condition_headers(if_match, if_none_match)))
            except (ClientError, BotoCoreError) as exc:
                err = self._error(exc, "put", key)
                if isinstance(err, NotFound) and if_match is not None:
                    err = PreconditionFailed(f"put {self._where(key)}: object is gone (if_match)")
                lost_reply = _retried(exc) and (
                    isinstance(err, PreconditionFailed) or _code(exc) == "NoSuchUpload")
                if not isinstance(err, PreconditionFailed) and not lost_reply:
                    raise err from None
                current = self._head_raw(key)
                if lost_reply and current is not None and current.etag == ours:
                    return ours
                if not isinstance(err, PreconditionFailed):
                    raise err from None
                if if_none_match and _is_tombstone(current):
                    if_match, if_none_match = TOMBSTONE_ETAG, False
                elif not self._learnt_unquoted(current, if_match):
                    raise err from None
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
        kwargs.update(self._condition_headers(if_match, False))
        for _ in range(2):
            try:
                self._client.delete_object(**kwargs)
                return
            except (ClientError, BotoCoreError) as exc:
                err = self._error(exc, "delete", key)
                if isinstance(err, NotFound) and _retried(exc):
                    raise NotFound(f"{err} (retried)") from None
                current = None if if_match is None else self._head_raw(key)
                if not (isinstance(err, PreconditionFailed)
                        and self._learnt_unquoted(current, if_match)):
                    raise err from None
                kwargs.update(self._condition_headers(if_match, False))

    def _learnt_unquoted(self, current: ObjectInfo | None, if_match: str | None) -> bool:
        """After a 412 on `if_match`: whether the server refused a quoted If-Match although
        the object's ETag (`current`, as HEAD saw it) is the one asked for. Ceph RGW 16.2
        compares If-Match unquoted; the store learns to send it so (True: send again)."""
        if (if_match is None or current is None or _is_tombstone(current)
                or current.etag != normalize_etag(if_match) or self.features.if_match_unquoted):
            return False
        self.features = replace(self.features, if_match_unquoted=True)
        log.info("%s compares If-Match unquoted: sending it so", self.location)
        return True

    def remove_tombstone(self, key: str) -> None:
        """Delete `key` if it holds a tombstone (see `delete`). Only for a key that no
        other writer can be creating right now: a HEAD then a plain DELETE is not
        atomic on a server without conditional DeleteObject."""
        if _is_tombstone(self._head_raw(key)):
            with self._mapped("delete", key):
                self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def remove_stale_partials(self, max_age_s: float = 86400.0) -> int:
        """Abort incomplete multipart uploads under the prefix older than `max_age_s`."""
        cutoff = time.time() - max_age_s
        aborted = 0
        with self._mapped("list uploads", None):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            stale = [
                (up["Key"], up["UploadId"])
                for page in pages
                for up in page.get("Uploads", [])
                if up["Initiated"].timestamp() < cutoff
            ]
        for full_key, upload_id in stale:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                )
                aborted += 1
            except (ClientError, BotoCoreError) as exc:
                if _code(exc) != "NoSuchUpload":  # gone already: another run aborted it
                    raise self._error(exc, "abort upload", full_key[len(self.prefix) :]) from None
        return aborted

    # ---------------------------------------------------------------- helpers

    def _condition_headers(self, if_match: str | None, if_none_match: bool) -> dict[str, str]:
        """The IfMatch / IfNoneMatch request parameters, If-Match in the server's form."""
        conditions = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            bare = normalize_etag(if_match)
            conditions["IfMatch"] = bare if self.features.if_match_unquoted else f'"{bare}"'
        return conditions

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
        where = self._where(key)
        if isinstance(exc, ClientError):
            return self._client_error(exc, op, where, per_object=key is not None)
        name = type(exc).__name__
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreConfigError(f"{op} {where}: no usable S3 credentials ({name})")
        if isinstance(exc, _NETWORK_ERRORS):
            return TransientStoreError(
                f"{op} {where}: {name} from {self.endpoint} after {self._max_attempts} attempts"
            )
        return StoreError(f"{op} {where}: {name}")

    def _client_error(
        self, exc: ClientError, op: str, where: str, *, per_object: bool = False
    ) -> StoreError:
        """The StoreError for an S3 error answer. `per_object`: the request named a key.

        A GET/HEAD of one key answering AccessDenied (403) or InvalidObjectState is
        that object's problem (ObjectUnreadable): the run goes on with the others.
        Everything else about permissions, credentials, the bucket or the clock
        (also on a GET) concerns every request: StoreConfigError, exit 2.
        """
        code = _code(exc) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{op} {where}: {code} (HTTP {status})"
        if code in _NOT_FOUND and status in (0, 404):
            return NotFound(text)
        if code in _PRECONDITION or status == 412:
            return PreconditionFailed(text)
        if per_object and op in _OBJECT_READS and code in _UNREADABLE:
            if code == "InvalidObjectState":
                return ObjectUnreadable(
                    f"{text}: the object is archived (e.g. Glacier); restore it to read it"
                )
            return ObjectUnreadable(f"{text}: the object cannot be read with these credentials")
        if code == "RequestTimeTooSkewed":
            return StoreConfigError(
                f"{text}: this host's clock is too far off the S3 server's at "
                f"{self.endpoint}: fix the system clock (NTP)"
            )
        if code == "NoSuchBucket":
            return StoreConfigError(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
        if code in _CONFIG or status == 403:
            return StoreConfigError(
                f"{text}: check the bucket name, the credentials and the endpoint {self.endpoint}"
            )
        if code == "NotImplemented" or status == 501:  # a header or feature it lacks
            return StoreError(f"{text}: not supported by the server at {self.endpoint}")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return TransientStoreError(f"{text} after {self._max_attempts} attempts")
        return StoreError(text)


def _new_clients(
    endpoint_url: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    *,
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT_S,
) -> tuple[Any, Any]:
    """(client for every request, client for check()); BotoCoreError or ValueError if
    botocore cannot build them (bad endpoint URL, half a credential pair).

    The check client tries once per call (check() retries, logging each try) and
    waits at most a few seconds per try, so that several tries fit in `check_timeout`."""
    common: dict[str, Any] = {
        "signature_version": "s3v4",
        "max_pool_connections": _MAX_POOL_CONNECTIONS,
        # Checksums only where S3 requires them: many S3-compatible servers
        # reject the CRC trailers newer botocore sends by default. We send
        # Content-MD5 ourselves on every upload instead.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    if endpoint_url:
        common["s3"] = {"addressing_style": "path"}
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        **common,
    )
    # check() must answer fast when the endpoint is down: it retries itself, logging.
    per_try = _check_try_timeout(check_timeout, read_timeout)
    check_config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=min(connect_timeout, 3.0, per_try),
        read_timeout=per_try,
        **common,
    )
    credentials = {
        "endpoint_url": endpoint_url,
        "region_name": region or None,
        "aws_access_key_id": access_key or None,
        "aws_secret_access_key": secret_key or None,
    }
    return new_client(config, credentials), new_client(check_config, credentials)


def _check_try_timeout(check_timeout: float, read_timeout: float) -> float:
    """Seconds one try of check() waits for an answer: a quarter of its whole time, so
    that several tries fit, but no more than _CHECK_TRY_TIMEOUT_S nor S3_READ_TIMEOUT."""
    return max(1.0, min(_CHECK_TRY_TIMEOUT_S, read_timeout, check_timeout / 4))


def _check_failure(exc: ClientError | BotoCoreError) -> str:
    """What one failed try of check() got, for its log line: no server text, no URL."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{_code(exc) or 'error'} (HTTP {status})"
    if isinstance(exc, ReadTimeoutError):
        return "no answer (ReadTimeoutError)"
    return type(exc).__name__


def _code(exc: ClientError | BotoCoreError) -> str | None:
    """The S3 error code of a ClientError; None for errors below the HTTP layer."""
    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _is_tombstone(info: ObjectInfo | None) -> bool:
    return info is not None and info.size == len(TOMBSTONE) and info.etag == TOMBSTONE_ETAG


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a completed multipart upload of unencrypted (or SSE-S3)
    parts: md5 of the concatenated part md5 digests, then '-' and the part count."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def _retried(exc: ClientError | BotoCoreError) -> bool:
    if not isinstance(exc, ClientError):
        return False
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def _server_date(resp: Any) -> float | None:
    """The server's clock from a response's Date header (epoch seconds), if it sent one."""
    try:
        value = resp["ResponseMetadata"]["HTTPHeaders"]["date"]
        return parsedate_to_datetime(value).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _duration(seconds: float) -> str:
    """'45 s', '16 min', '3.2 h', '12 days' for messages."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _stream_to(body: Any, tmp: Path) -> int:
    """Write a response body to a scratch file; its size.

    No fsync: downloads are scratch copies for the merge, a crash loses nothing
    that the next run would not fetch again, and the caller's rename keeps a
    partial copy from being seen (as LocalStore's `_atomic_copy`).
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
