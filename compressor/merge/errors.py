"""Typed errors the merge raises. Each names the input file (and column) at fault."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class MergeInputError(Exception):
    """A raw input file the merge cannot use. `path` names it; `column` where it applies.

    `corrupt` is True when the object itself is damaged (unreadable Parquet), False when
    it is readable but violates the contract (schema conflict, ts_event problems).
    Both quarantine the partition. `skippable`: the file alone is at fault, whatever the
    other files hold (unreadable, or its own ts_event unusable), so leaving it out is
    what --skip-corrupt means (docs/operations.md "Runbook"). A schema conflict is not: it
    is between this file and earlier ones, and the odd one out may be an earlier file.
    """

    corrupt = False
    skippable = True

    def __init__(self, path: Path | str, message: str, column: str | None = None) -> None:
        self.path = str(path)
        self.column = column
        self.reason = message
        where = f"{self.path}" + (f" column {column!r}" if column else "")
        super().__init__(f"{where}: {message}")


class CorruptFileError(MergeInputError):
    """Not readable as Parquet: bad footer, bad compressed page, truncated, concatenated."""

    corrupt = True


class SchemaConflictError(MergeInputError):
    """A column's type cannot be unified with the same column in earlier files."""

    skippable = False


class MissingTsEventError(MergeInputError):
    """The file has no ts_event column."""


class NullTsEventError(MergeInputError):
    """ts_event holds nulls (the count is in the message)."""


class BadTsEventTypeError(MergeInputError):
    """ts_event is neither an integer nor a timestamp."""


class MergeAborted(Exception):
    """The caller asked the merge to stop (a signal); partial output was removed."""


class MergeResourceError(OSError):
    """Reading an input failed for want of a resource, not because of the input's bytes.

    Too many open files, out of memory, permission denied, an I/O error, a path that is
    no longer a file: the object may be perfectly healthy, so this is deliberately not
    a MergeInputError (never quarantined, never skipped by --skip-corrupt). It is an
    OSError carrying the cause's `errno` (None when it had none, e.g. ArrowMemoryError)
    so callers fail the partition as retryable and still recognise ENOSPC/EDQUOT.
    `path` names the input; the message is one line: path, what failed, errno/strerror.
    """

    def __init__(self, path: Path | str, action: str, cause: BaseException) -> None:
        code = cause.errno if isinstance(cause, OSError) else None
        if isinstance(code, int) and code > 0:
            name = errno.errorcode.get(code, str(code))
            detail = f"[Errno {code} {name}] {os.strerror(code)}"
        else:
            code = None
            text = str(cause).strip().splitlines()
            detail = f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
        super().__init__(code, detail)
        self.path = str(path)
        self.filename = self.path
        self.action = action
        self.cause = cause
        self.message = f"{self.path}: {action} failed (not the file's bytes): {detail}"

    def __str__(self) -> str:
        return self.message
