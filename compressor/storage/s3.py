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
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import boto3
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

if TYPE_CHECKING:
    from .data import DataReader

log = logging.getLogger(__name__)

MiB = 1 << 20
#: How long, in all, check() waits for an endpoint that takes connections but does not
#: answer (S3_CHECK_TIMEOUT, README "Configuration"), and the longest one try waits.
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
        seconds have passed (README "Configuration", S3_CHECK_TIMEOUT): then
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
                    key = obj["Key"][len(self.prefix) :]
                    yield ObjectInfo(key, int(obj["Size"]), obj["ETag"])

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo | None:
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
                    os.replace(tmp, path)
                    return ObjectInfo(key, size, resp["ETag"])
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
        honours If-Match and If-None-Match there). As with put_bytes, a lost
        reply retried into a 412 whose object holds exactly our upload (its
        ETag is the one our bytes give) counts as our write.
        """
        conditions = _conditions(if_match, if_none_match)
        try:
            size = os.path.getsize(path)
            if size >= self.multipart_threshold:
                return self._put_multipart(key, Path(path), size, conditions, if_match)
            with open(path, "rb") as fh:
                md5 = md5_file(fh)
                fh.seek(0)
                try:
                    resp = self._client.put_object(
                        Bucket=self.bucket,
                        Key=self._full(key),
                        Body=fh,
                        ContentMD5=_b64(md5),
                        **conditions,
                    )
                except (ClientError, BotoCoreError) as exc:
                    etag = self._conditional_put_failed(exc, key, md5.hex(), if_match)
                    return ObjectInfo(key, size, etag)
        except OSError as exc:
            raise StoreError(f"cannot read local file {str(path)!r}: {exc.strerror}") from None
        return ObjectInfo(key, size, resp["ETag"])

    def _put_multipart(
        self, key: str, path: Path, size: int, conditions: dict[str, str], if_match: str | None
    ) -> ObjectInfo:
        """Parts in parallel, then complete (with the conditions); aborted on any
        failure, a failed condition included, so nothing half shows."""
        full = self._full(key)
        chunk = max(self.multipart_chunksize, -(-size // 10_000))
        with self._mapped("put", key):
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=full)[
                "UploadId"
            ]
        try:
            offsets = list(range(0, size, chunk))
            numbers = range(1, len(offsets) + 1)

            def put_part(number: int, offset: int) -> tuple[str, bytes]:
                return self._put_part(key, path, upload_id, number, offset, chunk)

            with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
                uploaded = list(pool.map(put_part, numbers, offsets))
            parts = [{"ETag": etag, "PartNumber": n + 1} for n, (etag, _) in enumerate(uploaded)]
            try:
                resp = self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    **conditions,
                )
            except (ClientError, BotoCoreError) as exc:
                expected = multipart_etag([md5 for _, md5 in uploaded])
                etag = self._conditional_put_failed(exc, key, expected, if_match)
                return ObjectInfo(key, size, etag)  # a lost reply: the upload completed
        except BaseException:
            self._abort_quietly(full, upload_id)
            raise
        return ObjectInfo(key, size, resp["ETag"])

    def _put_part(
        self, key: str, path: Path, upload_id: str, number: int, offset: int, chunk: int
    ) -> tuple[str, bytes]:
        """(the part's ETag as the server gave it, md5 digest of the part)."""
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(chunk)
        digest = hashlib.md5(data).digest()
        with self._mapped("put", key):
            resp = self._client.upload_part(
                Bucket=self.bucket,
                Key=self._full(key),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_b64(digest),
            )
        return str(resp["ETag"]), digest

    def _abort_quietly(self, full_key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError):
            pass  # a bucket lifecycle rule should reap leftover uploads

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        digest = hashlib.md5(data)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "Body": data,
            "ContentMD5": _b64(digest.digest()),
        }
        kwargs.update(_conditions(if_match, if_none_match))
        try:
            resp = self._client.put_object(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            return self._conditional_put_failed(exc, key, digest.hexdigest(), if_match)
        return normalize_etag(resp["ETag"])

    def _conditional_put_failed(
        self, exc: ClientError | BotoCoreError, key: str, md5: str, if_match: str | None
    ) -> str:
        """Map a failed put; recognise a conditional put that won on an earlier attempt.

        When an attempt commits but its response is lost (reset, timeout),
        botocore retries and the retry finds its own object: 412. If a retry
        happened and the object now holds exactly our bytes (its ETag is `md5`:
        the md5 hex of a single PUT, the multipart ETag of an upload), the write
        won; that ETag is returned.
        """
        err = self._error(exc, "put", key)
        if isinstance(err, NotFound) and if_match is not None:
            err = PreconditionFailed(f"put {self._where(key)}: object is gone (if_match)")
        # NoSuchUpload: a CompleteMultipartUpload retried after the upload completed.
        ours_maybe = isinstance(err, PreconditionFailed) or _code(exc) == "NoSuchUpload"
        if ours_maybe and _retried(exc):
            current = self.head(key)
            if current is not None and current.etag == md5:
                return md5
        raise err from None

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """See Store.delete. With if_match S3 answers 412 when the ETag differs and
        404 when the object is gone: both are PreconditionFailed.

        A lost reply retried into a 404 is taken as our own delete: the object
        with that ETag is gone either way, and nothing else was deleted.
        """
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if if_match is None:
            with self._mapped("delete", key):
                self._client.delete_object(**kwargs)
            return
        kwargs.update(_conditions(if_match, False))
        try:
            self._client.delete_object(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            err = self._error(exc, "delete", key)
            if isinstance(err, NotFound):
                if _retried(exc):
                    return
                err = PreconditionFailed(f"delete {self._where(key)}: object is gone (if_match)")
            raise err from None

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


_SESSION_LOCK = threading.Lock()
_SESSION: list[boto3.session.Session] = []


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
    return _new_client(config, credentials), _new_client(check_config, credentials)


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


def _new_client(config: Config, kwargs: dict[str, Any]) -> Any:
    """An S3 client from one shared boto3 session.

    Sharing the session shares its loaded service models (a new session costs
    ~0.2 s); credentials are per client. Sessions are not thread-safe, hence the lock.
    """
    with _SESSION_LOCK:
        return _shared_session().client("s3", config=config, **kwargs)


def _shared_session() -> boto3.session.Session:
    """The one boto3 session (created on first use); call it under _SESSION_LOCK when
    using the session for more than reading credentials."""
    if not _SESSION:
        _SESSION.append(boto3.session.Session())
    return _SESSION[0]


def _code(exc: ClientError | BotoCoreError) -> str | None:
    """The S3 error code of a ClientError; None for errors below the HTTP layer."""
    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _conditions(if_match: str | None, if_none_match: bool) -> dict[str, str]:
    """The IfMatch / IfNoneMatch request parameters of a conditional request."""
    conditions = {}
    if if_none_match:
        conditions["IfNoneMatch"] = "*"
    if if_match is not None:
        conditions["IfMatch"] = f'"{normalize_etag(if_match)}"'
    return conditions


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
