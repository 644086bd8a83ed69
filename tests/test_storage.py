"""One storage contract, run against LocalStore and S3Store (moto server over HTTP).

Backend-specific sections follow: local path confinement and cross-process
locking; S3 pagination, multipart, configuration errors and fault handling
through tests/support/s3proxy.py.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compressor.clock import StoreClock
from compressor.layout import PartitionId
from compressor.lease import LeaseManager, LeaseOwner
from compressor.storage import (
    LocalStore,
    NotFound,
    ObjectInfo,
    ObjectUnreadable,
    PreconditionFailed,
    S3Store,
    Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
    open_store,
)
from compressor.storage.base import TMP_MARK
from compressor.storage.s3compat import TOMBSTONE
from compressor.storage.s3probe import ServerFeatures
from tests.conftest import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    admin_client,
    free_port,
    make_s3_store,
)
from tests.support.s3proxy import FAULT_KINDS, S3Proxy

REPO = Path(__file__).resolve().parents[1]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def s3_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def keys_of(store: Store, prefix: str = "") -> list[str]:
    return [o.key for o in store.list_objects(prefix)]


def assert_no_secret(err: BaseException) -> None:
    text = f"{err} {err!r}"
    assert TEST_SECRET_KEY not in text
    assert TEST_ACCESS_KEY not in text


# Keys chosen so that naive orderings (by code point of a path component,
# directories first, case-insensitive, locale) disagree with S3's byte order.
ODD_KEYS = [
    "a/b",
    "a-c",
    "a0",
    "a/x/y",
    "A/z",
    "b c/with space.parquet",
    "é/z",
    "e/z",
    "日本/データ",
    "ß",
    "z",
    "._hidden",
]


# ------------------------------------------------------------------ contract


def test_check_passes_on_a_usable_store(store: Store) -> None:
    store.check()
    assert store.uri


def test_list_prefixes_one_level_in_key_order(store: Store) -> None:
    for key in ODD_KEYS:
        store.put_bytes(key, key.encode())
    expected = s3_order(["a/", "A/", "b c/", "é/", "e/", "日本/"])
    assert store.list_prefixes("") == expected
    assert store.list_prefixes("a/") == ["a/x/"]
    assert store.list_prefixes("a/x/") == []
    assert store.list_prefixes("nothing/") == []


def test_list_prefixes_of_hive_layout(store: Store) -> None:
    keys = [
        f"exchange={ex}/stream={st}/symbol=btcusdt/date=2024010{d}/part-1-000001.parquet"
        for ex in ("okx", "binance", "bybit")
        for st in ("trade", "bbo")
        for d in (2, 1)
    ]
    for key in keys:
        store.put_bytes(key, b"x")
    assert store.list_prefixes("") == [
        "exchange=binance/",
        "exchange=bybit/",
        "exchange=okx/",
    ]
    assert store.list_prefixes("exchange=okx/") == [
        "exchange=okx/stream=bbo/",
        "exchange=okx/stream=trade/",
    ]
    assert store.list_prefixes("exchange=okx/stream=bbo/symbol=btcusdt/") == [
        "exchange=okx/stream=bbo/symbol=btcusdt/date=20240101/",
        "exchange=okx/stream=bbo/symbol=btcusdt/date=20240102/",
    ]


def test_empty_store_lists_nothing(store: Store) -> None:
    assert store.list_prefixes("") == []
    assert keys_of(store) == []
    assert keys_of(store, "a/") == []


def test_list_objects_is_recursive_in_s3_key_order(store: Store) -> None:
    shuffled = ODD_KEYS[:]
    random.Random(7).shuffle(shuffled)
    for key in shuffled:
        store.put_bytes(key, key.encode())
    assert keys_of(store) == s3_order(ODD_KEYS)
    assert keys_of(store, "a") == ["a-c", "a/b", "a/x/y", "a0"]
    assert keys_of(store, "a/") == ["a/b", "a/x/y"]
    infos = {o.key: o for o in store.list_objects("")}
    for key in ODD_KEYS:
        assert infos[key].size == len(key.encode())
        assert infos[key].etag == md5(key.encode())


def test_head_reports_size_and_etag(store: Store) -> None:
    assert store.head("missing/key") is None
    store.put_bytes("dir/obj", b"hello")
    info = store.head("dir/obj")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("dir/obj", 5, md5(b"hello"))
    assert store.head("dir") is None  # a prefix is not an object


def test_bytes_roundtrip_with_odd_keys(store: Store) -> None:
    for key in ODD_KEYS:
        etag = store.put_bytes(key, f"content of {key}".encode())
        data, got_etag = store.get_bytes(key)
        assert data == f"content of {key}".encode()
        assert got_etag == etag == md5(data)


def test_empty_object_roundtrip(store: Store) -> None:
    etag = store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == (b"", etag)
    info = store.head("empty")
    assert info is not None and info.size == 0


def test_file_roundtrip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    put = store.put_file("deep/er/data.parquet", src)
    assert (put.key, put.size, put.etag) == ("deep/er/data.parquet", len(payload), md5(payload))
    dest = tmp_path / "out" / "sub" / "copy.bin"
    got = store.get_file("deep/er/data.parquet", dest)
    assert dest.read_bytes() == payload
    assert got == put
    assert os.listdir(dest.parent) == ["copy.bin"]  # no temp file left beside it


def test_get_file_does_not_fsync(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downloads are scratch copies: thousands per partition, none worth an fsync."""
    store.put_bytes("raw/part.parquet", b"x" * 1000)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    store.get_file("raw/part.parquet", tmp_path / "dl" / "000000.parquet")
    assert synced == []
    assert (tmp_path / "dl" / "000000.parquet").read_bytes() == b"x" * 1000


def test_get_file_replaces_an_existing_local_file(store: Store, tmp_path: Path) -> None:
    store.put_bytes("k", b"new")
    dest = tmp_path / "k"
    dest.write_bytes(b"old and longer")
    store.get_file("k", dest)
    assert dest.read_bytes() == b"new"


def test_etag_follows_content(store: Store) -> None:
    first = store.put_bytes("k", b"one")
    second = store.put_bytes("k", b"two")
    third = store.put_bytes("k", b"one")
    assert first != second
    assert first == third
    info = store.head("k")
    assert info is not None and info.etag == third


def test_if_none_match_second_writer_loses(store: Store) -> None:
    store.put_bytes("lease", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="lease"):
        store.put_bytes("lease", b"second", if_none_match=True)
    assert store.get_bytes("lease")[0] == b"first"


def test_if_match_guards_against_stale_etag(store: Store) -> None:
    stale = store.put_bytes("state", b"v1")
    current = store.put_bytes("state", b"v2", if_match=stale)
    with pytest.raises(PreconditionFailed, match="state"):
        store.put_bytes("state", b"v3", if_match=stale)
    assert store.get_bytes("state")[0] == b"v2"
    quoted = f'"{current}"'  # ETags as S3 prints them are accepted too
    store.put_bytes("state", b"v3", if_match=quoted)
    assert store.get_bytes("state")[0] == b"v3"


def test_object_info_etags_are_normalized(store: Store) -> None:
    """Whatever form a backend or a caller gives, ObjectInfo ETags compare with ==."""
    assert ObjectInfo("k", 1, ' "abc" ').etag == ObjectInfo("k", 1, "abc").etag == "abc"
    etag = store.put_bytes("k", b"v")
    assert etag == md5(b"v") and '"' not in etag
    listed = next(iter(store.list_objects("")))
    assert listed == store.head("k") == ObjectInfo("k", 1, f'"{etag}"')


def test_if_match_on_missing_key_fails(store: Store) -> None:
    with pytest.raises(PreconditionFailed):
        store.put_bytes("nothing-here", b"x", if_match=md5(b"x"))
    assert store.head("nothing-here") is None


def test_concurrent_create_exactly_one_wins(store: Store) -> None:
    for round_ in range(5):
        key = f"locks/round-{round_}.lock"
        barrier = threading.Barrier(8)

        def writer(i: int, key: str = key, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            try:
                store.put_bytes(key, f"writer {i}".encode(), if_none_match=True)
                return True
            except PreconditionFailed:
                return False

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(writer, range(8)))
        assert results.count(True) == 1
        winner = results.index(True)
        assert store.get_bytes(key)[0] == f"writer {winner}".encode()


