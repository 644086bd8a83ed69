"""The fetch (compressor/partition/fetch.py) and its data paths, against LocalStore and S3.

In place for a local store (the merge gets the raw files' real paths, checked
again after the merge), in memory then temp files over S3 (obstore), the same
output bytes whichever way; every check of the download kept: size/ETag against
the listing, unreadable objects naming the key, stop requests, a full temp
disk, the temp dir removed; no secret in any error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compressor.demo import PartitionSpec, write_partition
from compressor.discovery import Partition, list_partition
from compressor.merge import MemoryInput, MergeAborted, MergeSettings, merge_files
from compressor.partition.compact import BadInputError, CompactSettings, compact_partition
from compressor.partition.fetch import (
    STOP_POLL_S,
    Fetched,
    RawChangedError,
    RawUnreadableError,
    TempSpaceError,
    fetch,
)
from compressor.storage import LocalStore, ObjectInfo, S3Store, Store, StoreConfigError, StoreError
from compressor.storage.base import InPlaceReader
from tests import jobworld
from tests.conftest import make_s3_store, put_partition
from tests.jobworld import ENDPOINT_PASSWORD, ENDPOINT_USER, with_userinfo
from tests.support.s3proxy import S3Proxy

auth_server = jobworld.auth_server  # the fixture: a moto server that checks signatures


def _spec(**kw: object) -> PartitionSpec:
    base: dict[str, object] = {"exchange": "bybit", "stream": "trade", "symbol": "ethusdt",
                               "date": "20261123", "files": 10, "rows_per_file": 120}
    base.update(kw)
    return PartitionSpec(**base)  # type: ignore[arg-type]


def _local(tmp_path: Path, name: str = "raw") -> LocalStore:
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return LocalStore(root)


@pytest.fixture(params=["local", "s3"])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The raw store, once per backend."""
    if request.param == "local":
        return _local(tmp_path)
    return make_s3_store(request.getfixturevalue("moto_server"),
                         request.getfixturevalue("s3_bucket"), max_attempts=3, read_timeout=10.0)


def _s3(request: pytest.FixtureRequest, **kw: object) -> S3Store:
    return make_s3_store(request.getfixturevalue("moto_server"),
                         request.getfixturevalue("s3_bucket"), **kw)


def _put(store: Store, spec: PartitionSpec, tmp_path: Path) -> tuple[Partition, list[str]]:
    keys = put_partition(store, spec, tmp_path)
    return list_partition(store, spec.partition), keys


def _bytes_of(store: Store, key: str) -> bytes:
    return store.get_bytes(key)[0]


def _source_bytes(source: object) -> bytes:
    if isinstance(source, MemoryInput):
        return bytes(source.data.to_pybytes())
    assert isinstance(source, Path)
    return source.read_bytes()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- local: in place


def test_local_store_is_fetched_in_place(tmp_path: Path) -> None:
    store = _local(tmp_path)
    part, keys = _put(store, _spec(), tmp_path)
    assert isinstance(store.data_reader(), InPlaceReader)
    fetched = fetch(part, store, tmp_path / "work" / "in")
    assert [item.key for item in fetched.inputs] == keys
    root = os.path.realpath(store.root)
    for item in fetched.inputs:
        assert isinstance(item.source, Path)
        assert str(item.source) == os.path.join(root, *item.key.split("/"))  # the file itself
        assert item.source.read_bytes() == _bytes_of(store, item.key)
    assert not (tmp_path / "work").exists()  # nothing copied, not even a directory
    assert (fetched.in_place_bytes, fetched.memory_bytes, fetched.file_bytes) == (
        part.total_bytes, 0, 0)
    fetched.check_unchanged()


