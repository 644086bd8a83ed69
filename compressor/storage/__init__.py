"""Storage backends behind one interface, and `open_store` to pick one from a URI.

S3Store (compressor/storage/s3.py) is imported on first use, not with this
package: it brings boto3 and botocore (and, once it reads, obstore), a few
tenths of a second of start-up that a run on local stores never needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .base import (
    NotFound,
    ObjectInfo,
    ObjectUnreadable,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
)
from .local import LocalStore

if TYPE_CHECKING:
    from .s3 import S3Store

__all__ = [
    "LocalStore",
    "NotFound",
    "ObjectInfo",
    "ObjectUnreadable",
    "PreconditionFailed",
    "S3Store",
    "Store",
    "StoreConfigError",
    "StoreError",
    "TransientStoreError",
    "open_store",
]


def __getattr__(name: str) -> object:
    """`compressor.storage.S3Store`, imported when first asked for (see the docstring)."""
    if name == "S3Store":
        from .s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ROLES = ("raw", "compact")
DEFAULT_REGION = "us-east-1"


def open_store(uri: str, env: Mapping[str, str], *, role: str) -> Store:
    """A Store for `s3://bucket[/prefix]` or a local directory path (or file:// URL).

    role 'raw' takes S3_ENDPOINT / S3_ACCESS_KEY / S3_SECRET_KEY; role 'compact'
    takes S3_COMPACT_ENDPOINT / S3_COMPACT_ACCESS_KEY / S3_COMPACT_SECRET_KEY,
    each falling back to the raw one (BRIEF §3). Without keys boto3's default
    credential chain applies. S3_REGION defaults to us-east-1. Empty values
    count as unset. The store is not contacted: call check() for that.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if uri.startswith("s3://"):
        return _open_s3(uri, env, role)
    if uri.startswith("file://"):
        return LocalStore(Path(uri[len("file://") :]))
    if "://" in uri:
        raise StoreConfigError(f"unsupported store URI scheme in {uri.split('://')[0]!r}://...")
    if not uri:
        raise StoreConfigError("empty store location")
    return LocalStore(Path(uri))


def _open_s3(uri: str, env: Mapping[str, str], role: str) -> S3Store:
    from .s3 import MiB, S3Store
    from .s3connect import DEFAULT_CHECK_TIMEOUT_S

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StoreConfigError(f"no bucket in store URI {uri!r}")

    def get(name: str) -> str | None:
        return env.get(name) or None

    endpoint_name, access_names = "S3_ENDPOINT", ("S3_ACCESS_KEY", "S3_SECRET_KEY")
    if role == "compact":
        if get("S3_COMPACT_ENDPOINT"):
            endpoint_name = "S3_COMPACT_ENDPOINT"
        if get("S3_COMPACT_ACCESS_KEY") or get("S3_COMPACT_SECRET_KEY"):
            access_names = ("S3_COMPACT_ACCESS_KEY", "S3_COMPACT_SECRET_KEY")
    endpoint = get(endpoint_name)
    access, secret = get(access_names[0]), get(access_names[1])
    # The only place these are validated: S3Store itself does not know the variables' names.
    if bool(access) != bool(secret):
        missing = access_names[0] if not access else access_names[1]
        raise StoreConfigError(f"{missing} is not set but its pair is (bucket {bucket!r})")
    if endpoint:
        _check_endpoint(endpoint, endpoint_name, bucket)
    return S3Store(
        bucket,
        prefix,
        endpoint_url=endpoint,
        access_key=access,
        secret_key=secret,
        region=get("S3_REGION") or DEFAULT_REGION,
        max_attempts=int(_number(env, "S3_MAX_ATTEMPTS", 8)),
        connect_timeout=_number(env, "S3_CONNECT_TIMEOUT", 10.0),
        read_timeout=_number(env, "S3_READ_TIMEOUT", 60.0),
        multipart_threshold=int(_number(env, "S3_MULTIPART_THRESHOLD", 64 * MiB)),
        check_timeout=_number(env, "S3_CHECK_TIMEOUT", DEFAULT_CHECK_TIMEOUT_S),
    )


def _check_endpoint(url: str, name: str, bucket: str) -> None:
    """StoreConfigError naming `name` unless `url` is an http(s) URL with a host and a
    valid port. The URL is not shown: it may hold a user:password@ part."""
    problem = None
    if not url.startswith(("http://", "https://")):
        problem = "must start with http:// or https://"
    else:
        try:
            parts = urlsplit(url)
            if parts.port == 0:  # urlsplit itself rejects other ports out of range
                raise ValueError("port 0")
            if not parts.hostname:
                problem = "has no host"
        except ValueError:  # a bracket left open, a port that is not a number
            problem = "is not a valid URL (host or port)"
    if problem:
        raise StoreConfigError(f"{name}, the S3 endpoint for bucket {bucket!r}, {problem}")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    """An optional numeric tuning knob from the environment (tests, slow links)."""
    value = env.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise StoreConfigError(f"{name} must be a number, not {value!r}") from None
    if number <= 0:
        raise StoreConfigError(f"{name} must be positive, not {value!r}")
    return number
