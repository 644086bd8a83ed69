"""The one boto3 session every S3 client of the process is made from.

S3Store builds its clients from it, and the obstore data path (s3data.py) reads
boto3's credential chain through it, so it lives below both: s3.py imports s3data.py,
and neither imports the other for the session.

Sharing the session shares its loaded service models (a new session costs ~0.2 s);
credentials are per client. Sessions are not thread-safe, hence the lock.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

SESSION_LOCK = threading.Lock()
_SESSION: list[boto3.session.Session] = []


def new_client(config: Config, kwargs: dict[str, Any]) -> Any:
    """An S3 client from the shared session (see the module docstring)."""
    with SESSION_LOCK:
        return shared_session().client("s3", config=config, **kwargs)


def shared_session() -> boto3.session.Session:
    """The one boto3 session (created on first use); call it under SESSION_LOCK when
    using the session for more than reading credentials."""
    if not _SESSION:
        _SESSION.append(boto3.session.Session())
    return _SESSION[0]
