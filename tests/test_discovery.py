"""Discovery: prefix walk, filters, partition listing, fingerprint, and its LIST cost."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compressor.demo import PartitionSpec
from compressor.discovery import (
    Filters,
    RawLayoutError,
    check_found,
    list_partition,
    source_fingerprint,
    walk,
)
from compressor.layout import PartitionId
from compressor.storage import Store
from compressor.storage.base import ObjectInfo
from tests.conftest import make_rgw_store, make_s3_store, put_partition
from tests.support.rgwserver import ACCESS_KEY as RGW_ACCESS_KEY
from tests.support.rgwserver import RGW
from tests.support.rgwserver import SECRET_KEY as RGW_SECRET_KEY
from tests.support.s3proxy import S3Proxy


def _spec(**kw: object) -> PartitionSpec:
    base: dict[str, object] = {"files": 3, "rows_per_file": 20, "restarts": 0}
    base.update(kw)
    return PartitionSpec(**base)  # type: ignore[arg-type]


def _lake(store: Store, scratch: Path) -> list[PartitionSpec]:
    specs = [
        _spec(exchange="binance", stream="trade", symbol="btcusdt", date="20261122"),
        _spec(exchange="binance", stream="trade", symbol="btcusdt", date="20261123"),
        _spec(exchange="binance", stream="bbo", symbol="ethusdt", date="20261123", strays=True),
        _spec(exchange="okx", stream="trade", symbol="btcusdt", date="20261123"),
    ]
    for spec in specs:
        put_partition(store, spec, scratch)
    # Objects that are not partitions: health windows, junk at odd levels.
    store.put_bytes("quality/date=20261123/window=0015.json", b"{}")
    store.put_bytes("exchange=binance/README.txt", b"x")
    store.put_bytes("exchange=binance/stream=trade/symbol=btcusdt/date=bad/part-1-000001.parquet",
                    b"x")
    return specs


def test_walk_groups_partitions_by_day(store: Store, tmp_path: Path) -> None:
    specs = _lake(store, tmp_path)
    inventory = walk(store)
    assert inventory.dates == ["20261122", "20261123"]
    assert inventory.partitions("20261123") == sorted(
        s.partition for s in specs if s.date == "20261123"
    )
    assert inventory.partitions("20261124") == []


def test_filters_apply_while_walking(store: Store, tmp_path: Path) -> None:
    _lake(store, tmp_path)
    only = walk(store, Filters.parse("BINANCE", "trade", None))
    assert [p.state_key for d in only.dates for p in only.partitions(d)] == [
        "binance/trade/btcusdt/20261122",
        "binance/trade/btcusdt/20261123",
    ]
    assert walk(store, Filters.parse(None, None, "ethusdt,solusdt")).dates == ["20261123"]
    assert walk(store, Filters.parse("kraken", None, None)).dates == []
    with pytest.raises(ValueError):
        Filters.parse(" , ", None, None)


@pytest.mark.parametrize(("filters", "needle"), [
    (("kraken,ftx", None, None), "--exchanges ftx,kraken: no such exchange in raw store "
     "{uri} (found binance, okx)"),
    (("okx", "bbo", None), "--streams bbo: no such stream in raw store {uri} (found trade)"),
    ((None, None, "solusdt"), "--symbols solusdt: no such symbol in raw store {uri} "
     "(found btcusdt, ethusdt)"),
])
def test_a_filter_that_matches_nothing_names_what_was_found(
        store: Store, tmp_path: Path, filters: tuple[str | None, ...], needle: str) -> None:
    _lake(store, tmp_path)
    wanted = Filters.parse(*filters)
    with pytest.raises(RawLayoutError) as caught:
        check_found(walk(store, wanted), wanted, store.uri)
    assert str(caught.value) == needle.format(uri=store.uri)


def test_a_filter_that_matches_something_is_no_error(store: Store, tmp_path: Path) -> None:
    _lake(store, tmp_path)
    wanted = Filters.parse("kraken,okx", None, None)
    check_found(walk(store, wanted), wanted, store.uri)  # okx exists
    check_found(walk(store), Filters(), store.uri)


@pytest.mark.parametrize(("prefix", "found"), [
    ("exchange=binance/", "found stream=bbo/, stream=trade/"),  # --raw one level too deep
    ("top/", "found raw/"),  # one level too shallow
    ("", "found no folders"),  # nothing at all
])
def test_a_store_without_exchange_folders_is_the_wrong_folder(
        store: Store, tmp_path: Path, prefix: str, found: str) -> None:
    if prefix == "top/":
        store.put_bytes("raw/exchange=binance/stream=trade/symbol=btcusdt/date=20261123/"
                        "part-1.parquet", b"x")
    elif prefix:
        _lake(store, tmp_path)
    # the store as the operator's --raw would open it: rooted at `prefix`
    rooted = _rooted(store, prefix) if prefix not in ("", "top/") else store
    with pytest.raises(RawLayoutError, match=f"holds no exchange=... folders at its top "
                       rf"\({found}\): point --raw at the folder that holds them"):
        check_found(walk(rooted), Filters(), rooted.uri)


def _rooted(store: Store, prefix: str) -> Store:
    """The same data, one level down: a LocalStore on a subdirectory, an S3Store with a
    key prefix (both as `--raw` with a deeper path opens them)."""
    from compressor.storage import LocalStore, S3Store

    if isinstance(store, LocalStore):
        return LocalStore(store.root / prefix.rstrip("/"))
    assert isinstance(store, S3Store)
    if getattr(store, "on_rgw", False):
        server = RGW(store.endpoint, RGW_ACCESS_KEY, RGW_SECRET_KEY, "", 0.0)
        return make_rgw_store(server, store.bucket, prefix=prefix)
    return make_s3_store(store.endpoint, store.bucket, prefix=prefix)


def test_list_partition_keeps_data_files_in_key_order(store: Store, tmp_path: Path) -> None:
    spec = _spec(exchange="binance", stream="bbo", symbol="ethusdt", date="20261123",
                 strays=True, files=5, restarts=1)
    keys = put_partition(store, spec, tmp_path)
    part = list_partition(store, spec.partition)
    assert [f.key for f in part.files] == sorted(keys) == keys
    assert part.file_count == 5
    assert all(f.size > 0 for f in part.files)
    assert len(list(store.list_objects(spec.partition.prefix))) == 7  # two strays not taken


def test_fingerprint_tracks_every_listed_file() -> None:
    a = ObjectInfo("p/a.parquet", 10, "e1")
    b = ObjectInfo("p/b.parquet", 20, "e2")
    base = source_fingerprint([a, b])
    assert source_fingerprint([b, a]) == base  # order of the listing does not matter
    assert source_fingerprint([a, ObjectInfo("p/b.parquet", 21, "e2")]) != base
    assert source_fingerprint([a, ObjectInfo("p/b.parquet", 20, "e3")]) != base
    assert source_fingerprint([a, ObjectInfo("p/b.parquet", 20, '"e2"')]) == base  # S3 quotes
    assert source_fingerprint([a]) != base
    assert source_fingerprint([a, b, ObjectInfo("p/c.parquet", 1, "e")]) != base


def test_fingerprint_changes_when_a_raw_file_arrives(store: Store, tmp_path: Path) -> None:
    spec = _spec(date="20261123")
    put_partition(store, spec, tmp_path)
    before = list_partition(store, spec.partition).fingerprint
    assert list_partition(store, spec.partition).fingerprint == before
    store.put_bytes(spec.partition.prefix + "part-9999999999-000001.parquet", b"late")
    assert list_partition(store, spec.partition).fingerprint != before


# --------------------------------------------------------------------------- LIST cost


def _fill(store: Store, pid: PartitionId, start: int, count: int) -> None:
    names = [f"part-{1795478400 + n}-{n:06d}.parquet" for n in range(start, start + count)]
    keys = [pid.prefix + name for name in names]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), keys))


def test_walk_costs_one_list_per_prefix_whatever_the_file_count(
    s3proxy: S3Proxy, s3_bucket: str
) -> None:
    store = make_s3_store(s3proxy.endpoint, s3_bucket, max_attempts=2)
    pids = [
        PartitionId(ex, st, sym, day)
        for ex in ("binance", "okx")
        for st in ("bbo", "trade")
        for sym in ("btcusdt", "ethusdt")
        for day in ("20261122", "20261123")
    ]
    for pid in pids:
        _fill(store, pid, 0, 3)
    # Prefixes walked: root, 2 exchanges, 4 streams, 8 symbols -> 15 delimiter LISTs.
    s3proxy.reset_counts()
    inventory = walk(store)
    first = s3proxy.counts()
    assert first == {"LIST_DELIM": 1 + 2 + 4 + 8}
    assert sum(len(inventory.partitions(d)) for d in inventory.dates) == len(pids)

    for pid in pids:
        _fill(store, pid, 3, 40)  # 14x the files
    s3proxy.reset_counts()
    walk(store)
    assert s3proxy.counts() == first


def test_listing_a_partition_costs_ceil_files_over_1000(
    s3proxy: S3Proxy, s3_bucket: str
) -> None:
    store = make_s3_store(s3proxy.endpoint, s3_bucket, max_attempts=2)
    pid = PartitionId("binance", "bbo", "btcusdt", "20261123")
    _fill(store, pid, 0, 1001)
    s3proxy.reset_counts()
    part = list_partition(store, pid)
    assert part.file_count == 1001
    assert s3proxy.counts() == {"LIST": math.ceil(1001 / 1000)}
