"""The fallbacks that keep the Store contract on a server honouring fewer conditions
than AWS S3 (docs/operations.md "Store compatibility").

s3probe.py finds out, at start, what the server honours (ServerFeatures); this
module is what the S3Store does differently where it lacks something:

- If-Match compared unquoted (Ceph RGW 16.2): learnt from a 412 on the object's own
  ETag, and sent bare from then on (`learnt_unquoted`, `condition_headers`);
- DeleteObject ignoring If-Match: a conditional delete writes a TOMBSTONE over the
  key with a conditional PUT, read as absent, and created over If-Match its ETag
  (`is_tombstone`, `send_again`);
- CompleteMultipartUpload ignoring conditions: a conditional upload goes as one
  PUT, at most SINGLE_PUT_MAX bytes (`one_put_instead`, `refuse_over_one_put`);
- CompleteMultipartUpload answering an empty ETag: the object's own, by HEAD, must
  be the upload's (`completed_etag`).

Separate from s3.py so that the store's requests read as AWS's and each workaround
is found, with its reason, in one place. It knows the store by a protocol
(S3Fallible), so s3.py imports it and it never imports s3.py.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import Protocol

from .base import ObjectInfo, StoreError, TransientStoreError, normalize_etag
from .s3probe import ServerFeatures

#: The store's own logger: these lines are the S3Store's.
log = logging.getLogger("compressor.storage.s3")

#: S3's limit for one PUT (5 GiB); conditional uploads on a server whose
#: CompleteMultipartUpload ignores conditions go as one PUT, so they cannot be larger.
SINGLE_PUT_MAX = 5 << 30
#: What a conditional delete leaves on a server without conditional DeleteObject: a key
#: holding exactly these bytes reads as absent (head, get, list) and is created over.
TOMBSTONE = b'{"quantlab_compact": "deleted"}\n'
TOMBSTONE_ETAG = hashlib.md5(TOMBSTONE).hexdigest()


class S3Fallible(Protocol):
    """What the fallbacks use of the S3Store (s3.py's S3Store is one)."""

    features: ServerFeatures

    @property
    def location(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    def _head_raw(self, key: str) -> ObjectInfo | None: ...

    def _where(self, key: str | None) -> str: ...


def is_tombstone(info: ObjectInfo | None) -> bool:
    return info is not None and info.size == len(TOMBSTONE) and info.etag == TOMBSTONE_ETAG


def condition_headers(
    features: ServerFeatures, if_match: str | None, if_none_match: bool
) -> dict[str, str]:
    """The IfMatch / IfNoneMatch request parameters, If-Match in the server's form."""
    conditions = {}
    if if_none_match:
        conditions["IfNoneMatch"] = "*"
    if if_match is not None:
        bare = normalize_etag(if_match)
        conditions["IfMatch"] = bare if features.if_match_unquoted else f'"{bare}"'
    return conditions


def learnt_unquoted(store: S3Fallible, current: ObjectInfo | None, if_match: str | None) -> bool:
    """After a 412 on `if_match`: whether the server refused a quoted If-Match although
    the object's ETag (`current`, as HEAD saw it) is the one asked for. Ceph RGW 16.2
    compares If-Match unquoted; the store learns to send it so (True: send again)."""
    if (if_match is None or current is None or is_tombstone(current)
            or current.etag != normalize_etag(if_match) or store.features.if_match_unquoted):
        return False
    store.features = replace(store.features, if_match_unquoted=True)
    log.info("%s compares If-Match unquoted: sending it so", store.location)
    return True


def send_again(
    store: S3Fallible, current: ObjectInfo | None, if_match: str | None, if_none_match: bool
) -> tuple[str | None, bool] | None:
    """After a conditional write's 412, with the object now `current`: the conditions to
    send it again with, or None (the 412 stands).

    If-None-Match that finds a tombstone is a create: sent again If-Match the
    tombstone, so of two creators exactly one wins, as over an absent key. If-Match
    refused although the object's ETag is the one asked for: learnt unquoted."""
    if if_none_match and is_tombstone(current):
        return TOMBSTONE_ETAG, False
    if learnt_unquoted(store, current, if_match):
        return if_match, if_none_match
    return None


def one_put_instead(features: ServerFeatures, conditional: bool) -> bool:
    """Whether an upload must go as one PUT whatever its size: a conditional one on a
    server whose CompleteMultipartUpload ignores conditions."""
    return conditional and not features.conditional_multipart


def refuse_over_one_put(store: S3Fallible, key: str, size: int) -> None:
    """StoreError for a file one PUT cannot carry (more than SINGLE_PUT_MAX bytes)."""
    if size > SINGLE_PUT_MAX:
        raise StoreError(
            f"put {store._where(key)}: {size} bytes is more than one PUT may carry "
            f"({SINGLE_PUT_MAX} bytes), and the server at {store.endpoint} ignores "
            "conditions on CompleteMultipartUpload, so it cannot be published safely"
        )


def completed_etag(store: S3Fallible, key: str, answered: str, expected: str) -> str:
    """The ETag of a completed upload. Ceph RGW 16.2 answers CompleteMultipartUpload
    with an empty one; the object's own (HEAD) is then taken, and must be the
    upload's, else another writer got in between (transient: retried)."""
    if normalize_etag(answered):
        return answered
    current = store._head_raw(key)
    if current is None or current.etag != expected:
        raise TransientStoreError(
            f"put {store._where(key)}: the upload completed without an ETag and the "
            "object is no longer the upload"
        )
    return current.etag
