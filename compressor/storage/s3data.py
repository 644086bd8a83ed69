"""S3Store's data path: raw objects read through obstore (see compressor/storage/base.py,
"The data path").

Why obstore: a GET of a ~30 KB object costs boto3 about 1.8-2.9 ms of CPU, most of
it Python holding the GIL (signing, parsing, botocore's event hooks), so 16
download threads keep one of the two cores busy and stall the merge. obstore's
GETs run in Rust (object_store, reqwest, tokio) without the GIL: about 0.5 ms of
CPU per object, measured by bench/fetch_cost.py (bench/README.md, "Fetch cost").

The same settings as the S3Store it belongs to: endpoint (path-style addressing
for a custom endpoint, its user:password@ part dropped), credentials (the
explicit pair, else boto3's credential chain), region, timeouts and attempts.

Errors: obstore's messages hold URLs and server text, so none is ever shown.
NotFound is answered directly; on any other failure the same GET is made
once more through the S3Store (boto3), whose answer stands: its bytes, or its
error, classified and worded as every S3 error of this project (ObjectUnreadable
for a 403 or an archived object, StoreConfigError for bad credentials, ...).
Keys obstore would not send verbatim (an empty, '.' or '..' segment, a control
character) go through the S3Store to begin with.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from .base import (
    CHUNK,
    DataReader,
    NotFound,
    ObjectData,
    ObjectInfo,
    ObjectSource,
    StoreError,
    StoreReader,
    temp_name,
)
from .s3session import SESSION_LOCK, shared_session

log = logging.getLogger(__name__)

#: Keys obstore's path parser refuses or rewrites: empty segments (leading,
#: trailing or doubled '/'), '.' and '..' segments, ASCII control characters.
_NOT_VERBATIM = re.compile(r"(^|/)(\.{1,2})?(/|$)|[\x00-\x1f\x7f]")
#: How long obstore may keep credentials from boto3's chain before asking again.
_CREDENTIALS_TTL = timedelta(minutes=15)


class S3Source(ObjectSource, Protocol):
    """What the data path uses of the S3Store it belongs to (s3.py's S3Store is one).
    A protocol, so that s3.py imports this module and this module never imports s3.py."""

    uri: str
    bucket: str

    def _full(self, key: str) -> str: ...

    def _where(self, key: str | None) -> str: ...


class _NoCredentials(Exception):
    """No explicit pair and none in boto3's chain: boto3 will say so, in its words."""


def new_reader(store: S3Source, **settings: Any) -> DataReader:
    """An ObstoreReader with `settings` (see its parameters), else a boto3 one: when
    obstore is missing, cannot be set up (type name logged), or no credentials exist."""
    try:
        return ObstoreReader(store, **settings)
    except _NoCredentials:
        pass
    except Exception as exc:  # noqa: BLE001 - the boto3 path still works
        log.warning("S3 data path through obstore unavailable (%s); using boto3",
                    type(exc).__name__)
    return Boto3Reader(store)


class Boto3Reader(StoreReader):
    """GETs through the S3Store itself (boto3): the fallback data path. Unlike a
    generic StoreReader its objects are worth holding in memory."""

    in_memory = True


class ObstoreReader(DataReader):
    """GETs of one bucket through obstore, S3Store (boto3) as the fallback and the judge."""

    def __init__(
        self,
        store: S3Source,
        *,
        endpoint_url: str | None,
        access_key: str | None,
        secret_key: str | None,
        region: str | None,
        max_attempts: int,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
    ) -> None:
        from obstore.store import S3Store as ObjectStoreS3

        self._store = store
        config: dict[str, Any] = {"region": region or "us-east-1"}
        client: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=connect_timeout),
            "read_timeout": timedelta(seconds=read_timeout),
            "pool_max_idle_per_host": str(pool_size),
        }
        if endpoint_url:
            config["endpoint"] = _without_userinfo(endpoint_url)
            config["virtual_hosted_style_request"] = False
            client["allow_http"] = endpoint_url.startswith("http://")
        else:
            config["virtual_hosted_style_request"] = "." not in store.bucket
        provider: Callable[[], Any] | None = None
        if access_key and secret_key:
            config["access_key_id"] = access_key
            config["secret_access_key"] = secret_key
        else:
            provider = _boto3_credentials()
            if provider is None:
                raise _NoCredentials
        self._obstore = ObjectStoreS3(
            store.bucket,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config={"max_retries": max(0, max_attempts - 1)},
            credential_provider=provider,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:  # the obstore store's repr and config hold the credentials
        return f"ObstoreReader({self._store.uri!r})"

    def read(self, key: str) -> ObjectData:
        import obstore

        full = self._store._full(key)
        if _NOT_VERBATIM.search(full) is None:
            try:
                result = obstore.get(self._obstore, full)
                data = pa.py_buffer(result.bytes())
                meta = result.meta
                if data.size == int(meta["size"]) and meta["e_tag"]:
                    return ObjectData(data, ObjectInfo(key, data.size, meta["e_tag"]))
            except Exception as exc:  # noqa: BLE001 - judged by the boto3 GET below
                self._failed(key, exc)
        data_bytes, etag = self._store.get_bytes(key)
        return ObjectData(pa.py_buffer(data_bytes), ObjectInfo(key, len(data_bytes), etag))

    def read_tail(self, listed: ObjectInfo, nbytes: int) -> tuple[bytes, ObjectInfo]:
        """One ranged GET of the last `nbytes` (the listed size says where they start)."""
        import obstore

        full = self._store._full(listed.key)
        if _NOT_VERBATIM.search(full) is None and listed.size > 0:
            try:
                result = obstore.get(self._obstore, full, options={
                    "range": (max(0, listed.size - nbytes), listed.size)})
                meta = result.meta
                if meta["e_tag"]:
                    return result.bytes().to_bytes(), ObjectInfo(
                        listed.key, int(meta["size"]), meta["e_tag"])
            except Exception as exc:  # noqa: BLE001 - judged by the whole GET below
                self._failed(listed.key, exc)
        return super().read_tail(listed, nbytes)

    def read_to_file(self, key: str, path: Path) -> ObjectInfo:
        full = self._store._full(key)
        if _NOT_VERBATIM.search(full) is None:
            path = Path(path)
            tmp = path.parent / temp_name(path.name)
            try:
                got = self._stream_to(key, full, tmp)
                if got is not None:
                    os.replace(tmp, path)
                    return got
            except OSError as exc:  # the local disk, not the store
                raise StoreError(
                    f"{key}: cannot write its local copy: {exc.strerror or type(exc).__name__}"
                ) from None
            finally:
                tmp.unlink(missing_ok=True)
        return self._store.get_file(key, path)

    def _stream_to(self, key: str, full: str, tmp: Path) -> ObjectInfo | None:
        """The object into `tmp`; None when obstore failed (the caller asks boto3).

        OSError from writing `tmp` escapes; obstore's own errors (some of which are
        OSErrors too) never do."""
        import obstore

        with open(tmp, "wb") as out:
            try:
                result = obstore.get(self._obstore, full)
                meta = result.meta
                chunks = iter(result.stream(min_chunk_size=CHUNK))
            except Exception as exc:  # noqa: BLE001 - judged by the boto3 GET
                self._failed(key, exc)
                return None
            size = 0
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - judged by the boto3 GET
                    self._failed(key, exc)
                    return None
                out.write(chunk)
                size += len(chunk)
        if size != int(meta["size"]) or not meta["e_tag"]:
            return None
        return ObjectInfo(key, size, meta["e_tag"])

    def _failed(self, key: str, exc: BaseException) -> None:
        """NotFound as is; anything else goes to the boto3 GET (the caller's next step)."""
        if _is_not_found(exc):
            raise NotFound(f"get {self._store._where(key)}: NoSuchKey (HTTP 404)") from None
        log.debug("get %s through obstore failed (%s); asking boto3", key, type(exc).__name__)


def _is_not_found(exc: BaseException) -> bool:
    try:
        from obstore.exceptions import NotFoundError
    except ImportError:  # pragma: no cover - obstore is a dependency
        return False
    return isinstance(exc, NotFoundError)


def _without_userinfo(url: str) -> str:
    """`url` without a user:password@ part (obstore would send it as Basic auth)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _boto3_credentials() -> Callable[[], Any] | None:
    """obstore's credentials from boto3's chain (environment, config files, instance
    role), as the boto3 client without explicit keys gets them; None when it has none."""
    with SESSION_LOCK:
        credentials = shared_session().get_credentials()
    if credentials is None:
        return None

    def provide() -> dict[str, Any]:
        frozen = credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + _CREDENTIALS_TTL,
        }

    return provide

