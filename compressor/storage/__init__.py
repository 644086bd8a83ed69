"""Storage backends behind one interface, and `open_store` to pick one from a URI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .base import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
)
from .local import LocalStore
from .s3 import MiB, S3Store

__all__ = [
    "LocalStore",
    "NotFound",
    "ObjectInfo",
    "PreconditionFailed",
    "S3Store",
    "Store",
    "StoreConfigError",
    "StoreError",
    "TransientStoreError",
    "open_store",
]

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
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StoreConfigError(f"no bucket in store URI {uri!r}")

    def get(name: str) -> str | None:
        return env.get(name) or None

    endpoint = get("S3_ENDPOINT")
    access, secret = get("S3_ACCESS_KEY"), get("S3_SECRET_KEY")
    names = ("S3_ACCESS_KEY", "S3_SECRET_KEY")
    if role == "compact":
        endpoint = get("S3_COMPACT_ENDPOINT") or endpoint
        if get("S3_COMPACT_ACCESS_KEY") or get("S3_COMPACT_SECRET_KEY"):
            access, secret = get("S3_COMPACT_ACCESS_KEY"), get("S3_COMPACT_SECRET_KEY")
            names = ("S3_COMPACT_ACCESS_KEY", "S3_COMPACT_SECRET_KEY")
    if bool(access) != bool(secret):
        missing = names[0] if not access else names[1]
        raise StoreConfigError(f"{missing} is not set but its pair is (bucket {bucket!r})")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise StoreConfigError(
            f"S3 endpoint for bucket {bucket!r} must start with http:// or https://"
        )
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
    )


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