def test_local_paths_never_leave_the_store_root(tmp_path: Path) -> None:
    """A symlinked file or directory in the raw tree is never followed to a path outside."""
    store = _local(tmp_path)
    part, keys = _put(store, _spec(files=2), tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.parquet").write_bytes((store.root / keys[0]).read_bytes())
    info = store.head(keys[0])
    assert info is not None
    prefix = part.pid.prefix

    linked_file = store.root / prefix / "part-9-000009.parquet"
    linked_file.symlink_to(outside / "secret.parquet")
    bad = Partition(part.pid, (*part.files, ObjectInfo(prefix + linked_file.name, info.size,
                                                       info.etag)))
    with pytest.raises(StoreError, match="symlink"):
        fetch(bad, store, tmp_path / "in")

    (store.root / "exchange=bybit" / "stream=trade" / "symbol=linked").symlink_to(outside)
    (outside / "date=20261123").mkdir()
    (outside / "date=20261123" / "x.parquet").write_bytes(b"x")
    linked_dir = "exchange=bybit/stream=trade/symbol=linked/date=20261123/x.parquet"
    bad = Partition(part.pid, (ObjectInfo(linked_dir, 1, hashlib.md5(b"x").hexdigest()),))
    with pytest.raises(StoreError, match="outside the store root"):
        fetch(bad, store, tmp_path / "in")


def test_local_files_are_located_in_the_calling_thread_and_a_stop_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In place, no thread pool (a locate is GIL-bound work): every file is located by the
    caller, in key order, and should_stop is asked every LOCATE_POLL_FILES files."""
    import compressor.partition.fetch as fetch_module

    store = _local(tmp_path)
    part, keys = _put(store, _spec(files=7, rows_per_file=5), tmp_path)
    monkeypatch.setattr(fetch_module, "LOCATE_POLL_FILES", 3)
    reader = store.data_reader()
    assert isinstance(reader, InPlaceReader)
    seen: list[tuple[str, int]] = []
    real_locate = type(reader).locate

    def spy(self: InPlaceReader, key: str) -> object:
        seen.append((key, threading.get_ident()))
        return real_locate(self, key)  # type: ignore[arg-type]

    monkeypatch.setattr(type(reader), "locate", spy)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(len(seen))
        return False

    fetched = fetch(part, store, tmp_path / "in", should_stop=should_stop)
    assert [item.key for item in fetched.inputs] == keys
    assert seen == [(key, threading.get_ident()) for key in keys]
    assert asked == [0, 3, 6]

    seen.clear()
    with pytest.raises(MergeAborted):
        fetch(part, store, tmp_path / "in", should_stop=lambda: len(seen) >= 3)
    assert len(seen) == 3  # stopped at the next poll, nothing located after it


def _rewrite_when_merging(
    work: Path, rewrite: Callable[[], None]
) -> Callable[[], bool]:
    """A should_stop that rewrites a raw file once, as soon as the merge has started."""
    done: list[bool] = []

    def should_stop() -> bool:
        if not done and any(work.glob("qlc-part-*/spill")):
            done.append(True)
            rewrite()
        return False

    return should_stop


@pytest.mark.parametrize("how", ["replaced", "written-in-place", "corrupted-in-place"])
def test_local_file_changed_during_the_merge_fails_the_partition(
    tmp_path: Path, how: str
) -> None:
    store, compact = _local(tmp_path), _local(tmp_path, "compact")
    part, keys = _put(store, _spec(), tmp_path)
    target = store.root / keys[-1]
    original = target.read_bytes()

    def rewrite() -> None:
        if how == "replaced":  # a writer through the store: a new file replaces it
            store.put_bytes(keys[-1], _bytes_of(store, keys[0]))
        elif how == "written-in-place":  # the same bytes again, written over the file
            with open(target, "r+b") as fh:
                fh.write(original)
        else:  # garbage over the data pages: the merge itself fails on it
            with open(target, "r+b") as fh:
                fh.seek(8)
                fh.write(b"\xff" * (len(original) // 2))

    time.sleep(0.01)  # past the file's own mtime tick
    settings = CompactSettings(tmp_root=tmp_path / "work")
    with pytest.raises(RawChangedError) as info:
        compact_partition(part, store, compact, settings,
                          should_stop=_rewrite_when_merging(tmp_path / "work", rewrite))
    assert keys[-1] in str(info.value) and "while it was being merged" in str(info.value)
    assert info.value.retryable
    assert list(compact.list_objects("")) == []  # nothing published
    assert list((tmp_path / "work").iterdir()) == []


# --------------------------------------------------------------------------- both stores


def test_raw_object_changed_between_listing_and_fetch(raw: Store, tmp_path: Path) -> None:
    part, keys = _put(raw, _spec(), tmp_path)
    raw.put_bytes(keys[4], _bytes_of(raw, keys[5]))  # rewritten by the collector
    for budget in (1 << 30, 0):
        with pytest.raises(RawChangedError) as info:
            fetch(part, raw, tmp_path / f"in-{budget}", fetch_budget_bytes=budget)
        assert info.value.retryable and keys[4] in str(info.value)
        assert "changed since it was listed" in str(info.value)

    raw.put_bytes(keys[4], _bytes_of(raw, keys[4])[:-1] + b"!")  # same size, other bytes
    part = list_partition(raw, part.pid)
    raw.delete(keys[7])  # removed since the listing
    with pytest.raises(RawChangedError, match=f"{keys[7]}: raw object gone"):
        fetch(part, raw, tmp_path / "in-gone")


def test_unreadable_object_fails_naming_its_key(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A 403 for one object (a foreign KMS key) is RawUnreadableError naming the key, over S3
    (both the obstore GET and boto3's second opinion get it) and on a local store."""
    store = _s3(request)
    part, keys = _put(store, _spec(files=4), tmp_path)
    with S3Proxy(request.getfixturevalue("moto_server")) as proxy:
        via = make_s3_store(proxy.endpoint, store.bucket, max_attempts=2)
        for kind in ("access_denied", "invalid_object_state"):
            proxy.fail_next(kind, 50, ops=["GET"], path_contains=keys[2].rsplit("/", 1)[1])
            with pytest.raises(RawUnreadableError) as info:
                fetch(part, via, tmp_path / "in")
            assert info.value.key == keys[2] and keys[2] in str(info.value)
            proxy.clear_faults()



def test_unreadable_local_file_fails_naming_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _local(tmp_path)
    part, keys = _put(local, _spec(files=3), tmp_path)
    denied = os.path.realpath(local.root / keys[1])
    real_open = os.open

    def fake_open(path: object, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == denied:  # type: ignore[call-overload]
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(RawUnreadableError) as info:
        fetch(part, local, tmp_path / "in")
    assert info.value.key == keys[1] and "Permission denied" in str(info.value)


def test_stop_request_is_noticed_within_the_poll_interval(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = _s3(request)
    part, _ = _put(store, _spec(files=40, rows_per_file=20), tmp_path)
    with S3Proxy(request.getfixturevalue("moto_server")) as proxy:
        proxy.set_faults(1.0, ["delay"], ops=["GET"], delay=3.0)  # every GET stalls
        via = make_s3_store(proxy.endpoint, store.bucket, max_attempts=1, read_timeout=2.0)
        asked: list[float] = []

        def should_stop() -> bool:
            if time.monotonic() - started > 0.3:
                asked.append(time.monotonic())
            return bool(asked)

        started = time.monotonic()
        with pytest.raises(MergeAborted):
            fetch(part, via, tmp_path / "in", fetch_budget_bytes=0, should_stop=should_stop)
        assert time.monotonic() - asked[0] < 0.05  # raised as soon as asked
        assert asked[0] - started < 0.3 + STOP_POLL_S + 0.1  # asked within one poll
        proxy.clear_faults()


# --------------------------------------------------------------------------- S3: memory, files


def test_s3_inputs_in_memory_within_the_budget_then_temp_files(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = _s3(request)
    part, keys = _put(store, _spec(), tmp_path)
    assert type(store.data_reader()).__name__ == "ObstoreReader"
    sizes = [info.size for info in part.files]
    budget = sum(sizes[:4]) + sizes[4] // 2  # the first four fit, the fifth does not

    for budget_bytes, in_memory in ((1 << 30, len(keys)), (0, 0), (budget, 4)):
        directory = tmp_path / f"in-{budget_bytes}"
        fetched = fetch(part, store, directory, fetch_budget_bytes=budget_bytes)
        assert [item.key for item in fetched.inputs] == keys
        kinds = [isinstance(item.source, MemoryInput) for item in fetched.inputs]
        assert kinds == [True] * in_memory + [False] * (len(keys) - in_memory)
        assert fetched.memory_bytes == sum(sizes[:in_memory])
        assert fetched.file_bytes == sum(sizes[in_memory:])
        for item in fetched.inputs:
            assert _source_bytes(item.source) == _bytes_of(store, item.key)
            if isinstance(item.source, MemoryInput):
                assert item.source.name == item.key
            else:
                assert item.source.parent == directory
        assert directory.exists() == (in_memory < len(keys))
    with pytest.raises(ValueError, match="fetch_budget_bytes"):
        fetch(part, store, tmp_path / "x", fetch_budget_bytes=-1)


def test_s3_reader_fetches_odd_keys_verbatim(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Keys obstore would refuse or rewrite go through boto3; the others through obstore."""
    store = _s3(request)
    reader = store.data_reader()
    keys = ["p/a b é.parquet", "p/100%.parquet", "p/x#y?z&w=1+2.parquet", "p/a//b.parquet",
            "p/./c.parquet", "p/../d.parquet", "p/tab\tkey.parquet", "p/trailing/"]
    for n, key in enumerate(keys):
        store.put_bytes(key, f"{n}:{key}".encode())
    for n, key in enumerate(keys):
        got = reader.read(key)
        assert got.data.to_pybytes() == f"{n}:{key}".encode(), key
        assert got.info == store.head(key)
        dest = tmp_path / f"{n}.bin"
        assert reader.read_to_file(key, dest) == store.head(key)
        assert dest.read_bytes() == f"{n}:{key}".encode()


def test_s3_reader_asks_boto3_when_obstore_fails(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A failed obstore GET (here one 403) is made again through boto3, whose answer stands."""
    store = _s3(request)
    store.put_bytes("k/one.parquet", b"one")
    with S3Proxy(request.getfixturevalue("moto_server")) as proxy:
        via = make_s3_store(proxy.endpoint, store.bucket, max_attempts=2)
        proxy.fail_next("access_denied", 1, ops=["GET"])
        assert via.data_reader().read("k/one.parquet").data.to_pybytes() == b"one"
        assert proxy.counts()["GET"] == 2


# --------------------------------------------------------------------------- the same bytes


def _compact_sha(part: Partition, raw: Store, tmp_path: Path, name: str, budget: int,
                 merge: MergeSettings, want_slices: bool = False) -> str:
    compact = _local(tmp_path, f"compact-{name}")
    settings = CompactSettings(tmp_root=tmp_path / f"work-{name}", merge=merge,
                               fetch_budget_bytes=budget, download_workers=4)
    result = compact_partition(part, raw, compact, settings)
    if want_slices:  # three slices, each a sorted run merged at the end
        assert result.merge.passes > 1 and result.merge.spill_runs >= 3
    out = tmp_path / f"{name}.parquet"
    compact.get_file(part.pid.data_key, out)
    assert _sha256(out) == result.sha256
    assert list((tmp_path / f"work-{name}").iterdir()) == []
    return result.sha256


@pytest.mark.parametrize("layout", ["edges", "spans_day"])
def test_same_inputs_same_bytes_in_memory_in_temp_files_and_in_place(
    request: pytest.FixtureRequest, tmp_path: Path, layout: str
) -> None:
    spec = _spec(files=16, rows_per_file=400, layout=layout, empty=1)
    local = _local(tmp_path)
    s3 = _s3(request)
    local_part, keys = _put(local, spec, tmp_path)
    s3_part, s3_keys = _put(s3, spec, tmp_path)
    assert keys == s3_keys and [f.etag for f in local_part.files] == [
        f.etag for f in s3_part.files]
    # spans_day with a small budget spills runs and merges them (another path through the merge)
    merge = MergeSettings(memory_budget=2 << 20) if layout == "spans_day" else MergeSettings()
    half = s3_part.total_bytes // 2
    shas = {
        "in-place": _compact_sha(local_part, local, tmp_path, "in-place", 1 << 30, merge),
        "memory": _compact_sha(s3_part, s3, tmp_path, "memory", 1 << 30, merge),
        "temp-files": _compact_sha(s3_part, s3, tmp_path, "files", 0, merge),
        "half-and-half": _compact_sha(s3_part, s3, tmp_path, "half", half, merge),
    }
    # slice processes (docs/guarantees.md "How a run works") read files: an S3 partition that does
    # not fit the fetch budget goes to temp files, all of it, and is merged in slices;
    # one that fits stays in memory, merged in one process. The bytes are the same.
    sliced = replace(merge, processes=3, parallel_min_files=2)
    for name, part, store, budget, want in (
        ("slices-local", local_part, local, 1 << 30, True),
        ("slices-s3", s3_part, s3, half, True),
        ("slices-s3-fits", s3_part, s3, 1 << 30, False),
    ):
        shas[name] = _compact_sha(part, store, tmp_path, name, budget, sliced, want_slices=want)
    assert len(set(shas.values())) == 1, shas


def test_merge_takes_paths_and_buffers_alike(tmp_path: Path) -> None:
    paths = write_partition(_spec(files=6), tmp_path / "raw")
    by_path = merge_files(paths, tmp_path / "a.parquet", tmp_dir=tmp_path)
    buffers = [pa.py_buffer(p.read_bytes()) for p in paths]
    mixed: list[Path | MemoryInput | pa.Buffer] = [
        buffers[0], MemoryInput("k1", buffers[1]), *paths[2:4], *buffers[4:]]
    by_buffer = merge_files(buffers, tmp_path / "b.parquet", tmp_dir=tmp_path)
    by_mix = merge_files(mixed, tmp_path / "c.parquet", tmp_dir=tmp_path)
    assert by_path.rows == by_buffer.rows == by_mix.rows == pq.read_metadata(
        tmp_path / "a.parquet").num_rows
    assert _sha256(tmp_path / "a.parquet") == _sha256(tmp_path / "b.parquet") == _sha256(
        tmp_path / "c.parquet")


# --------------------------------------------------------------------------- errors name keys


@pytest.mark.parametrize("where", ["in-place", "memory", "temp-files"])
def test_errors_name_the_raw_key_never_a_local_path(
    request: pytest.FixtureRequest, tmp_path: Path, where: str
) -> None:
    spec = _spec(files=8, corrupt=2)
    raw = _local(tmp_path) if where == "in-place" else _s3(request)
    part, keys = _put(raw, spec, tmp_path)
    budget = 0 if where == "temp-files" else 1 << 30
    settings = CompactSettings(tmp_root=tmp_path / "work", fetch_budget_bytes=budget)
    compact = _local(tmp_path, "compact")
    with pytest.raises(BadInputError) as info:
        compact_partition(part, raw, compact, settings)
    assert info.value.key in keys
    assert str(info.value).startswith(info.value.key)
    assert "qlc-part-" not in str(info.value) and str(tmp_path) not in str(info.value)

    skipping = replace(settings, skip_corrupt=True)
    result = compact_partition(part, raw, compact, skipping)
    assert len(result.skipped_files) == 2 and set(result.skipped_files) <= set(keys)
    assert result.skipped_files == sorted(result.skipped_files)
    assert list((tmp_path / "work").iterdir()) == []


# --------------------------------------------------------------------------- temp disk


def test_full_temp_disk_is_temp_space_error_and_memory_needs_no_disk(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_disk: Path
) -> None:
    """Copies + spills overflow 1 MiB (TempSpaceError, nothing left behind); the same
    partition held in memory needs the disk for the spills and the output only."""
    raw = _s3(request)
    part, _ = _put(raw, _spec(stream="bbo", files=12, rows_per_file=1500, layout="spans_day"),
                   tmp_path)
    assert 600 << 10 < part.total_bytes < 1 << 20
    merge = MergeSettings(memory_budget=1 << 20)
    compact = _local(tmp_path, "compact")
    settings = CompactSettings(tmp_root=tiny_disk, merge=merge, fetch_budget_bytes=0)
    with pytest.raises(TempSpaceError, match="temp disk full"):
        compact_partition(part, raw, compact, settings)
    assert list(tiny_disk.iterdir()) == []
    result = compact_partition(part, raw, compact, replace(settings, fetch_budget_bytes=1 << 30))
    assert result.rows > 0 and list(tiny_disk.iterdir()) == []


# --------------------------------------------------------------------------- secrets


def test_fetch_with_bad_credentials_shows_no_secret(
    auth_server: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = with_userinfo(auth_server["url"])
    good = S3Store("qlc-auth-raw", endpoint_url=url, access_key=auth_server["access"],
                   secret_key=auth_server["secret"], region="us-east-1", max_attempts=2)
    part, _ = _put(good, _spec(symbol="secretusdt", files=3), tmp_path)
    wrong_secret = "qlcWrongSecretKEY5ecret7"
    bad = S3Store("qlc-auth-raw", endpoint_url=url, access_key=auth_server["access"],
                  secret_key=wrong_secret, region="us-east-1", max_attempts=2)
    secrets = (wrong_secret, auth_server["secret"], auth_server["access"], ENDPOINT_USER,
               ENDPOINT_PASSWORD)
    caplog.set_level(logging.DEBUG, logger="compressor")
    for budget in (1 << 30, 0):
        with pytest.raises(StoreConfigError) as info:
            fetch(part, bad, tmp_path / f"in-{budget}", fetch_budget_bytes=budget)
        text = f"{info.value!s} {info.value!r}"
        assert "SignatureDoesNotMatch" in text or "InvalidAccessKeyId" in text
        assert not [s for s in secrets if s in text]
    reader = bad.data_reader()
    assert type(reader).__name__ == "ObstoreReader"  # the failure went through obstore first
    shown = f"{caplog.text} {reader!r} {bad!r} {vars(bad)} {vars(reader)}"
    assert not [s for s in secrets if s in shown]
    assert fetch(part, good, tmp_path / "in-good").memory_bytes == part.total_bytes


def test_a_store_that_overrides_get_file_is_fetched_through_it(tmp_path: Path) -> None:
    """Wrappers and fault-injecting doubles keep their get_file: temp files, as before."""
    calls: list[str] = []

    class Counting(LocalStore):
        def get_file(self, key: str, path: Path) -> ObjectInfo:
            calls.append(key)
            return super().get_file(key, path)

    store = Counting(_local(tmp_path).root)
    part, keys = _put(store, _spec(files=3), tmp_path)
    fetched = fetch(part, store, tmp_path / "in")
    assert calls == keys or sorted(calls) == keys
    assert all(isinstance(item.source, Path) and item.source.parent == tmp_path / "in"
               for item in fetched.inputs)
    assert isinstance(fetched, Fetched) and fetched.file_bytes == part.total_bytes
