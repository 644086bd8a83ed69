"""One object as one file of a LocalStore: which keys may be files, what a file says
as an object (its size and ETag), and how a file that cannot be read is reported.

The ETag is the md5 hex of the content (unquoted, like S3Store's). It is computed
while writing (compressor/storage/localwrite.py) or on first read, and cached in an
extended attribute with the size and mtime it is valid for, so listings don't
re-read files. No key can leave the root: '..', '.', empty segments, absolute
keys, NUL and backslashes are rejected, as are segments the store's own temp
files use.

Separate from local.py because the store (listing, HEAD, conditions), its writes
and its data path (localdata.py) all ask these questions of a file, and each
must answer them the same way.
"""

from __future__ import annotations

import os

from .base import TMP_MARK, ObjectInfo, ObjectUnreadable, StoreError, md5_file

_XATTR = "user.qlc.md5"


def validate_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid key {key!r}: empty")
    if key.startswith("/"):
        raise StoreError(f"invalid key {key!r}: absolute")
    if "\x00" in key or "\\" in key:
        raise StoreError(f"invalid key {key!r}: contains NUL or backslash")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreError(f"invalid key {key!r}: empty, '.' or '..' segment")
        if segment.startswith(TMP_MARK):
            raise StoreError(f"invalid key {key!r}: segment reserved for temp files")
        if len(segment.encode("utf-8", "surrogatepass")) > 255:
            raise StoreError(f"invalid key {key!r}: segment longer than 255 bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"invalid key {key!r}: not valid UTF-8") from None


def validate_prefix_dir(dir_key: str) -> None:
    """The directory part of a listing prefix must itself be a safe key path."""
    try:
        validate_key(dir_key)
    except StoreError:
        raise StoreError(f"invalid listing prefix {dir_key + '/'!r}") from None


def listable(name: str) -> bool:
    if name.startswith(TMP_MARK):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False  # not representable as an S3 key
    return True


def has_object(directory: str) -> bool:
    """Whether a directory holds at least one listable object, at any depth."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return False
    for entry in entries:
        if not listable(entry.name) or entry.is_symlink():
            continue
        if entry.is_file(follow_symlinks=False):
            return True
        if entry.is_dir(follow_symlinks=False) and has_object(entry.path):
            return True
    return False


def unreadable(key: str, exc: OSError) -> ObjectUnreadable:
    return ObjectUnreadable(f"cannot read key {key!r}: {exc.strerror}: the object cannot be "
                            "read with this user's permissions")


def file_info(key: str, path: str, *, of_head: bool = False) -> ObjectInfo | None:
    """ObjectInfo of a file, its ETag from the xattr cache when still valid.

    A PermissionError is ObjectUnreadable for a HEAD of the key (`of_head`), as on
    S3; a plain StoreError in listings, which S3 answers without reading objects.
    """
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            etag = cached_etag(fh.fileno(), st)
            if etag is None:
                etag = md5_file(fh).hex()
                remember_etag(fh.fileno(), etag, st)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except PermissionError as exc:
        if of_head:
            raise unreadable(key, exc) from None
        raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
    except OSError as exc:
        raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
    return ObjectInfo(key, st.st_size, etag)


def cached_etag(fd: int, st: os.stat_result) -> str | None:
    try:
        value = os.getxattr(fd, _XATTR).decode()
    except (OSError, AttributeError, UnicodeDecodeError):
        return None
    parts = value.split(" ")
    if len(parts) == 3 and parts[1] == str(st.st_size) and parts[2] == str(st.st_mtime_ns):
        return parts[0]
    return None


def remember_etag(fd: int, etag: str, st: os.stat_result | None = None) -> None:
    """Cache the md5 with the size and mtime it is valid for; best effort."""
    st = st or os.fstat(fd)
    try:
        os.setxattr(fd, _XATTR, f"{etag} {st.st_size} {st.st_mtime_ns}".encode())
    except (OSError, AttributeError):
        pass
