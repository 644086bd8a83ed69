"""Typed errors the merge raises. Each names the input file (and column) at fault."""

from __future__ import annotations

from pathlib import Path


class MergeInputError(Exception):
    """A raw input file the merge cannot use. `path` names it; `column` where it applies.

    `corrupt` is True when the object itself is damaged (unreadable Parquet), False when
    it is readable but violates the contract (schema conflict, ts_event problems).
    Both quarantine the partition; callers may skip corrupt files on request.
    """

    corrupt = False

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


class MissingTsEventError(MergeInputError):
    """The file has no ts_event column."""


class NullTsEventError(MergeInputError):
    """ts_event holds nulls (the count is in the message)."""


class BadTsEventTypeError(MergeInputError):
    """ts_event is neither an integer nor a timestamp."""


class MergeAborted(Exception):
    """The caller asked the merge to stop (a signal); partial output was removed."""
