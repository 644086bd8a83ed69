"""A directory on the local filesystem with the semantics of an S3 bucket.

Keys map to files under `root` ('a/b/c' -> root/a/b/c). The guarantees the job
relies on, and where they are kept:

- Atomic writes, conditional writes and deletes (if_match / if_none_match), every
  commit step under an exclusive `flock` on the key's parent directory, safe
  against a concurrent delete pruning the directories a writer is creating:
  compressor/storage/localwrite.py.
- Listing follows S3: key order is lexicographic by UTF-8 bytes, prefixes are
  plain string prefixes, a "directory" exists only while it holds an object,
  and the store's own temp files are never listed.
- No key can leave the root ('..', '.', empty segments, absolute keys, NUL and
  backslashes are rejected: compressor/storage/localfiles.py), and symlinks are
  neither listed nor followed out of the root.
- ETag: md5 hex of the content (unquoted, like S3Store), cached in an extended
  attribute so listings don't re-read files (localfiles.py).
- The merge reads raw files in place (LocalReader: localdata.py).

S3 allows both 'a' and 'a/b' as keys; a filesystem does not. Writing one while
the other exists raises StoreError naming the key.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .base import (
    TMP_MARK,
    DataReader,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
    normalize_etag,
)
from .localdata import LocalReader
from .localfiles import (
    file_info,
    has_object,
    listable,
    unreadable,
    validate_key,
    validate_prefix_dir,
)
from .localwrite import (
    atomic_copy,
    commit,
    copy_hashed,
    dir_lock,
    fsync_dir,
    prune_dirs,
    write_all,
    write_tmp,
)


class LocalStore(Store):
    """S3 semantics on a local directory; see the module docstring."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    # ----------------------------------------------------------------- checks

    def check(self) -> None:
        """The root is a readable directory. Not whether it is writable: read-only modes
        (docs/operations.md "Command line": --dry-run, --quality-report, --mode verify) must work on
        a read-only store; a run that writes learns it from check_conditional_writes."""
        if not self.root.exists():
            raise StoreConfigError(f"local store root {self.uri!r} does not exist")
        if not self.root.is_dir():
            raise StoreConfigError(f"local store root {self.uri!r} is a file, not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreConfigError(f"local store root {self.uri!r} is not readable")

    def check_conditional_writes(self, prefix: str) -> None:
        """Whether this store can be written at all, then the probe (Store's).

        Conditional writes here hold by construction (flock, module docstring), so the
        probe can only fail for want of writing: a read-only root, a file where a
        directory of the key should be. That is named as it is, not taken for a store
        that ignores conditions.
        """
        key = f"{prefix}writable-{uuid.uuid4().hex}"
        try:
            self.put_bytes(key, b"", if_none_match=True)
            self.delete(key)
        except StoreConfigError:
            raise
        except StoreError as exc:
            raise StoreConfigError(f"local store {self.uri!r} cannot be written: {exc}") from None
        super().check_conditional_writes(prefix)

    def clock_offset(self, host_clock: Callable[[], float] = time.time) -> float:
        """0.0: every process using a local directory runs on the host that has it."""
        return 0.0

    def _real_root(self) -> str:
        real = os.path.realpath(self.root)
        if not os.path.isdir(real):
            raise StoreConfigError(f"local store root {self.uri!r} is missing or not a directory")
        return real

    def _path(self, key: str) -> str:
        """The file path of an object key; StoreError if the key is not a safe object key."""
        validate_key(key)
        root = self._real_root()
        path = os.path.join(root, *key.split("/"))
        parent = os.path.realpath(os.path.dirname(path))
        if parent != root and not parent.startswith(root + os.sep):
            raise StoreError(f"key {key!r} resolves outside the store root")
        if os.path.islink(path):
            raise StoreError(f"key {key!r} is a symlink; the local store does not follow them")
        return path

    # ---------------------------------------------------------------- listing

    def list_prefixes(self, prefix: str) -> list[str]:
        dir_part, _, start = prefix.rpartition("/")
        found = []
        for name, is_dir, path in self._children(dir_part, start):
            if is_dir and has_object(path):
                found.append(f"{dir_part}/{name}/" if dir_part else f"{name}/")
        return found

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        dir_part, _, start = prefix.rpartition("/")
        base = f"{dir_part}/" if dir_part else ""
        yield from self._walk(dir_part, base, start)

    def _walk(self, dir_key: str, base: str, start: str) -> Iterator[ObjectInfo]:
        for name, is_dir, path in self._children(dir_key, start):
            if is_dir:
                yield from self._walk(base + name, f"{base}{name}/", "")
            else:
                info = file_info(base + name, path)
                if info is not None:
                    yield info

    def _children(self, dir_key: str, start: str) -> list[tuple[str, bool, str]]:
        """Entries of a directory whose names start with `start`, in S3 key order.

        A directory sorts as its name plus '/', which puts every key below it
        exactly where S3 would (e.g. 'a-b' < 'a/x' < 'a0').
        """
        directory = self._real_root()
        if dir_key:
            validate_prefix_dir(dir_key)
            directory = os.path.join(directory, *dir_key.split("/"))
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {dir_key or '/'!r}: {exc.strerror}") from None
        out = []
        for entry in entries:
            if not listable(entry.name) or not entry.name.startswith(start):
                continue
            if entry.is_symlink():
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir or entry.is_file(follow_symlinks=False):
                out.append((entry.name, is_dir, entry.path))
        out.sort(key=lambda e: (e[0] + "/" if e[1] else e[0]).encode("utf-8"))
        return out

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo | None:
        return file_info(key, self._path(key), of_head=True)

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        with self._open_object(key, path) as src:
            data = src.read()
        return data, hashlib.md5(data).hexdigest()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        src_path = self._path(key)
        with self._open_object(key, src_path) as src:
            size, etag = atomic_copy(src, Path(path))
        return ObjectInfo(key, size, etag)

    def data_reader(self) -> DataReader:
        """In place (LocalReader): the merge reads the raw files where they lie.

        A subclass that overrides get_file or get_bytes (a wrapper, a test double
        injecting faults) changes how objects are read: it keeps that, through the
        default reader.
        """
        cls = type(self)
        if cls.get_file is not LocalStore.get_file or cls.get_bytes is not LocalStore.get_bytes:
            return super().data_reader()
        return LocalReader(self)

    @contextmanager
    def _open_object(self, key: str, path: str) -> Iterator[BinaryIO]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"key {key!r} not found in {self.uri}") from None
        except PermissionError as exc:
            raise unreadable(key, exc) from None
        except OSError as exc:
            raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
        with fh:
            yield fh

    # ----------------------------------------------------------------- writes

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        target = self._path(key)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StoreError(f"cannot read local file {str(path)!r}: {exc.strerror}") from None
        with src:
            tmp, size, etag = write_tmp(self._real_root, key, target,
                                       lambda out: copy_hashed(src, out))

        def precondition() -> None:
            self._check_condition(key, target, if_match, if_none_match)

        commit(key, target, tmp, precondition)
        return ObjectInfo(key, size, etag)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        target = self._path(key)
        tmp, _, etag = write_tmp(self._real_root, key, target,
                                 lambda out: write_all(out, data))

        def precondition() -> None:
            self._check_condition(key, target, if_match, if_none_match)

        commit(key, target, tmp, precondition)
        return etag

    def _check_condition(
        self, key: str, target: str, if_match: str | None, if_none_match: bool
    ) -> None:
        """Runs under the directory lock, right before the replace."""
        if if_match is None and not if_none_match:
            return
        current = file_info(key, target)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"key {key!r} already exists (if_none_match)")
        if if_match is not None:
            if current is None:
                raise PreconditionFailed(f"key {key!r} does not exist (if_match)")
            if current.etag != normalize_etag(if_match):
                raise PreconditionFailed(f"key {key!r} changed since it was read (if_match)")

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """See Store.delete. With if_match the ETag check and the unlink are one step
        under the directory lock that conditional writes take, so a concurrent
        conditional write lands either before the check or after the unlink."""
        target = self._path(key)
        directory = os.path.dirname(target)
        try:
            with dir_lock(directory):
                if if_match is not None:
                    self._check_condition(key, target, if_match, False)
                try:
                    os.unlink(target)
                except (FileNotFoundError, NotADirectoryError):
                    return
                except IsADirectoryError:
                    return  # a prefix, not an object: S3 has nothing to delete either
                fsync_dir(directory)
                prune_dirs(self._real_root, directory)
        except (FileNotFoundError, NotADirectoryError):
            # the directory does not exist, so neither does the key
            if if_match is not None:
                raise PreconditionFailed(f"key {key!r} does not exist (if_match)") from None
            return
        except OSError as exc:
            raise StoreError(f"cannot delete key {key!r}: {exc.strerror}") from None

    def remove_stale_partials(self, max_age_s: float = 86400.0) -> int:
        """Delete temp files older than `max_age_s` left by killed writers; returns the count.

        Walks the whole tree: call it on the compact store, not on a huge raw lake.
        """
        cutoff = time.time() - max_age_s
        removed = 0
        for directory, _dirs, files in os.walk(self._real_root()):
            for name in files:
                if not name.startswith(TMP_MARK):
                    continue
                path = os.path.join(directory, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    continue
        return removed


__all__ = ["LocalStore"]
