"""Reaching an S3 bucket: the boto3 clients' settings, the start-up check that the
endpoint answers (docs/operations.md "Configuration", S3_CHECK_TIMEOUT), and the
server's clock (the job refuses a host clock too far off it).

Separate from s3.py because it is what happens before the first object is read:
timeouts, retries, a patient first LIST, the Date header. The clients come from the
shared boto3 session (s3session.py). It knows the store by a protocol (S3Reachable),
so s3.py imports it and it never imports s3.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from .base import StoreConfigError, StoreError, TransientStoreError
from .s3errors import error_code
from .s3session import new_client

#: The store's own logger: these lines are the S3Store's.
log = logging.getLogger("compressor.storage.s3")

#: How long, in all, check() waits for an endpoint that takes connections but does not
#: answer (S3_CHECK_TIMEOUT, docs/operations.md "Configuration"), and the longest one try waits.
DEFAULT_CHECK_TIMEOUT_S = 60.0
_CHECK_TRY_TIMEOUT_S = 10.0
#: The job refuses to run when its clock and the S3 server's differ by more than this.
#: S3 itself rejects requests signed more than 15 minutes off (RequestTimeTooSkewed); the
#: state's and the leases' timestamps come from this clock too.
MAX_CLOCK_SKEW_S = 15 * 60
#: HTTP connections kept per client: the job's parallel downloads share one store.
MAX_POOL_CONNECTIONS = 32


class S3Reachable(Protocol):
    """What the start-up check uses of the S3Store (s3.py's S3Store is one)."""

    bucket: str
    prefix: str
    endpoint: str
    check_timeout: float
    _check_client: Any
    _check_try_s: float

    def _error(self, exc: ClientError | BotoCoreError, op: str, key: str | None
               ) -> StoreError: ...


def new_clients(
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
        "max_pool_connections": MAX_POOL_CONNECTIONS,
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
    per_try = check_try_timeout(check_timeout, read_timeout)
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


def check_try_timeout(check_timeout: float, read_timeout: float) -> float:
    """Seconds one try of check() waits for an answer: a quarter of its whole time, so
    that several tries fit, but no more than _CHECK_TRY_TIMEOUT_S nor S3_READ_TIMEOUT."""
    return max(1.0, min(_CHECK_TRY_TIMEOUT_S, read_timeout, check_timeout / 4))


def first_list(store: S3Reachable, sleep: Callable[[float], None]) -> Any:
    """The answer to check()'s LIST of at most one key, tried until `check_timeout`
    (see S3Store.check): StoreConfigError when none came in time."""
    request = {"Bucket": store.bucket, "Prefix": store.prefix, "MaxKeys": 1}
    deadline = time.monotonic() + store.check_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return store._check_client.list_objects_v2(**request)
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise StoreConfigError(
                f"cannot reach S3 endpoint {store.endpoint} for bucket {store.bucket!r}: "
                f"{type(exc).__name__}"
            ) from None
        except (ClientError, BotoCoreError) as exc:
            error = store._error(exc, "check", None)
            if not isinstance(error, TransientStoreError):
                raise error from None
            why = _check_failure(exc)
        left = deadline - time.monotonic()
        pause = min(0.5 * 2 ** (attempt - 1), 5.0)
        if left < pause + store._check_try_s:  # the next try could not finish in time
            raise StoreConfigError(
                f"S3 endpoint {store.endpoint} gave no usable answer for bucket "
                f"{store.bucket!r} within {store.check_timeout:g}s ({attempt} tries, the "
                f"last: {why}): is it an S3 server, and up? (S3_CHECK_TIMEOUT)"
            )
        log.warning("waiting for S3 endpoint %s (bucket %r): try %d: %s; trying again "
                    "for up to %.0fs more", store.endpoint, store.bucket, attempt, why, left)
        sleep(pause)


def _check_failure(exc: ClientError | BotoCoreError) -> str:
    """What one failed try of check() got, for its log line: no server text, no URL."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{error_code(exc) or 'error'} (HTTP {status})"
    if isinstance(exc, ReadTimeoutError):
        return "no answer (ReadTimeoutError)"
    return type(exc).__name__


def refuse_skew(endpoint: str, server_time: float | None) -> None:
    """StoreConfigError when this host's clock is more than MAX_CLOCK_SKEW_S off the
    server's (its `Date` header; no header, no check)."""
    if server_time is None:
        return
    skew = time.time() - server_time
    if abs(skew) > MAX_CLOCK_SKEW_S:
        side = "ahead of" if skew > 0 else "behind"
        raise StoreConfigError(
            f"this host's clock is {_duration(abs(skew))} {side} the S3 server at "
            f"{endpoint} (its Date header; at most {_duration(MAX_CLOCK_SKEW_S)} "
            "allowed): fix the system clock (NTP)"
        )


def server_date(resp: Any) -> float | None:
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
