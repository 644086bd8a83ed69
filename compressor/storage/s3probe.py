"""What an S3-compatible server does with conditional requests, found out at start.

Leases, the state's compare-and-swap and the publish protocol rest on conditional
requests (docs/operations.md "Store compatibility"). AWS S3 honours all of them; Ceph RGW
before the release that fixed it (16.2 Pacific, Debian bookworm's) differs in three
ways, each measured on a real gateway:

- it compares If-Match with its stored ETag byte for byte, so the quoted ETag that
  HTTP and AWS clients send never matches (the store learns to send it unquoted);
- it ignores If-Match on DeleteObject (the store writes a tombstone with a
  conditional PUT instead: see S3Store.delete);
- it ignores If-None-Match and If-Match on CompleteMultipartUpload (the store sends
  every conditional upload as one PUT, up to S3's 5 GiB limit for one).

A server that ignores If-None-Match or If-Match on PutObject has nothing to fall
back on: the run stops with exit 2 naming what it ignored. Everything here writes
one probe key (a new one per call) and removes it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    ObjectInfo,
    PreconditionFailed,
    StoreConfigError,
    StoreError,
    TransientStoreError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerFeatures:
    """The conditional requests a server honours; the defaults are AWS S3's."""

    #: If-Match must carry the bare ETag (Ceph RGW 16.2), not the quoted one HTTP uses.
    if_match_unquoted: bool = False
    #: DeleteObject honours If-Match. Without it a conditional delete writes a tombstone.
    conditional_delete: bool = True
    #: CompleteMultipartUpload honours If-None-Match and If-Match. Without it a
    #: conditional upload goes as one PUT (at most SINGLE_PUT_MAX bytes, s3compat.py).
    conditional_multipart: bool = True

    @property
    def fallbacks(self) -> list[str]:
        """What the store does differently from AWS S3 on this server, for the log."""
        out = []
        if self.if_match_unquoted:
            out.append("If-Match is sent unquoted (the server compares it byte for byte)")
        if not self.conditional_delete:
            out.append("DeleteObject ignores If-Match: a conditional delete overwrites the "
                       "key with a tombstone (a conditional PUT) that the job reads as absent")
        if not self.conditional_multipart:
            out.append("CompleteMultipartUpload ignores If-None-Match/If-Match: conditional "
                       "uploads go as one PUT, at most 5 GiB")
        return out


class S3Probed(Protocol):
    """What the probe uses of the S3Store it probes (s3.py's S3Store is one). A protocol,
    so that s3.py imports this module and this module never imports s3.py."""

    @property
    def location(self) -> str: ...

    @property
    def features(self) -> ServerFeatures: ...

    def put_bytes(self, key: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def raw_delete(self, key: str, *, if_match: str | None = None) -> None: ...

    def start_upload(self, key: str) -> str: ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str: ...

    def complete_upload(self, key: str, upload_id: str, part_etags: list[str], *,
                        if_match: str | None = None, if_none_match: bool = False) -> None: ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...


def probe(store: S3Probed, key: str) -> ServerFeatures:
    """The server's features, from writes to the fresh `key` (left for the caller to delete).

    StoreConfigError('<what it ignored>') when PUT's own conditions are not honoured;
    the writes meant to fail carry bytes other than the object's, so a lost reply
    retried into a 412 is never taken for their own write.
    """
    try:
        first = store.put_bytes(key, b"probe 1", if_none_match=True)
    except (StoreConfigError, TransientStoreError):
        raise
    except StoreError as exc:  # e.g. NotImplemented: the server rejects the header
        raise refused(store, f"a create with If-None-Match failed: {exc}") from None
    wrong = hashlib.md5(b"probe 0").hexdigest()
    _must_lose(store, "a second create with If-None-Match succeeded",
               lambda: store.put_bytes(key, b"probe 2", if_none_match=True))
    try:
        current = store.put_bytes(key, b"probe 3", if_match=first)
    except PreconditionFailed:
        raise refused(store, "a write with the current If-Match ETag failed") from None
    _must_lose(store, "a write with a wrong If-Match ETag succeeded",
               lambda: store.put_bytes(key, b"probe 2", if_match=wrong))
    conditional_delete = _delete_honours_if_match(store, key, current, wrong)
    if store.head(key) is None:
        store.put_bytes(key, b"probe 4")
    try:
        conditional_multipart = _complete_honours_conditions(store, key, wrong)
    except TransientStoreError as exc:
        # not proven: one PUT per conditional upload is correct on every server
        log.warning("%s: could not tell whether CompleteMultipartUpload honours conditions "
                    "(%s); conditional uploads go as one PUT", store.location, exc)
        conditional_multipart = False
    return ServerFeatures(
        if_match_unquoted=store.features.if_match_unquoted,
        conditional_delete=conditional_delete,
        conditional_multipart=conditional_multipart,
    )


def refused(store: S3Probed, how: str) -> StoreConfigError:
    return StoreConfigError(
        f"{store.location} does not honour conditional writes "
        f"(If-None-Match/If-Match); leases and state need them ({how})"
    )


def _must_lose(store: S3Probed, what: str, write: Callable[[], object]) -> None:
    try:
        write()
    except PreconditionFailed:
        return
    raise refused(store, what)


def _delete_honours_if_match(store: S3Probed, key: str, current: str, wrong: str) -> bool:
    """A delete If-Match a wrong ETag keeps the object, and one If-Match the right ETag
    removes it. Any other answer (ignored, refused with 501, removed anyway): no."""
    try:
        store.raw_delete(key, if_match=wrong)
    except (StoreConfigError, TransientStoreError):
        raise
    except PreconditionFailed:
        pass
    except StoreError:  # NotImplemented, InvalidArgument: the server rejects the header
        return False
    else:
        return False
    if store.head(key) is None:
        return False  # refused, yet removed
    try:
        store.raw_delete(key, if_match=current)
    except (StoreConfigError, TransientStoreError):
        raise
    except StoreError:
        return False
    return store.head(key) is None


def _complete_honours_conditions(store: S3Probed, key: str, wrong: str) -> bool:
    """CompleteMultipartUpload over the existing `key` with If-None-Match, then with a
    wrong If-Match: both must answer 412 and leave the object as it was."""
    before = store.head(key)
    for conditions in ({"if_none_match": True}, {"if_match": wrong}):
        upload = store.start_upload(key)
        try:
            etag = store.upload_part(key, upload, 1, b"probe multipart")
            try:
                store.complete_upload(key, upload, [etag], **conditions)  # type: ignore[arg-type]
            except PreconditionFailed:
                continue
            except (StoreConfigError, TransientStoreError):
                raise
            except StoreError:  # rejected, or NoSuchUpload after a lost reply: it completed
                pass
            return False
        finally:
            with suppress(StoreError, ClientError, BotoCoreError):
                store.abort_upload(key, upload)
    after = store.head(key)
    return before is not None and after is not None and after.etag == before.etag