def cas_increment(store: Store, key: str, times: int, writer: int = 0) -> int:
    """Read-modify-write a counter with If-Match; returns how many conflicts it retried.

    Each writer's bytes name it: a conditional write retried into a 412 whose object
    holds exactly its bytes counts as its own (S3Store, docs/operations.md "Store compatibility"),
    so two writers of identical bytes cannot be told apart; Ceph RGW 16.2 answers a
    lost race with a 500 that is retried, which makes that case common there."""
    conflicts = 0
    for _ in range(times):
        while True:
            data, etag = store.get_bytes(key)
            value = int(data.split()[0]) + 1
            try:
                store.put_bytes(key, f"{value} by {writer}".encode(), if_match=etag)
                break
            except PreconditionFailed:
                conflicts += 1
    return conflicts


def test_concurrent_compare_and_swap_loses_no_update(store: Store) -> None:
    store.put_bytes("counter", b"0")
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda w: cas_increment(store, "counter", 8, w), range(6)))
    assert store.get_bytes("counter")[0].split()[0] == b"48"


def test_delete_is_idempotent_and_prefixes_vanish(store: Store) -> None:
    store.put_bytes("p/q/obj", b"x")
    store.put_bytes("p/other", b"y")
    store.delete("p/q/obj")
    store.delete("p/q/obj")
    store.delete("never/existed")
    assert store.head("p/q/obj") is None
    assert keys_of(store) == ["p/other"]
    assert store.list_prefixes("p/") == []
    assert store.list_prefixes("") == ["p/"]
    store.delete("p/other")
    assert store.list_prefixes("") == []


def test_missing_key_raises_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no/such"):
        store.get_bytes("no/such")
    dest = tmp_path / "downloads" / "dest.bin"
    with pytest.raises(NotFound, match="no/such"):
        store.get_file("no/such", dest)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_recreate_after_delete(store: Store) -> None:
    store.put_bytes("x/y", b"1", if_none_match=True)
    store.delete("x/y")
    store.put_bytes("x/y", b"2", if_none_match=True)
    assert store.get_bytes("x/y")[0] == b"2"


def test_remove_stale_partials_spares_objects(store: Store) -> None:
    store.put_bytes("keep/me", b"x")
    assert store.remove_stale_partials(0) == 0
    assert keys_of(store) == ["keep/me"]


# ------------------------------------------------- conditional put_file, delete


def write_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_put_file_if_none_match_second_writer_loses(store: Store, tmp_path: Path) -> None:
    first = store.put_file("p/data.parquet", write_file(tmp_path, "a", b"first"),
                           if_none_match=True)
    assert first == ObjectInfo("p/data.parquet", 5, md5(b"first"))
    with pytest.raises(PreconditionFailed, match="p/data.parquet"):
        store.put_file("p/data.parquet", write_file(tmp_path, "b", b"second"),
                       if_none_match=True)
    assert store.get_bytes("p/data.parquet")[0] == b"first"


def test_put_file_if_match_guards_against_stale_etag(store: Store, tmp_path: Path) -> None:
    stale = store.put_bytes("p/data.parquet", b"v1")
    current = store.put_file("p/data.parquet", write_file(tmp_path, "v2", b"v2"), if_match=stale)
    assert current.etag == md5(b"v2")
    with pytest.raises(PreconditionFailed, match="p/data.parquet"):
        store.put_file("p/data.parquet", write_file(tmp_path, "v3", b"v3"), if_match=stale)
    assert store.get_bytes("p/data.parquet")[0] == b"v2"
    store.put_file("p/data.parquet", tmp_path / "v3", if_match=f'"{current.etag}"')
    assert store.get_bytes("p/data.parquet")[0] == b"v3"


def test_put_file_if_match_on_missing_key_fails(store: Store, tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="nothing-here"):
        store.put_file("nothing-here", write_file(tmp_path, "x", b"x"), if_match=md5(b"x"))
    assert store.head("nothing-here") is None
    assert keys_of(store) == []


def test_delete_if_match_deletes_only_that_version(store: Store) -> None:
    stale = store.put_bytes("locks/p.lock", b"ours")
    current = store.put_bytes("locks/p.lock", b"the next holder's")
    with pytest.raises(PreconditionFailed, match="locks/p.lock"):
        store.delete("locks/p.lock", if_match=stale)
    assert store.get_bytes("locks/p.lock") == (b"the next holder's", current)
    store.delete("locks/p.lock", if_match=f'"{current}"')  # quoted, as S3 prints it
    assert store.head("locks/p.lock") is None
    assert keys_of(store) == []
    # where a conditional delete leaves a tombstone (docs/operations.md "Store compatibility"), the
    # prefix goes with it
    store.remove_tombstone("locks/p.lock")
    assert store.list_prefixes("") == []  # the emptied prefix vanishes, as without if_match


def test_delete_if_match_of_a_missing_key_fails(store: Store) -> None:
    with pytest.raises(PreconditionFailed, match="never/existed"):
        store.delete("never/existed", if_match=md5(b"x"))
    etag = store.put_bytes("gone", b"x")
    store.delete("gone", if_match=etag)
    with pytest.raises(PreconditionFailed, match="gone"):
        store.delete("gone", if_match=etag)
    store.delete("gone")  # without if_match a missing key is still not an error


def test_concurrent_conditional_deletes_exactly_one_wins(store: Store) -> None:
    etag = store.put_bytes("locks/p.lock", b"held")
    barrier = threading.Barrier(6)

    def deleter(_: int) -> bool:
        barrier.wait()
        try:
            store.delete("locks/p.lock", if_match=etag)
            return True
        except PreconditionFailed:
            return False

    with ThreadPoolExecutor(6) as pool:
        won = sorted(pool.map(deleter, range(6)))
    assert store.head("locks/p.lock") is None
    if getattr(store, "features", None) is None or store.features.conditional_delete:
        assert won == [False] * 5 + [True]
    else:
        # A tombstone store's deleters write identical bytes: one wins, and a loser that
        # RGW 16.2 answered with a retried 500 finds "its" tombstone (docs/operations.md "Store
        # compatibility"); the object is gone either way, and nothing else was deleted.
        assert won[-1] is True


def test_conditional_delete_and_takeover_race_never_both_win(store: Store) -> None:
    """A release (delete If-Match) racing a takeover (put If-Match) of the same version:
    either the takeover lands and survives, or the delete wins and the put fails."""
    for round_ in range(6):
        key = f"locks/round-{round_}.lock"
        etag = store.put_bytes(key, b"old holder")
        barrier = threading.Barrier(2)

        def release(key: str = key, etag: str = etag, barrier: threading.Barrier = barrier
                    ) -> bool:
            barrier.wait()
            try:
                store.delete(key, if_match=etag)
                return True
            except PreconditionFailed:
                return False

        def take_over(key: str = key, etag: str = etag, barrier: threading.Barrier = barrier
                      ) -> bool:
            barrier.wait()
            try:
                store.put_bytes(key, b"new holder", if_match=etag)
                return True
            except PreconditionFailed:
                return False

        with ThreadPoolExecutor(2) as pool:
            released, taken = pool.submit(release), pool.submit(take_over)
            outcome = (released.result(), taken.result())
        assert outcome in ((True, False), (False, True))
        if outcome[1]:
            assert store.get_bytes(key)[0] == b"new holder"
        else:
            assert store.head(key) is None


# ---------------------------------------------------------------- local only


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    root = tmp_path / "root"
    root.mkdir()
    return LocalStore(root)


