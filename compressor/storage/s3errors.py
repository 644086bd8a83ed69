"""How a boto3 failure becomes one of the Store's errors (compressor/storage/base.py).

Separate from the S3Store because it is one rule, read on its own: which answers
concern one object (ObjectUnreadable: the run goes on with the others), which
concern every request (StoreConfigError, exit 2: docs/operations.md "Command line"),
which are worth another run (TransientStoreError), and which are a condition that
failed (PreconditionFailed). Retries of throttling, 5xx, resets and timeouts are
botocore's ('standard' mode); what survives them arrives here.

Errors are built from the error code, HTTP status and the bucket/key/endpoint
only, never from server text or the exception's own string, so no credential can
leak into a message.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)

from .base import (
    NotFound,
    ObjectUnreadable,
    PreconditionFailed,
    StoreConfigError,
    StoreError,
    TransientStoreError,
)

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
NETWORK_ERRORS = (ConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)


@dataclass(frozen=True)
class S3Errors:
    """The error mapping of one store: its bucket and endpoint (for the messages that
    name them) and its attempts per request (for the messages that count them)."""

    bucket: str
    endpoint: str
    attempts: int

    def of(self, exc: ClientError | BotoCoreError, op: str, where: str, *,
           per_object: bool) -> StoreError:
        """The StoreError for `op` on `where` (a key's URI, or the bucket)."""
        if isinstance(exc, ClientError):
            return self.of_answer(exc, op, where, per_object=per_object)
        name = type(exc).__name__
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreConfigError(f"{op} {where}: no usable S3 credentials ({name})")
        if isinstance(exc, NETWORK_ERRORS):
            return TransientStoreError(
                f"{op} {where}: {name} from {self.endpoint} after {self.attempts} attempts"
            )
        return StoreError(f"{op} {where}: {name}")

    def of_answer(
        self, exc: ClientError, op: str, where: str, *, per_object: bool = False
    ) -> StoreError:
        """The StoreError for an S3 error answer. `per_object`: the request named a key.

        A GET/HEAD of one key answering AccessDenied (403) or InvalidObjectState is
        that object's problem (ObjectUnreadable): the run goes on with the others.
        Everything else about permissions, credentials, the bucket or the clock
        (also on a GET) concerns every request: StoreConfigError, exit 2.
        """
        code = error_code(exc) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{op} {where}: {code} (HTTP {status})"
        if code in _NOT_FOUND and status in (0, 404):
            return NotFound(text)
        if code in _PRECONDITION or status == 412:
            return PreconditionFailed(text)
        if per_object and op in _OBJECT_READS and code in _UNREADABLE:
            return _unreadable(code, text)
        return self._of_bucket(code, status, text)

    def _of_bucket(self, code: str, status: int, text: str) -> StoreError:
        """An answer that concerns every request (or none in particular)."""
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
            return TransientStoreError(f"{text} after {self.attempts} attempts")
        return StoreError(text)


def _unreadable(code: str, text: str) -> ObjectUnreadable:
    if code == "InvalidObjectState":
        return ObjectUnreadable(
            f"{text}: the object is archived (e.g. Glacier); restore it to read it"
        )
    return ObjectUnreadable(f"{text}: the object cannot be read with these credentials")


def error_code(exc: ClientError | BotoCoreError) -> str | None:
    """The S3 error code of a ClientError; None for errors below the HTTP layer."""
    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def was_retried(exc: ClientError | BotoCoreError) -> bool:
    """Whether botocore sent the request more than once (a reply may have been lost)."""
    if not isinstance(exc, ClientError):
        return False
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0