def snapshot(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


ESCAPES = [
    "../outside",
    "../../etc/passwd",
    "a/../../outside",
    "a/../b",
    "/abs/olute",
    "./here",
    "a/./b",
    "a//b",
    "trailing/",
    "",
    "nul\x00byte",
    "back\\..\\slash",
    "..",
    f"a/{TMP_MARK}x",
]


@pytest.mark.parametrize("key", ESCAPES)
def test_local_rejects_unsafe_keys(local: LocalStore, tmp_path: Path, key: str) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(StoreError) as put_err:
        local.put_bytes(key, b"evil")
    assert repr(key) in str(put_err.value)
    for op in (local.head, local.get_bytes, local.delete):
        with pytest.raises(StoreError):
            op(key)  # type: ignore[operator]
    with pytest.raises(StoreError):
        local.get_file(key, tmp_path / "dl")
    assert snapshot(tmp_path) == before


def test_local_does_not_follow_symlinks_out_of_root(local: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    os.symlink(outside, local.root / "link")
    os.symlink(outside / "secret", local.root / "filelink")
    with pytest.raises(StoreError, match="link/x"):
        local.put_bytes("link/x", b"evil")
    with pytest.raises(StoreError, match="filelink"):
        local.get_bytes("filelink")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert keys_of(local) == []
    assert local.list_prefixes("") == []


def test_local_listing_ignores_temp_files_and_empty_dirs(local: LocalStore) -> None:
    (local.root / "d" / "empty" / "deeper").mkdir(parents=True)
    (local.root / "d" / f"{TMP_MARK}abc.data.parquet").write_bytes(b"partial")
    assert local.list_prefixes("") == []
    assert keys_of(local) == []
    local.put_bytes("d/real", b"x")
    assert local.list_prefixes("") == ["d/"]
    assert local.list_prefixes("d/") == []
    assert keys_of(local) == ["d/real"]


def test_local_removes_only_stale_temp_files(local: LocalStore) -> None:
    (local.root / "d").mkdir()
    old = local.root / "d" / f"{TMP_MARK}old.data.parquet"
    fresh = local.root / "d" / f"{TMP_MARK}fresh.data.parquet"
    old.write_bytes(b"killed writer")
    fresh.write_bytes(b"writer in flight")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    local.put_bytes("d/real", b"x")
    assert local.remove_stale_partials(3600) == 1
    assert not old.exists() and fresh.exists()
    assert keys_of(local) == ["d/real"]


def test_local_sees_files_written_by_others(local: LocalStore) -> None:
    """Files placed without the store (e.g. by a generator) get a correct, fresh ETag."""
    (local.root / "x").write_bytes(b"outside write")
    assert [(o.key, o.etag) for o in local.list_objects("")] == [("x", md5(b"outside write"))]
    local.put_bytes("y", b"one")
    path = local.root / "y"
    path.write_bytes(b"two")  # in-place change: the cached ETag must not be reused
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    info = local.head("y")
    assert info is not None and info.etag == md5(b"two")


def test_local_object_and_prefix_of_same_name_conflict(local: LocalStore) -> None:
    local.put_bytes("a", b"file")
    with pytest.raises(StoreError, match="'a/b'"):
        local.put_bytes("a/b", b"x")
    local.put_bytes("c/d", b"x")
    with pytest.raises(StoreError, match="'c'"):
        local.put_bytes("c", b"x")
    assert keys_of(local) == ["a", "c/d"]


def test_local_check_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="does not exist"):
        LocalStore(tmp_path / "missing").check()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreConfigError, match="not a directory"):
        LocalStore(tmp_path / "file").check()


def _process_cas(root: str, times: int, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    cas_increment(LocalStore(Path(root)), "counter", times)


def test_local_cas_is_safe_across_processes(local: LocalStore) -> None:
    local.put_bytes("counter", b"0")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_process_cas, args=(str(local.root), 25, start)) for _ in range(4)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert local.get_bytes("counter")[0].split()[0] == b"100"


def test_local_writes_race_with_deletes_of_the_same_dir(local: LocalStore) -> None:
    """Deleting the last key removes its directory; concurrent writers there must not fail."""
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for i in range(60):
                key = f"shared/dir/w{worker}-{i}"
                local.put_bytes(key, b"x")
                assert local.get_bytes(key)[0] == b"x"
                local.delete(key)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert keys_of(local) == []
    assert list(local.root.iterdir()) == []


def _hammer(root: str, worker: int, rounds: int, start: object, errors: object) -> None:
    """One process: leases taken and released, keys written and deleted, in directories
    that share parents with every other worker's (so each delete may prune theirs)."""
    store = LocalStore(Path(root))
    leases = LeaseManager(store, owner=LeaseOwner("host", 1000 + worker, f"r{worker}", None),
                          ttl_s=600, skew_s=30, auto_renew=False)
    start.wait()  # type: ignore[attr-defined]
    try:
        for i in range(rounds):
            part = PartitionId("ex", f"s{i % 2}", f"sym{worker}", f"2024010{i % 3 + 1}")
            lease = leases.acquire(part)
            assert lease is not None, f"worker {worker} lost its own partition {part}"
            key = f"compacted/data/s{i % 2}/w{worker}/{i}/meta.json"
            store.put_bytes(key, b"x", if_none_match=True)
            store.delete(key)
            assert lease.release()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"worker {worker}: {exc!r}")  # type: ignore[attr-defined]


def test_local_store_is_safe_under_concurrent_prunes(local: LocalStore) -> None:
    """Many processes take and release leases and write and delete keys in sibling
    directories while a cleanup deletes everything it lists: a delete prunes emptied
    directories up to the root, and no writer may lose the directory it is creating."""
    ctx = multiprocessing.get_context("fork")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(local.root), w, 150, start, errors))
             for w in range(6)]
    for proc in procs:
        proc.start()
    start.set()
    while any(p.is_alive() for p in procs):  # the cleanup, at the same time
        for info in local.list_objects("compacted/data/"):
            local.delete(info.key)
    for proc in procs:
        proc.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    assert [p.exitcode for p in procs] == [0] * 6
    assert keys_of(local) == []


# ------------------------------------------------------------------- S3 only


@pytest.fixture
def proxied(s3proxy: S3Proxy, s3_bucket: str) -> Callable[..., S3Store]:
    """Build S3Stores that talk to the moto server through the proxy."""

    def make(**kwargs: object) -> S3Store:
        return make_s3_store(s3proxy.endpoint, s3_bucket, **kwargs)

    return make


def test_s3_listing_paginates_past_1000(proxied: Callable[..., S3Store], s3proxy: S3Proxy) -> None:
    store = proxied()
    keys = [f"p/{i:04d}/part.parquet" for i in range(1005)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), keys))
    s3proxy.reset_counts()
    assert keys_of(store, "p/") == keys
    assert s3proxy.counts() == {"LIST": 2}
    s3proxy.reset_counts()
    assert store.list_prefixes("p/") == [k.rsplit("/", 1)[0] + "/" for k in keys]
    assert s3proxy.counts() == {"LIST_DELIM": 2}


def test_s3_odd_but_legal_keys_are_data(moto_server: str, s3_bucket: str) -> None:
    """On S3 '..', '//', leading slashes, '?', '%' are ordinary key bytes."""
    store = make_s3_store(moto_server, s3_bucket)
    keys = ["/lead", "a/../b", "./x", "a//b", "q?x=1", "pct%2Fx", "plus+sign", "hash#x"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert keys_of(store) == s3_order(keys)
    assert store.list_prefixes("") == ["./", "/", "a/"]
    for key in keys:
        assert store.get_bytes(key)[0] == key.encode()


def test_s3_store_prefix_is_transparent(moto_server: str, s3_bucket: str) -> None:
    inner = make_s3_store(moto_server, s3_bucket, prefix="compact/v1")
    outer = make_s3_store(moto_server, s3_bucket)
    inner.put_bytes("a/b", b"x")
    assert inner.uri == f"s3://{s3_bucket}/compact/v1/"[:-1]
    assert keys_of(outer) == ["compact/v1/a/b"]
    assert keys_of(inner) == ["a/b"]
    assert inner.list_prefixes("") == ["a/"]


def test_s3_multipart_upload(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    store = proxied(multipart_threshold=6 << 20, multipart_chunksize=5 << 20)
    src = tmp_path / "big.parquet"
    payload = os.urandom(11 << 20)
    src.write_bytes(payload)
    info = store.put_file("big/data.parquet", src)
    counts = s3proxy.counts()
    assert counts["CREATE_MULTIPART"] == 1
    assert counts["UPLOAD_PART"] == 3
    assert counts["COMPLETE_MULTIPART"] == 1
    assert info.size == len(payload) and info.etag.endswith("-3")
    assert store.head("big/data.parquet") == info
    dest = tmp_path / "back.parquet"
    assert store.get_file("big/data.parquet", dest) == info
    assert dest.read_bytes() == payload


def test_s3_failed_multipart_upload_leaves_nothing(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path, s3_bucket: str
) -> None:
    store = proxied(multipart_threshold=6 << 20, multipart_chunksize=5 << 20, max_attempts=1)
    store.put_bytes("big/data.parquet", b"previous version")
    src = tmp_path / "big.parquet"
    src.write_bytes(os.urandom(11 << 20))
    s3proxy.fail_next("internal", ops={"UPLOAD_PART"})
    with pytest.raises(TransientStoreError, match="big/data.parquet"):
        store.put_file("big/data.parquet", src)
    assert s3proxy.counts()["ABORT_MULTIPART"] == 1
    assert store.get_bytes("big/data.parquet")[0] == b"previous version"
    client = admin_client(s3proxy.endpoint)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_remove_stale_partials_aborts_old_uploads(moto_server: str, s3_bucket: str) -> None:
    store = make_s3_store(moto_server, s3_bucket, prefix="pre")
    client = admin_client(moto_server)
    client.create_multipart_upload(Bucket=s3_bucket, Key="pre/killed/data.parquet")
    client.create_multipart_upload(Bucket=s3_bucket, Key="other/data.parquet")
    # moto reports every upload as initiated in 2010, so the age cut-off itself
    # cannot be exercised here; scoping to the store's prefix can.
    assert store.remove_stale_partials(3600) == 1
    assert store.remove_stale_partials(3600) == 0
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]]
    assert left == ["other/data.parquet"]  # outside the store's prefix: not ours


def test_s3_abort_of_stale_upload_cut_off_is_a_store_error(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, s3_bucket: str
) -> None:
    """A connection error below HTTP (BotoCoreError) is mapped like any other failure."""
    store = proxied(max_attempts=1)
    client = admin_client(s3proxy.endpoint)
    client.create_multipart_upload(Bucket=s3_bucket, Key="killed/data.parquet")
    s3proxy.fail_next("reset", ops={"ABORT_MULTIPART"})
    with pytest.raises(TransientStoreError, match="abort upload .*killed/data.parquet") as err:
        store.remove_stale_partials(3600)
    assert "\n" not in str(err.value)
    assert_no_secret(err.value)
    assert store.remove_stale_partials(3600) == 1  # the next run cleans it up


def test_s3_missing_bucket_is_a_config_error(moto_server: str) -> None:
    store = make_s3_store(moto_server, "qlc-no-such-bucket")
    with pytest.raises(StoreConfigError, match="qlc-no-such-bucket") as err:
        store.check()
    assert moto_server in str(err.value)
    assert_no_secret(err.value)


def test_s3_unreachable_endpoint_fails_fast(s3_bucket: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = make_s3_store(endpoint, s3_bucket)  # default, generous retries for normal calls
    started = time.monotonic()
    with pytest.raises(StoreConfigError, match="cannot reach") as err:
        store.check()
    assert time.monotonic() - started < 5
    assert endpoint in str(err.value) and s3_bucket in str(err.value)
    assert "\n" not in str(err.value)
    assert_no_secret(err.value)


def test_s3_check_gives_up_within_a_minute_by_default(s3_bucket: str) -> None:
    """The start-up check's default figures: 60 s in all, tries of at most 10 s (so a
    few tries, each logged, fit in it), botocore retrying none of them itself."""
    store = make_s3_store("http://127.0.0.1:9", s3_bucket)
    assert store.check_timeout == 60
    config = store._check_client.meta.config
    assert config.read_timeout == 10 and config.connect_timeout == 3
    assert config.retries["total_max_attempts"] == 1
    short = make_s3_store("http://127.0.0.1:9", s3_bucket, check_timeout=4, read_timeout=60)
    assert short._check_client.meta.config.read_timeout == 1


def run_workload(store: S3Store, tmp_path: Path) -> None:
    """A bit of everything the job does, checked for correctness."""
    for i in range(4):
        store.put_bytes(f"w/obj-{i}", f"payload {i}".encode())
    assert keys_of(store, "w/") == [f"w/obj-{i}" for i in range(4)]
    assert store.list_prefixes("") == ["w/"]
    for i in range(4):
        assert store.get_bytes(f"w/obj-{i}")[0] == f"payload {i}".encode()
    src = tmp_path / "f.bin"
    src.write_bytes(b"file payload")
    store.put_file("w/file", src)
    assert store.get_file("w/file", tmp_path / "g.bin").size == 12
    etag = store.put_bytes("w/state", b"1", if_none_match=True)
    store.put_bytes("w/state", b"2", if_match=etag)
    assert store.get_bytes("w/state")[0] == b"2"
    info = store.head("w/state")
    assert info is not None and info.etag == md5(b"2")
    store.delete("w/obj-0")
    assert store.head("w/obj-0") is None


def test_s3_faults_at_30_percent_are_retried(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    store = proxied(max_attempts=10, read_timeout=0.5, connect_timeout=1.0)
    s3proxy.set_faults(0.3, seed=3, delay=0.8)
    run_workload(store, tmp_path)
    assert set(s3proxy.fault_counts) == set(FAULT_KINDS)  # every kind was really exercised
    assert sum(s3proxy.fault_counts.values()) >= 4


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_s3_persistent_faults_become_transient_errors(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, kind: str
) -> None:
    store = proxied(max_attempts=2, read_timeout=0.5, connect_timeout=1.0)
    store.put_bytes("k", b"v")
    s3proxy.set_faults(1.0, [kind], delay=0.8)
    s3proxy.reset_counts()
    with pytest.raises(TransientStoreError, match="s3://.*/k") as err:
        store.get_bytes("k")
    assert s3proxy.counts() == {"GET": 2}  # botocore retried exactly max_attempts times
    assert err.value.retryable
    assert_no_secret(err.value)
    with pytest.raises(TransientStoreError):
        store.list_prefixes("")


def test_s3_conditional_write_whose_reply_was_lost_still_wins(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    """The PUT commits, the reply is lost, botocore retries and gets 412 from its own write."""
    store = proxied(max_attempts=3)
    s3proxy.fail_next("reset_after", ops={"PUT"})
    etag = store.put_bytes("lease", b"mine", if_none_match=True)
    assert etag == md5(b"mine")
    assert s3proxy.counts()["PUT"] == 2
    s3proxy.fail_next("reset_after", ops={"PUT"})
    assert store.put_bytes("lease", b"renewed", if_match=etag) == md5(b"renewed")


def test_s3_conditional_write_lost_to_another_writer_after_retry(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    store = proxied(max_attempts=3)
    store.put_bytes("lease", b"theirs")
    s3proxy.fail_next("reset", ops={"PUT"})
    with pytest.raises(PreconditionFailed):
        store.put_bytes("lease", b"mine", if_none_match=True)
    assert store.get_bytes("lease")[0] == b"theirs"


# ------------------------------------- S3: conditional put_file, multipart, delete


def test_s3_put_file_conditional_reply_lost_still_wins(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    """Single PUT: committed, reply lost, retried into a 412: ours (ETag = our md5)."""
    store = proxied(max_attempts=3)
    s3proxy.fail_next("reset_after", ops={"PUT"})
    info = store.put_file("lease", write_file(tmp_path, "f", b"mine"), if_none_match=True)
    assert info == ObjectInfo("lease", 4, md5(b"mine"))
    assert s3proxy.counts()["PUT"] == 2 and s3proxy.counts()["HEAD"] == 1


def test_s3_multipart_put_file_if_none_match(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path, s3_bucket: str
) -> None:
    """moto honours If-None-Match on CompleteMultipartUpload itself (the proxy only counts)."""
    # One part of any size needs no 5 MiB minimum: moto, as S3, checks it on all but the last.
    store = proxied(multipart_threshold=1024, multipart_chunksize=5 << 20)
    payload = os.urandom(64 << 10)
    src = write_file(tmp_path, "big", payload)
    info = store.put_file("big/data.parquet", src, if_none_match=True)
    assert info.etag == hashlib.md5(hashlib.md5(payload).digest()).hexdigest() + "-1"
    s3proxy.reset_counts()
    with pytest.raises(PreconditionFailed, match="big/data.parquet"):
        store.put_file("big/data.parquet", write_file(tmp_path, "other", b"y" * 4096),
                       if_none_match=True)
    counts = s3proxy.counts()
    assert counts["COMPLETE_MULTIPART"] == 1 and counts["ABORT_MULTIPART"] == 1
    assert store.get_bytes("big/data.parquet")[0] == payload
    client = admin_client(s3proxy.endpoint)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_multipart_put_file_if_match(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path, s3_bucket: str
) -> None:
    """If-Match on CompleteMultipartUpload, as AWS honours it (the proxy fills moto's gap):
    two real parts (5 MiB + rest), a stale ETag and a missing object fail and abort."""
    store = proxied(multipart_threshold=1 << 20, multipart_chunksize=5 << 20)
    old = store.put_bytes("big/data.parquet", b"previous version")
    payload = os.urandom((5 << 20) + 4096)
    src = write_file(tmp_path, "big", payload)
    info = store.put_file("big/data.parquet", src, if_match=old)
    halves = [payload[: 5 << 20], payload[5 << 20 :]]
    expected = hashlib.md5(b"".join(hashlib.md5(h).digest() for h in halves)).hexdigest() + "-2"
    assert info == ObjectInfo("big/data.parquet", len(payload), expected)
    assert store.head("big/data.parquet") == info
    s3proxy.reset_counts()
    with pytest.raises(PreconditionFailed, match="big/data.parquet"):
        store.put_file("big/data.parquet", src, if_match=old)  # stale now
    with pytest.raises(PreconditionFailed, match="missing/data.parquet"):
        store.put_file("missing/data.parquet", src, if_match=old)
    counts = s3proxy.counts()
    assert counts["COMPLETE_MULTIPART"] == 2 and counts["ABORT_MULTIPART"] == 2
    assert store.head("big/data.parquet") == info
    assert store.head("missing/data.parquet") is None
    client = admin_client(s3proxy.endpoint)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_the_test_server_honours_if_match_on_complete_without_the_proxy(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    """moto 5 alone completes over a stale If-Match; tests/support/s3server.py's launcher makes
    it check, as AWS does, so the probe finds every feature on the test server."""
    store = proxied(multipart_threshold=1024)
    store.put_bytes("k", b"current")
    s3proxy.complete_if_match = False
    with pytest.raises(PreconditionFailed):
        store.put_file("k", write_file(tmp_path, "f", b"z" * 4096), if_match=md5(b"stale"))
    store.check_conditional_writes(PROBES)
    assert store.features == ServerFeatures()


def test_s3_multipart_conditional_reply_lost_still_wins(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    """The complete commits, its reply is lost, the retry finds its own object (412):
    recognised by the multipart ETag (md5 of the part md5s + '-N'), nothing aborted."""
    store = proxied(multipart_threshold=1024, max_attempts=3)
    old = store.put_bytes("big/data.parquet", b"previous version")
    payload = os.urandom(8192)
    s3proxy.fail_next("reset_after", ops={"COMPLETE_MULTIPART"})
    info = store.put_file("big/data.parquet", write_file(tmp_path, "f", payload), if_match=old)
    assert info.etag == hashlib.md5(hashlib.md5(payload).digest()).hexdigest() + "-1"
    counts = s3proxy.counts()
    assert counts["COMPLETE_MULTIPART"] == 2 and counts["HEAD"] == 1
    assert "ABORT_MULTIPART" not in counts
    assert store.get_bytes("big/data.parquet")[0] == payload


def test_s3_conditional_delete_whose_reply_was_lost(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    """Deleted, reply lost, retried into a 404: the version we named is gone, no error."""
    store = proxied(max_attempts=3)
    etag = store.put_bytes("locks/p.lock", b"ours")
    s3proxy.fail_next("reset_after", ops={"DELETE"})
    store.delete("locks/p.lock", if_match=etag)
    assert s3proxy.counts()["DELETE"] == 2
    assert store.head("locks/p.lock") is None


# ---------------------------------------------------- conditional writes probe

PROBES = "compacted/probes/"
CONDITIONAL = frozenset({"if-none-match", "if-match"})


def test_conditional_writes_probe_passes_and_leaves_nothing(store: Store) -> None:
    store.put_bytes("compacted/_state.json", b"{}")
    store.check_conditional_writes(PROBES)
    store.check_conditional_writes(PROBES)  # a new probe key each time
    assert keys_of(store) == ["compacted/_state.json"]


@pytest.mark.parametrize(
    ("stripped", "how"),
    [
        (CONDITIONAL, "a second create with If-None-Match succeeded"),
        (frozenset({"if-none-match"}), "a second create with If-None-Match succeeded"),
        (frozenset({"if-match"}), "a write with a wrong If-Match ETag succeeded"),
    ],
)
def test_s3_server_ignoring_conditional_writes_is_a_config_error(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, stripped: frozenset[str], how: str
) -> None:
    store = proxied()
    s3proxy.strip_headers = stripped
    with pytest.raises(StoreConfigError) as err:
        store.check_conditional_writes(PROBES)
    assert str(err.value) == (
        f"S3 endpoint {s3proxy.endpoint} (bucket {store.bucket!r}) does not honour "
        f"conditional writes (If-None-Match/If-Match); leases and state need them ({how})"
    )
    assert keys_of(store) == []  # the probe object is deleted


def test_s3_server_rejecting_conditional_writes_is_a_config_error(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    store = proxied()
    s3proxy.fail_next("not_implemented", ops={"PUT"})
    with pytest.raises(StoreConfigError, match="does not honour conditional writes") as err:
        store.check_conditional_writes(PROBES)
    assert "NotImplemented (HTTP 501)" in str(err.value)
    assert s3proxy.counts()["PUT"] == 1  # a 501 is not retried
    assert keys_of(store) == []


@pytest.mark.parametrize("how", ["ignored", "rejected"])
def test_s3_server_without_conditional_deletes_gets_tombstones(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, how: str
) -> None:
    """DeleteObject that ignores If-Match (Ceph RGW 16.2) or rejects it (501): the probe
    finds out, and a conditional delete becomes a conditional PUT of a tombstone, which
    the store reads as absent and creates over (docs/operations.md "Store compatibility")."""
    store = proxied()
    if how == "ignored":
        s3proxy.strip_headers, s3proxy.strip_ops = frozenset({"if-match"}), frozenset({"DELETE"})
    else:
        s3proxy.fail_next("not_implemented", ops={"DELETE"})
    store.check_conditional_writes(PROBES)
    assert not store.features.conditional_delete
    assert keys_of(store) == []
    stale = store.put_bytes("locks/p.lock", b"held")
    current = store.put_bytes("locks/p.lock", b"the next holder's")
    with pytest.raises(PreconditionFailed):
        store.delete("locks/p.lock", if_match=stale)  # the stripped header does not matter
    store.delete("locks/p.lock", if_match=current)
    assert store.head("locks/p.lock") is None and keys_of(store) == []
    with pytest.raises(NotFound):
        store.get_bytes("locks/p.lock")
    client = admin_client(s3proxy.endpoint)
    assert client.get_object(Bucket=store.bucket, Key="locks/p.lock")["Body"].read() == TOMBSTONE
    with pytest.raises(PreconditionFailed):
        store.delete("locks/p.lock", if_match=current)  # gone, as for a deleted key
    store.put_bytes("locks/p.lock", b"new", if_none_match=True)  # a create over it
    with pytest.raises(PreconditionFailed):
        store.put_bytes("locks/p.lock", b"newer", if_none_match=True)
    assert store.get_bytes("locks/p.lock")[0] == b"new"
    store.delete("locks/p.lock", if_match=store.head("locks/p.lock").etag)  # type: ignore[union-attr]
    store.remove_tombstone("locks/p.lock")
    assert client.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0


class _DeleteIgnoresIfMatch(LocalStore):
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        super().delete(key)


class _DeleteRefusesButRemoves(LocalStore):
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        super().delete(key)
        if if_match is not None:
            raise PreconditionFailed(f"key {key!r}: pretended")


@pytest.mark.parametrize(
    ("kind", "how"),
    [
        (_DeleteIgnoresIfMatch, "a delete with a wrong If-Match ETag succeeded"),
        (_DeleteRefusesButRemoves, "a delete with a wrong If-Match ETag removed the object"),
    ],
)
def test_store_ignoring_conditional_deletes_is_refused(
    tmp_path: Path, kind: type[LocalStore], how: str
) -> None:
    store = kind(tmp_path)
    with pytest.raises(StoreConfigError, match=f"does not honour conditional writes .*\\({how}\\)"):
        store.check_conditional_writes(PROBES)
    assert keys_of(store) == []


def test_s3_probe_survives_lost_replies(proxied: Callable[..., S3Store], s3proxy: S3Proxy) -> None:
    """Writes applied whose reply is lost are retried into a 412: still a correct verdict."""
    store = proxied(max_attempts=10)
    s3proxy.set_faults(0.5, ["reset_after"], seed=1, ops={"PUT"})
    store.check_conditional_writes(PROBES)
    assert s3proxy.fault_counts["reset_after"] >= 3
    # each write recovered from its lost reply, then one HEAD: the object survived the
    # delete with a wrong If-Match
    assert s3proxy.counts()["HEAD"] >= 3 + 1
    assert store.features.conditional_delete and not store.features.if_match_unquoted
    assert keys_of(store) == []


def run_cli(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(REPO / "run.py"), "--mode", "daily", "--tmp-dir", str(cwd / "t")]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_run_on_a_server_ignoring_conditional_writes_exits_2(
    cli_env: dict[str, str], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    through_proxy = {**cli_env, "S3_COMPACT_ENDPOINT": s3proxy.endpoint}
    raw = make_s3_store(cli_env["S3_ENDPOINT"], cli_env["S3_BUCKET"])
    raw.put_bytes("exchange=binance/stream=trade/symbol=btcusdt/date=20200101/p.parquet",
                  b"x")  # a raw store holds exchange= folders; a day the run never plans
    ok = run_cli(through_proxy, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert s3proxy.counts()["PUT"] >= 3  # the probe ran
    s3proxy.strip_headers = CONDITIONAL
    bad = run_cli(through_proxy, tmp_path)
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert f"S3 endpoint {s3proxy.endpoint} (bucket " in lines[0]
    assert "does not honour conditional writes (If-None-Match/If-Match)" in lines[0]
    compact = make_s3_store(cli_env["S3_ENDPOINT"], cli_env["S3_COMPACT_BUCKET"])
    assert keys_of(compact, PROBES) == []


# ------------------------------------------------------ one object that cannot be read


@pytest.mark.parametrize(
    ("kind", "code", "why"),
    [
        ("access_denied", "AccessDenied", "the object cannot be read with these credentials"),
        ("invalid_object_state", "InvalidObjectState",
         "the object is archived (e.g. Glacier); restore it to read it"),
    ],
)
def test_s3_one_unreadable_object_is_not_a_config_error(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path, kind: str, code: str,
    why: str
) -> None:
    store = proxied()
    store.put_bytes("raw/denied.parquet", b"x")
    store.put_bytes("raw/fine.parquet", b"y")
    s3proxy.reset_counts()
    s3proxy.fail_next(kind, 2, ops={"GET"}, path_contains="denied")
    with pytest.raises(ObjectUnreadable) as err:
        store.get_bytes("raw/denied.parquet")
    assert str(err.value) == (
        f"get s3://{store.bucket}/raw/denied.parquet: {code} (HTTP 403): {why}"
    )
    assert not isinstance(err.value, StoreConfigError) and not err.value.retryable
    with pytest.raises(ObjectUnreadable, match="raw/denied.parquet"):
        store.get_file("raw/denied.parquet", tmp_path / "dl")
    assert s3proxy.counts() == {"GET": 2}  # not retried
    assert store.get_bytes("raw/fine.parquet")[0] == b"y"  # the others still read
    assert_no_secret(err.value)


def test_s3_head_of_an_unreadable_object(proxied: Callable[..., S3Store], s3proxy: S3Proxy
                                         ) -> None:
    """A HEAD error has no body: a bare 403 on one key is that object's."""
    store = proxied()
    store.put_bytes("raw/denied.parquet", b"x")
    s3proxy.fail_next("access_denied", ops={"HEAD"})
    with pytest.raises(ObjectUnreadable, match="head s3://.*/raw/denied.parquet: 403 "
                       "\\(HTTP 403\\): the object cannot be read"):
        store.head("raw/denied.parquet")


def test_s3_bucket_level_403_is_still_a_config_error(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    store = proxied()
    s3proxy.fail_next("access_denied", ops={"LIST"})
    with pytest.raises(StoreConfigError, match="AccessDenied \\(HTTP 403\\)"):
        store.check()
    s3proxy.fail_next("access_denied", ops={"LIST"})
    with pytest.raises(StoreConfigError, match="AccessDenied"):
        keys_of(store)
    s3proxy.fail_next("access_denied", ops={"PUT"})
    with pytest.raises(StoreConfigError, match="AccessDenied"):
        store.put_bytes("k", b"v")  # writing the compact store is every partition's problem


@pytest.fixture
def denied_path(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make opening one path raise PermissionError (chmod does not stop root), in the
    store's reads (local.py) and in what it asks of a file (HEAD: localfiles.py)."""
    import compressor.storage.local as local_module
    import compressor.storage.localfiles as localfiles_module

    denied: set[str] = set()
    real_open = open

    def fake_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    for module in (local_module, localfiles_module):
        monkeypatch.setattr(module, "open", fake_open, raising=False)
    return lambda path: denied.add(str(path))


def test_local_unreadable_object_is_object_unreadable(
    local: LocalStore, tmp_path: Path, denied_path: Callable[[Path], None]
) -> None:
    local.put_bytes("raw/denied.parquet", b"x")
    local.put_bytes("raw/fine.parquet", b"y")
    denied_path(local.root / "raw" / "denied.parquet")
    for read in (lambda: local.get_bytes("raw/denied.parquet"),
                 lambda: local.get_file("raw/denied.parquet", tmp_path / "dl"),
                 lambda: local.head("raw/denied.parquet")):
        with pytest.raises(ObjectUnreadable, match="'raw/denied.parquet': Permission denied"):
            read()
    assert local.get_bytes("raw/fine.parquet")[0] == b"y"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_local_unreadable_file_mode(local: LocalStore) -> None:
    local.put_bytes("raw/denied.parquet", b"x")
    (local.root / "raw" / "denied.parquet").chmod(0)
    with pytest.raises(ObjectUnreadable, match="raw/denied.parquet"):
        local.get_bytes("raw/denied.parquet")


# ---------------------------------------------------------------- the store's clock


def test_local_store_clock_is_the_hosts(local: LocalStore) -> None:
    assert local.clock_offset() == 0.0
    assert local.clock_offset(lambda: 12.0) == 0.0
    clock = StoreClock.measure(local, lambda: 1000.0)
    assert clock.offset == 0.0 and clock() == 1000.0


def test_store_clock_fixed() -> None:
    clock = StoreClock.fixed(5.0)
    assert clock.offset == 5.0
    assert abs(clock() - (time.time() + 5.0)) < 1
    assert StoreClock.fixed().offset == 0.0


@pytest.mark.parametrize("ahead", [0.0, 300.0, -420.0])
def test_s3_clock_offset_is_the_servers_date_minus_ours(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, ahead: float
) -> None:
    store = proxied()
    s3proxy.date_offset = ahead
    offset = store.clock_offset()
    assert abs(offset - ahead) <= 2  # Date has one-second resolution
    assert s3proxy.counts() == {"LIST": 1}  # one cheap request
    clock = StoreClock.measure(store)
    assert abs(clock() - (time.time() + ahead)) <= 2


def test_s3_clock_offset_without_a_date_header_is_zero(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    store = proxied()
    s3proxy.send_date = False
    s3proxy.date_offset = 300.0  # nothing to shift
    assert store.clock_offset() == 0.0


def test_s3_store_clocks_of_skewed_hosts_agree(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy
) -> None:
    """Two hosts 300 s behind and 360 s ahead, one server 300 s ahead of the truth:
    their StoreClocks both read the server's time, within the Date header's second."""
    s3proxy.date_offset = 300.0
    behind = StoreClock.measure(proxied(), lambda: time.time() - 300)
    ahead = StoreClock.measure(proxied(), lambda: time.time() + 360)
    assert abs(behind.offset - 600) <= 2 and abs(ahead.offset - (-60)) <= 2
    a, b = behind(), ahead()
    assert abs(a - b) <= 2
    assert abs(a - (time.time() + 300)) <= 2


# ---------------------------------------------------------------- open_store


def test_open_store_local_paths(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path), {}, role="raw"), LocalStore)
    store = open_store(f"file://{tmp_path}", {}, role="compact")
    assert isinstance(store, LocalStore) and store.root == tmp_path
    with pytest.raises(StoreConfigError, match="gs"):
        open_store("gs://bucket", {}, role="raw")
    with pytest.raises(ValueError, match="role"):
        open_store(str(tmp_path), {}, role="other")


def test_open_store_compact_role_falls_back_to_raw_settings(
    s3_env: dict[str, str], s3_bucket: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # compact has its own endpoint (the live server); raw's is dead
    env = {**s3_env, "S3_ENDPOINT": dead, "S3_COMPACT_ENDPOINT": s3_env["S3_ENDPOINT"]}
    compact = open_store(f"s3://{s3_bucket}/pre/fix", env, role="compact")
    assert isinstance(compact, S3Store) and compact.uri == f"s3://{s3_bucket}/pre/fix"
    compact.check()
    with pytest.raises(StoreConfigError, match="cannot reach"):
        open_store(f"s3://{s3_bucket}", env, role="raw").check()
    # without S3_COMPACT_ENDPOINT the compact store uses S3_ENDPOINT
    open_store(f"s3://{s3_bucket}", s3_env, role="compact").check()


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://127.0.0.1:9",
        "127.0.0.1:9",
        "http://user:pa55word@127.0.0.1:notaport",
        "http://user:pa55word@127.0.0.1:70000",
        "http://user:pa55word@127.0.0.1:0",
        "http://user:pa55word@[::1",
        "http://user:pa55word@",
        "https://",
    ],
)
@pytest.mark.parametrize("name", ["S3_ENDPOINT", "S3_COMPACT_ENDPOINT"])
def test_open_store_rejects_a_malformed_endpoint_naming_its_variable(
    s3_env: dict[str, str], endpoint: str, name: str
) -> None:
    with pytest.raises(StoreConfigError) as err:
        open_store("s3://b", {**s3_env, name: endpoint}, role="compact")
    message = str(err.value)
    assert message.startswith(f"{name}, the S3 endpoint for bucket 'b',")
    assert "pa55word" not in message and "\n" not in message
    if name == "S3_COMPACT_ENDPOINT":  # the raw role does not look at the compact endpoint
        open_store("s3://b", {**s3_env, name: endpoint}, role="raw")


def test_s3store_given_half_a_credential_pair_is_a_config_error() -> None:
    """open_store names the missing variable; S3Store used directly still fails cleanly."""
    with pytest.raises(StoreConfigError, match="PartialCredentialsError") as err:
        S3Store("b", endpoint_url="http://127.0.0.1:9", access_key="only-the-id")
    assert "only-the-id" not in str(err.value)
    with pytest.raises(StoreConfigError, match="malformed endpoint URL") as err:
        S3Store("b", endpoint_url="http://user:pa55word@[::1")
    assert "pa55word" not in str(err.value)


def test_open_store_rejects_half_a_credential_pair(s3_env: dict[str, str]) -> None:
    env = {**s3_env, "S3_COMPACT_ACCESS_KEY": "only-the-id"}
    with pytest.raises(StoreConfigError, match="S3_COMPACT_SECRET_KEY") as err:
        open_store("s3://b", env, role="compact")
    assert "only-the-id" not in str(err.value)
    open_store("s3://b", env, role="raw")  # the raw role does not look at compact keys
    with_userinfo = open_store(
        "s3://b", {**s3_env, "S3_ENDPOINT": "http://user:pa55word@127.0.0.1:9"}, role="raw"
    )
    assert "pa55word" not in f"{with_userinfo!r} {with_userinfo.uri}"
    with pytest.raises(StoreConfigError, match="S3_MAX_ATTEMPTS"):
        open_store("s3://b", {**s3_env, "S3_MAX_ATTEMPTS": "many"}, role="raw")


# =============================================================================
# The data path (compressor/storage/base.py): Store.data_reader(), what the fetch
# reads raw objects through. LocalStore: the files in place; S3Store: obstore.
# =============================================================================


def test_data_reader_reads_what_get_bytes_reads(store: Store, tmp_path: Path) -> None:
    reader = store.data_reader()
    assert reader is store.data_reader() or isinstance(store, LocalStore)
    blobs = {f"raw/d=1/part-{n}.parquet": os.urandom(1000 * n + 1) for n in range(5)}
    for key, data in blobs.items():
        store.put_bytes(key, data)
    for n, (key, data) in enumerate(blobs.items()):
        got = reader.read(key)
        assert got.data.to_pybytes() == data and got.info == store.head(key)
        dest = tmp_path / "dl" / f"{n}.bin"
        dest.parent.mkdir(exist_ok=True)
        assert reader.read_to_file(key, dest) == store.head(key)
        assert dest.read_bytes() == data
    with pytest.raises(NotFound):
        reader.read("raw/d=1/missing.parquet")
    with pytest.raises(NotFound):
        reader.read_to_file("raw/d=1/missing.parquet", tmp_path / "dl" / "missing")
    assert not (tmp_path / "dl" / "missing").exists()
    assert [p.name for p in (tmp_path / "dl").iterdir() if p.name.startswith(TMP_MARK)] == []


def test_local_data_reader_locates_files_in_place_and_sees_changes(local: LocalStore) -> None:
    from compressor.storage.base import InPlaceReader

    reader = local.data_reader()
    assert isinstance(reader, InPlaceReader)
    local.put_bytes("raw/a.parquet", b"a" * 100)
    local.put_bytes("raw/b.parquet", b"b" * 100)
    local.put_bytes("raw/c.parquet", b"c" * 100)
    found = {key: reader.locate(key) for key in ("raw/a.parquet", "raw/b.parquet",
                                                 "raw/c.parquet")}
    root = os.path.realpath(local.root)
    for key, obj in found.items():
        assert str(obj.path) == os.path.join(root, *key.split("/"))
        assert obj.info == local.head(key) and not reader.changed(obj)
    time.sleep(0.01)
    local.put_bytes("raw/a.parquet", b"A" * 100)  # replaced: same size, new file
    with open(found["raw/b.parquet"].path, "r+b") as fh:  # rewritten in place
        fh.write(b"B")
    local.delete("raw/c.parquet")
    assert all(reader.changed(obj) for obj in found.values())
    with pytest.raises(NotFound):
        reader.locate("raw/c.parquet")
    with pytest.raises(StoreError):
        reader.locate("raw/../escape.parquet")


def _swap_for_symlink(directory: Path, target: Path) -> None:
    """Move `directory` aside and leave a symlink to `target` at its path."""
    directory.rename(directory.with_name(directory.name + "-moved"))
    directory.symlink_to(target, target_is_directory=True)


@pytest.mark.parametrize("proc", [True, False], ids=["proc-fd", "no-proc"])
def test_local_reader_caches_directories_but_never_locates_through_a_later_symlink(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc: bool
) -> None:
    """The reader resolves a directory once; a directory swapped for a symlink after
    that is seen at the next locate, as without the cache: out of the root it is
    refused, inside the root the path handed out is the real one. And `changed`
    still tells that a path located before the swap now reaches another file."""
    import compressor.storage.localdata as localdata_module

    if not proc:  # where /proc/self/fd is missing the directory is resolved per file
        monkeypatch.setattr(localdata_module, "_opened_path", lambda fd: None)
    keys = [f"raw/d=1/part-{n}.parquet" for n in range(3)]
    for key in keys:
        local.put_bytes(key, key.encode() * 10)
    reader = local.data_reader()
    assert isinstance(reader, localdata_module.LocalReader)
    first = reader.locate(keys[0])  # resolves (and caches) raw/d=1
    assert reader._dirs  # the cache this test is about
    # out of the root: a copy of the same bytes (so size and ETag would pass)
    outside = tmp_path / "outside"
    outside.mkdir()
    for key in keys:
        (outside / key.rsplit("/", 1)[1]).write_bytes(key.encode() * 10)
    directory = local.root / "raw" / "d=1"
    _swap_for_symlink(directory, outside)
    assert reader.changed(first)  # the path now reaches the copy, another file
    with pytest.raises(StoreError, match="outside the store root"):
        reader.locate(keys[1])

    # inside the root: a symlink to another directory of the store
    directory.unlink()
    local.put_bytes("raw/d=2/part-1.parquet", keys[1].encode() * 10)
    directory.symlink_to(local.root / "raw" / "d=2", target_is_directory=True)
    got = reader.locate(keys[1])
    assert str(got.path) == os.path.join(os.path.realpath(local.root), "raw", "d=2",
                                         "part-1.parquet")
    other = local.head("raw/d=2/part-1.parquet")
    assert other is not None and not reader.changed(got)
    assert (got.info.key, got.info.size, got.info.etag) == (keys[1], other.size, other.etag)


def test_local_reader_many_files_one_directory_and_a_missing_root(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many keys of one directory, each its own file, checked as before but with the
    directory resolved once; a root that disappears mid-fetch is still StoreConfigError
    (the run stops), not a missing key."""
    keys = [f"raw/d=1/part-{n:04d}.parquet" for n in range(300)]
    for n, key in enumerate(keys):
        local.put_bytes(key, os.urandom(n + 1))
    reader = local.data_reader()
    root = os.path.realpath(local.root)
    resolved: list[str] = []
    realpath = os.path.realpath

    def counting(path: str, *args: object, **kwargs: object) -> str:
        resolved.append(path)
        return realpath(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os.path, "realpath", counting)
    located = [reader.locate(key) for key in keys]
    monkeypatch.undo()
    if os.path.isdir("/proc/self/fd"):
        assert len(resolved) <= 2  # the root and raw/d=1, once each
    for key, obj in zip(keys, located, strict=True):
        assert str(obj.path) == os.path.join(root, *key.split("/"))
        assert obj.info == local.head(key) and not reader.changed(obj)
    os.symlink(tmp_path, local.root / "raw" / "d=1" / "link.parquet")
    with pytest.raises(StoreError, match="symlink"):
        reader.locate("raw/d=1/link.parquet")
    (local.root / "raw" / "d=1" / "dir.parquet").mkdir()
    with pytest.raises(NotFound):
        reader.locate("raw/d=1/dir.parquet")
    local.root.rename(tmp_path / "gone")
    with pytest.raises(StoreConfigError):
        reader.locate(keys[0])


def test_a_local_store_whose_reads_are_overridden_keeps_them(local: LocalStore) -> None:
    from compressor.storage.base import InPlaceReader, StoreReader

    class Wrapped(LocalStore):
        def get_file(self, key: str, path: Path) -> ObjectInfo:
            return super().get_file(key, path)

    reader = Wrapped(local.root).data_reader()
    assert isinstance(reader, StoreReader) and not isinstance(reader, InPlaceReader)
    assert not reader.in_memory


def test_s3_data_reader_survives_transient_faults(
    proxied: Callable[..., S3Store], s3proxy: S3Proxy, tmp_path: Path
) -> None:
    store = proxied(max_attempts=8)
    reader = store.data_reader()
    assert type(reader).__name__ == "ObstoreReader"
    blobs = {f"raw/part-{n:03d}.parquet": os.urandom(3000 + n) for n in range(20)}
    for key, data in blobs.items():
        store.put_bytes(key, data)
    s3proxy.set_faults(0.4, ["slowdown", "internal", "reset"], ops=["GET"], seed=3)
    for key, data in blobs.items():
        assert reader.read(key).data.to_pybytes() == data
    assert sum(s3proxy.fault_counts.values()) > 0


def test_s3_data_reader_uses_the_endpoint_without_its_userinfo(
    moto_server: str, s3_bucket: str
) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(moto_server)
    url = f"{parts.scheme}://someone:pa55word@{parts.netloc}"
    store = S3Store(s3_bucket, endpoint_url=url, access_key=TEST_ACCESS_KEY,
                    secret_key=TEST_SECRET_KEY, region="us-east-1")
    store.put_bytes("k", b"payload")
    reader = store.data_reader()
    assert reader.read("k").data.to_pybytes() == b"payload"
    assert "pa55word" not in f"{reader!r} {vars(reader)!r}"


def test_s3_data_reader_falls_back_to_boto3_when_obstore_cannot_be_set_up(
    moto_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compressor.storage.s3data as s3data

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no obstore here")

    monkeypatch.setattr(s3data, "ObstoreReader", broken)
    store = make_s3_store(moto_server, s3_bucket)
    store.put_bytes("k", b"payload")
    reader = store.data_reader()
    assert type(reader).__name__ == "Boto3Reader" and reader.in_memory
    assert reader.read("k").data.to_pybytes() == b"payload"


# =============================================================================
# Start-up: a run on local stores never imports the S3 libraries.
# =============================================================================

_S3_MODULES = ("boto3", "botocore", "s3transfer", "obstore")


def test_a_run_on_local_stores_never_imports_boto3_or_obstore(tmp_path: Path) -> None:
    """`run.py` compacting a partition from a local raw store into a local compact store,
    as a subprocess, with the modules loaded at its exit listed; and S3Store still
    comes from `compressor.storage`, imported on first use."""
    from compressor.demo import PartitionSpec
    from tests.conftest import put_partition

    repo = Path(__file__).resolve().parents[1]
    raw = LocalStore(tmp_path / "raw")
    (tmp_path / "raw").mkdir()
    (tmp_path / "compact").mkdir()
    (tmp_path / "tmp").mkdir()
    spec = PartitionSpec(exchange="bybit", stream="trade", symbol="ethusdt", date="20261123",
                         files=3, rows_per_file=50)
    put_partition(raw, spec, tmp_path)
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(
        "import atexit, runpy, sys\n"
        f"heavy = {_S3_MODULES!r}\n"
        "atexit.register(lambda: print('S3 MODULES:', sorted(\n"
        "    {m.split('.')[0] for m in sys.modules} & set(heavy)), file=sys.stderr))\n"
        "sys.argv = ['run.py', *sys.argv[1:]]\n"
        f"runpy.run_path({str(repo / 'run.py')!r}, run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run(
        [sys.executable, str(wrapper), "--mode", "backfill", "--date-from", "20261123",
         "--today", "20261124", "--raw", str(tmp_path / "raw"),
         "--compact", str(tmp_path / "compact"), "--tmp-dir", str(tmp_path / "tmp"),
         "--progress", "off"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "compact" / spec.partition.prefix / "data.parquet").is_file()
    assert "S3 MODULES: []" in proc.stderr, proc.stderr[-2000:]

    check = (
        "import sys\n"
        "import compressor.storage as storage\n"
        "assert 'boto3' not in sys.modules\n"
        "from compressor.storage import S3Store\n"
        "from compressor.storage.s3 import S3Store as Same\n"
        "assert S3Store is Same and 'boto3' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
