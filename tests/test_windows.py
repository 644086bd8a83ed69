"""compressor.quality.windows: every window and day rule of 2.0.0 with known answers,
its threshold edges, coverage (missing, partial, malformed, misnamed), the windows the
real collector wrote (tests/fixtures/collector-real), the stored verdict, and
fetch/save/load against a LocalStore filled by compressor.demo.write_quality_windows."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from compressor.demo import write_quality_windows
from compressor.labels import RULES_VERSION, Label
from compressor.quality.windows import (
    MALFORMED_KEYS_CAP,
    DayVerdict,
    WindowCounts,
    WindowVerdict,
    fetch_day_windows,
    load_verdict,
    old_last_window_key,
    save_verdict,
    score_day,
    score_window,
    slot_of,
    verdict_key,
    window_key,
)
from compressor.storage import LocalStore, NotFound, TransientStoreError

DAY = "20261124"
NOW = datetime(2026, 11, 25, 3, 0, 0, tzinfo=UTC)
EXCHANGES = ("binance", "bybit", "okx")


def hhmm(k: int) -> str:
    """Slot k's HHMM: its window's START, as the collector names it."""
    start = k * 15
    return f"{start // 60:02d}{start % 60:02d}"


def key(k: int, day: str = DAY) -> str:
    return f"quality/date={day}/window={hhmm(k)}.json"


def window(k: int, day: str = DAY, *, quality: str = "GOOD", partial: bool = False,
           **signals: Any) -> dict[str, Any]:
    """A clean window k (GOOD by every rule; primary eps min 50: never 'healthy'), with
    `signals` replacing the generated ones."""
    end = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) + timedelta(minutes=15 * (k + 1))
    doc: dict[str, Any] = {
        "window_start": (end - timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quality": quality,
        "is_partial": partial,
        "signals": {
            "actual_duration_seconds": 450.0 if partial else 900.0,
            "offline_seconds_by_exchange": {ex: 0.0 for ex in EXCHANGES},
            "ws_connected_seconds": {ex: 900.0 for ex in EXCHANGES},
            "eps_by_exchange": {ex: {"avg": 500.0, "min": 50.0} for ex in EXCHANGES},
            "dropped_events": 0,
            "queue_pct_peak": 10.0,
            "drain_mode_accelerated_seconds": 0.0,
            "reconnects": 0,
            "s3_upload_failures": 0,
        },
    }
    doc["signals"].update(signals)
    return doc


def offline(**seconds: float) -> dict[str, float]:
    return {**{ex: 0.0 for ex in EXCHANGES}, **seconds}


def eps(primary: str = "binance", low: float = 50.0) -> dict[str, dict[str, float]]:
    return {ex: {"avg": 500.0, "min": low if ex == primary else 50.0} for ex in EXCHANGES}


def score(doc: dict[str, Any], primary: str = "binance", k: int = 5) -> WindowVerdict:
    return score_window(doc, key(k), primary)


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def day_of(docs: dict[int, dict[str, Any]]) -> dict[str, bytes]:
    return {key(k): encode(doc) for k, doc in docs.items()}


def full_day() -> dict[int, dict[str, Any]]:
    return {k: window(k) for k in range(96)}


def with_windows(n: int, make: Callable[[int], dict[str, Any]],
                 docs: dict[int, dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
    """A full clean day (or `docs`) whose first `n` windows are `make(k)`."""
    docs = dict(docs or full_day())
    for k in range(n):
        docs[k] = make(k)
    return docs


def bad(k: int) -> dict[str, Any]:
    return window(k, dropped_events=1)


def degraded(k: int) -> dict[str, Any]:
    return window(k, reconnects=5)


def verdict(
    docs: dict[int, dict[str, Any]] | dict[str, bytes], primary: str = "binance"
) -> DayVerdict:
    """score_day of a day given as {slot: doc} or as raw {key: bytes}."""
    raw = {k if isinstance(k, str) else key(k): v if isinstance(v, bytes) else encode(v)
           for k, v in docs.items()}
    return score_day(DAY, raw, primary, now=NOW)


# ----------------------------------------------------------------- keys and slots


def test_slots_and_keys() -> None:
    assert slot_of(key(0)) == (DAY, 0, "0000")
    assert key(0) == f"quality/date={DAY}/window=0000.json"
    assert slot_of(key(95)) == (DAY, 95, "2345")
    assert slot_of(f"quality/date={DAY}/window=1200.json") == (DAY, 48, "1200")
    assert window_key(DAY, "2345") == key(95)
    assert old_last_window_key(DAY) == "quality/date=20261125/window=0000.json"
    assert old_last_window_key("20261231") == "quality/date=20270101/window=0000.json"
    for bad_key in ("quality/date=20261124/window=1234.json",
                    "quality/date=20261124/window=2400.json",
                    "quality/date=20261124/window=2415.json",
                    "quality/date=20261324/window=0015.json",
                    "x/quality/date=20261124/window=0015.json",
                    "quality/date=20261124/window=015.json"):
        with pytest.raises(ValueError, match="key"):
            slot_of(bad_key)
    assert verdict_key(DAY) == "compacted/quality/date=20261124.json"
    with pytest.raises(ValueError):
        verdict_key("2026-11-24")


# ----------------------------------------------------------------- window rules


def test_clean_window_is_good() -> None:
    v = score(window(5))
    assert v == WindowVerdict(key(5), DAY, "0115", Label.GOOD, (), False, 0, 0.0)
    assert not v.misnamed


@pytest.mark.parametrize(
    ("signals", "label", "reason"),
    [
        ({"dropped_events": 1}, Label.BAD, "dropped_events 1 > 0"),
        ({"dropped_events": 0}, Label.GOOD, None),
        ({"queue_pct_peak": 90}, Label.BAD, "queue_pct_peak 90 >= 90"),
        ({"queue_pct_peak": 89.9}, Label.GOOD, None),
        ({"offline_seconds_by_exchange": offline(binance=601)}, Label.BAD,
         "binance offline 601s > 600"),
        # 600 is not > 600 (not BAD) but is > 180 for "any exchange" (DEGRADED)
        ({"offline_seconds_by_exchange": offline(binance=600)}, Label.DEGRADED,
         "binance offline 600s > 180"),
        ({"offline_seconds_by_exchange": offline(okx=181)}, Label.DEGRADED,
         "okx offline 181s > 180"),
        ({"offline_seconds_by_exchange": offline(okx=180, bybit=179)}, Label.GOOD, None),
        # a non-primary exchange offline > 600 is only DEGRADED
        ({"offline_seconds_by_exchange": offline(okx=900)}, Label.DEGRADED,
         "okx offline 900s > 180"),
        ({"drain_mode_accelerated_seconds": 181}, Label.DEGRADED,
         "drain_mode_accelerated_seconds 181 > 180"),
        ({"drain_mode_accelerated_seconds": 180}, Label.GOOD, None),
        ({"reconnects": 5}, Label.DEGRADED, "reconnects 5 >= 5"),
        ({"reconnects": 4}, Label.GOOD, None),
    ],
)
def test_signal_rules_and_edges(signals: dict[str, Any], label: Label, reason: str | None) -> None:
    v = score(window(5, **signals))
    assert v.label is label
    if reason is None:
        assert v.reasons == ()
    else:
        assert reason in v.reasons


def test_collector_verdict_combines_as_the_worse() -> None:
    # collector DEGRADED, signals GOOD (primary not healthy: eps min 50)
    v = score(window(5, quality="DEGRADED"))
    assert v.label is Label.DEGRADED and v.reasons == ("collector says DEGRADED",)
    # collector GOOD does not hide a BAD signal
    assert score(window(5, dropped_events=3)).label is Label.BAD
    # collector BAD that the downgrade cannot touch (max offline 300 is not < 300)
    v = score(window(5, quality="BAD", offline_seconds_by_exchange=offline(okx=300)))
    assert v.label is Label.BAD
    assert v.reasons == ("okx offline 300s > 180", "collector says BAD")


@pytest.mark.parametrize(
    ("signals", "label"),
    [
        ({"offline_seconds_by_exchange": offline(okx=299), "queue_pct_peak": 89.9},
         Label.DEGRADED),
        ({"offline_seconds_by_exchange": offline(okx=300)}, Label.BAD),
        ({"queue_pct_peak": 90}, Label.BAD),
        ({"dropped_events": 1}, Label.BAD),
    ],
)
def test_downgrade_of_collector_bad(signals: dict[str, Any], label: Label) -> None:
    v = score(window(5, quality="BAD", **signals))
    assert v.label is label
    assert any(r.startswith("BAD downgraded") for r in v.reasons) == (label is Label.DEGRADED)


def test_signal_bad_is_never_downgraded() -> None:
    # primary offline 601 > 600: max offline >= 300, so the downgrade never applies
    v = score(window(5, offline_seconds_by_exchange=offline(binance=601)))
    assert v.label is Label.BAD


@pytest.mark.parametrize(
    ("signals", "label"),
    [
        ({"eps_by_exchange": eps(low=101), "queue_pct_peak": 49.9}, Label.GOOD),
        ({"eps_by_exchange": eps(low=100), "queue_pct_peak": 49.9}, Label.DEGRADED),
        ({"eps_by_exchange": eps(low=101), "queue_pct_peak": 50}, Label.DEGRADED),
        ({"eps_by_exchange": eps(low=101),
          "offline_seconds_by_exchange": offline(binance=1)}, Label.DEGRADED),
        # the primary missing from eps_by_exchange is not healthy
        ({"eps_by_exchange": {"okx": {"avg": 1.0, "min": 500.0}}}, Label.DEGRADED),
    ],
)
def test_healthy_primary_upgrade(signals: dict[str, Any], label: Label) -> None:
    v = score(window(5, reconnects=5, **signals))  # DEGRADED by the signals
    assert v.label is label
    assert any("counted GOOD" in r for r in v.reasons) == (label is Label.GOOD)


def test_healthy_primary_upgrades_a_degraded_from_another_exchange_and_the_collector() -> None:
    doc = window(5, quality="DEGRADED", eps_by_exchange=eps(low=150),
                 offline_seconds_by_exchange=offline(okx=250))
    assert score(doc).label is Label.GOOD
    # downgrade (collector BAD -> DEGRADED) then upgrade (primary healthy) -> GOOD
    doc = window(5, quality="BAD", eps_by_exchange=eps(low=150),
                 offline_seconds_by_exchange=offline(okx=250))
    v = score(doc)
    assert v.label is Label.GOOD
    assert v.reasons[-2].startswith("BAD downgraded") and v.reasons[-1].endswith("counted GOOD")


def test_primary_other_than_binance() -> None:
    doc = window(5, offline_seconds_by_exchange=offline(okx=601))
    assert score(doc, "okx").label is Label.BAD
    assert score(doc, "binance").label is Label.DEGRADED
    assert score(doc, "okx").primary_offline_seconds == 601.0
    assert score(doc, "binance").primary_offline_seconds == 0.0
    healthy = window(5, reconnects=5, eps_by_exchange=eps("okx", 150))
    assert score(healthy, "okx").label is Label.GOOD
    assert score(healthy, "binance").label is Label.DEGRADED


def test_primary_not_reported_counts_offline_the_whole_window() -> None:
    off = {"okx": 0.0, "bybit": 0.0}
    v = score(window(5, offline_seconds_by_exchange=off))
    assert v.label is Label.BAD and v.primary_offline_seconds == 900.0
    assert v.reasons[0] == "binance not reported: offline 900s"
    v = score(window(5, partial=True, offline_seconds_by_exchange=off))  # 450 s long
    assert v.label is Label.DEGRADED and v.primary_offline_seconds == 450.0 and v.partial


def test_the_slot_is_the_window_start_whatever_the_key() -> None:
    v = score_window(window(95), f"quality/date={DAY}/window=2400.json")
    assert (v.slot_day, v.slot_hhmm, v.label, v.misnamed) == (DAY, "2345", Label.GOOD, True)
    v = score_window(window(95), old_last_window_key(DAY))  # the old "named by end" key
    assert (v.slot_day, v.slot_hhmm, v.misnamed) == (DAY, "2345", True)
    v = score_window(window(95), key(95))
    assert (v.slot_day, v.slot_hhmm, v.misnamed) == (DAY, "2345", False)


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        del doc[last]
    return mutate


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        doc[last] = value
    return mutate


MALFORMED_DOCS = [
    (_drop("window_end"), "window_end: missing"),
    (_drop("window_start"), "window_start: missing"),
    (_drop("quality"), "quality: missing"),
    (_drop("is_partial"), "is_partial: missing"),
    (_drop("signals"), "signals: missing"),
    (_drop("signals.dropped_events"), "signals.dropped_events: missing"),
    (_drop("signals.queue_pct_peak"), "signals.queue_pct_peak: missing"),
    (_drop("signals.offline_seconds_by_exchange"), "signals.offline_seconds_by_exchange: missing"),
    (_drop("signals.eps_by_exchange"), "signals.eps_by_exchange: missing"),
    (_drop("signals.eps_by_exchange.okx.min"), "signals.eps_by_exchange.okx.min: missing"),
    (_drop("signals.reconnects"), "signals.reconnects: missing"),
    (_drop("signals.drain_mode_accelerated_seconds"),
     "signals.drain_mode_accelerated_seconds: missing"),
    (_set("quality", "UNKNOWN"), "quality"),
    (_set("quality", None), "quality"),
    (_set("is_partial", 0), "is_partial"),
    (_set("signals", []), "signals"),
    (_set("signals.dropped_events", "3"), "signals.dropped_events"),
    (_set("signals.dropped_events", -1), "signals.dropped_events"),
    (_set("signals.dropped_events", 1.5), "signals.dropped_events"),
    (_set("signals.dropped_events", True), "signals.dropped_events"),
    (_set("signals.queue_pct_peak", float("nan")), "signals.queue_pct_peak"),
    (_set("signals.queue_pct_peak", float("inf")), "signals.queue_pct_peak"),
    (_set("signals.queue_pct_peak", 10**400), "signals.queue_pct_peak"),
    (_set("signals.queue_pct_peak", -0.5), "signals.queue_pct_peak"),
    (_set("signals.offline_seconds_by_exchange.okx", "x"),
     "signals.offline_seconds_by_exchange.okx"),
    (_set("signals.offline_seconds_by_exchange", [1]), "signals.offline_seconds_by_exchange"),
    (_set("signals.eps_by_exchange.okx", 5), "signals.eps_by_exchange.okx"),
    (_set("signals.eps_by_exchange.okx.avg", None), "signals.eps_by_exchange.okx.avg"),
    (_set("signals.ws_connected_seconds", {"okx": -1}), "signals.ws_connected_seconds.okx"),
    (_set("signals.s3_upload_failures", "no"), "signals.s3_upload_failures"),
    (_set("signals.actual_duration_seconds", None), "signals.actual_duration_seconds"),
    (_set("window_end", "2026-11-24T01:45:00Z"), "window_end: .* is not window_start \\+ 900 s"),
    (_set("window_end", "2026-11-24T01:15:00Z"), "window_end: .* is not window_start \\+ 900 s"),
    (_set("window_end", "2026-11-24T01:30:00+00:00"), "window_end: expected ISO"),
    (_set("window_end", "2026-11-24T25:30:00Z"), "window_end: not a valid time"),
    (_set("window_end", 1700000000), "window_end"),
    (_set("window_start", "2026-11-24T01:00:00Z"), "window_end: .* is not window_start"),
    (_set("window_start", "2026-11-24T01:30:00Z"), "window_end: .* is not window_start"),
    (_set("window_start", "2026-11-24T01:22:00Z"), "window_start: .* not a quarter hour"),
    (_set("window_start", "2026-11-24T01:15:30Z"), "window_start: .* not a quarter hour"),
    (_set("window_start", "2026-11-24T01:15:00.5Z"), "window_start: .* not a quarter hour"),
    (_set("window_start", "2026-11-24T01:15:00"), "window_start: expected ISO"),
]


@pytest.mark.parametrize(("mutate", "message"), MALFORMED_DOCS)
def test_malformed_window_names_the_field(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = window(5)
    mutate(doc)
    with pytest.raises(ValueError, match=message):
        score(doc)


def test_malformed_window_not_an_object() -> None:
    not_objects: list[Any] = [[], "x", None, 3]
    for doc in not_objects:
        with pytest.raises(ValueError, match="window: expected an object"):
            score_window(doc, key(5))


def test_optional_signals_may_be_absent() -> None:
    doc = window(5)
    for name in ("actual_duration_seconds", "ws_connected_seconds", "s3_upload_failures"):
        del doc["signals"][name]
    del doc["signals"]["eps_by_exchange"]["okx"]["avg"]
    assert score(doc).label is Label.GOOD


def test_partial_window_keeps_its_nominal_start() -> None:
    # the collector started at 01:22: its first window still starts at 01:15, and
    # actual_duration_seconds (450) tells the real coverage
    v = score(window(5, partial=True))
    assert v.partial and v.label is Label.GOOD and v.slot_hhmm == "0115"
    doc = window(5, partial=True)
    doc["window_start"] = "2026-11-24T01:22:00Z"
    with pytest.raises(ValueError, match="window_start"):
        score(doc)


def test_window_verdict_json_round_trip() -> None:
    v = score(window(5, quality="BAD", partial=True, offline_seconds_by_exchange=offline(okx=250)))
    assert WindowVerdict.from_json(v.to_json()) == v
    assert WindowVerdict.from_bytes(v.to_bytes()) == v
    for name, value in (("slot_hhmm", "0150"), ("slot_hhmm", "2400"), ("slot_day", "2026")):
        doc = v.to_json()
        doc[name] = value
        with pytest.raises(ValueError, match="slot_hhmm"):
            WindowVerdict.from_json(doc)
    doc = v.to_json()
    doc["label"] = "PARTIAL"
    with pytest.raises(ValueError, match="label"):
        WindowVerdict.from_json(doc)
    with pytest.raises(ValueError, match="not JSON"):
        WindowVerdict.from_bytes(b"{")


# ----------------------------------------------------------------- day rules


def test_all_good_day() -> None:
    v = verdict(full_day())
    assert v.label is Label.GOOD and v.reasons == ()
    assert v.counts == WindowCounts(good=96, missing=0)
    assert (v.dropped_events, v.primary_offline_seconds) == (0, 0.0)
    assert (v.rules_version, v.primary_exchange, v.scored_at) == (
        RULES_VERSION, "binance", "2026-11-25T03:00:00.000Z")


@pytest.mark.parametrize(
    ("n_bad", "label", "reason"),
    [(1, Label.DEGRADED, "1 BAD window"), (2, Label.DEGRADED, "2 BAD windows"),
     (3, Label.BAD, "3 BAD windows")],
)
def test_bad_windows(n_bad: int, label: Label, reason: str) -> None:
    v = verdict(with_windows(n_bad, bad))
    assert v.label is label and v.reasons == (reason,)
    assert v.counts.bad == n_bad and v.dropped_events == n_bad


@pytest.mark.parametrize(("total", "label"), [(100_000, Label.DEGRADED), (100_001, Label.BAD)])
def test_total_dropped_events(total: int, label: Label) -> None:
    docs = full_day()
    docs[10] = window(10, dropped_events=60_000)
    docs[11] = window(11, dropped_events=total - 60_000)
    v = verdict(docs)
    assert v.label is label and v.dropped_events == total
    assert ("100001 dropped events > 100000" in v.reasons) == (label is Label.BAD)
    assert "2 BAD windows" in v.reasons


@pytest.mark.parametrize(
    ("total", "label", "reason"),
    [(900, Label.GOOD, None), (901, Label.DEGRADED, "binance offline 901s > 900"),
     (3600, Label.DEGRADED, "binance offline 3600s > 900"),
     (3601, Label.BAD, "binance offline 3601s > 3600")],
)
def test_primary_offline_total(total: int, label: Label, reason: str | None) -> None:
    # windows of 100 s offline (each window GOOD: 100 < 180), the rest in the last one
    docs = with_windows(total // 100, lambda k: window(
        k, offline_seconds_by_exchange=offline(binance=100)))
    if total % 100:
        docs[95] = window(95, offline_seconds_by_exchange=offline(binance=total % 100))
    v = verdict(docs)
    assert v.counts.good == 96
    assert v.label is label and v.primary_offline_seconds == total
    assert v.reasons == (() if reason is None else (reason,))


def test_primary_offline_total_of_another_primary() -> None:
    docs = with_windows(37, lambda k: window(k, offline_seconds_by_exchange=offline(okx=100)))
    assert verdict(docs, "okx").label is Label.BAD
    assert verdict(docs, "okx").primary_exchange == "okx"
    assert verdict(docs).label is Label.GOOD


@pytest.mark.parametrize(("n", "label"), [(9, Label.GOOD), (10, Label.DEGRADED)])
def test_degraded_windows(n: int, label: Label) -> None:
    v = verdict(with_windows(n, degraded))
    assert v.counts.degraded == n and v.label is label
    assert v.reasons == (() if label is Label.GOOD else ("10 DEGRADED windows",))


@pytest.mark.parametrize(("n", "label"), [(16, Label.GOOD), (17, Label.PARTIAL)])
def test_partial_windows(n: int, label: Label) -> None:
    v = verdict(with_windows(n, lambda k: window(k, partial=True)))
    assert v.counts.partial == n and v.counts.good == 96 and v.counts.full == 96 - n
    assert v.label is label
    if label is Label.PARTIAL:
        assert v.reasons == ("79 full windows < 80 (17 partial, 0 missing)",)


@pytest.mark.parametrize(
    ("n", "label", "reasons"),
    [(1, Label.DEGRADED, ("1 window missing",)),
     (16, Label.DEGRADED, ("16 windows missing",)),
     (17, Label.PARTIAL, ("79 full windows < 80 (0 partial, 17 missing)", "17 windows missing")),
     (95, Label.PARTIAL, ("1 full windows < 80 (0 partial, 95 missing)", "95 windows missing"))],
)
def test_missing_windows(n: int, label: Label, reasons: tuple[str, ...]) -> None:
    docs = full_day()
    for k in range(0, 96, 1)[:n]:
        del docs[95 - k]
    v = verdict(docs)
    assert v.counts.missing == n and v.counts.malformed == 0 and v.label is label
    assert v.reasons == reasons


def test_missing_and_partial_add_up_for_the_partial_rule() -> None:
    docs = with_windows(10, lambda k: window(k, partial=True))
    for k in range(89, 96):
        del docs[k]
    v = verdict(docs)  # 96 - 10 partial - 7 missing = 79 full
    assert v.label is Label.PARTIAL and v.counts.full == 79
    del docs[88]
    docs[89] = window(89)
    assert verdict(docs).counts.full == 79
    docs = with_windows(10, lambda k: window(k, partial=True))
    for k in range(90, 96):
        del docs[k]
    assert verdict(docs).label is Label.DEGRADED  # 80 full, 6 missing


def test_precedence() -> None:
    # BAD beats PARTIAL: 3 BAD windows among 20
    docs = {k: (bad(k) if k < 3 else window(k)) for k in range(20)}
    v = verdict(docs)
    assert v.label is Label.BAD
    assert v.reasons == ("3 BAD windows", "20 full windows < 80 (0 partial, 76 missing)",
                         "76 windows missing")
    # PARTIAL beats DEGRADED
    docs = {k: (bad(k) if k < 1 else degraded(k) if k < 12 else window(k)) for k in range(40)}
    v = verdict(docs)
    assert v.label is Label.PARTIAL
    assert v.reasons == ("40 full windows < 80 (0 partial, 56 missing)", "1 BAD window",
                         "11 DEGRADED windows", "56 windows missing")
    # partial windows keep their label: 3 partial BAD windows make the day BAD
    docs = with_windows(3, lambda k: window(k, partial=True, dropped_events=2))
    assert verdict(docs).label is Label.BAD


def test_no_windows_is_unknown() -> None:
    v = verdict({})
    assert v.label is Label.UNKNOWN and v.reasons == ("no usable window",)
    assert v.counts == WindowCounts(missing=96)
    assert not v.label.final


def test_only_malformed_windows_is_unknown() -> None:
    v = verdict({key(0): b"nope", key(1): b"[]"})
    assert v.label is Label.UNKNOWN
    assert v.reasons == ("no usable window", "2 malformed windows")
    assert v.counts.malformed == 2 and v.counts.missing == 96
    assert v.malformed_keys == (key(0), key(1))


K2400 = f"quality/date={DAY}/window=2400.json"
K1234 = f"quality/date={DAY}/window=1234.json"

MALFORMED_OBJECTS: list[tuple[str, str, bytes, tuple[str, ...], int]] = [
    # (kind, key written, its bytes, keys named malformed, slots left uncovered)
    ("not JSON", key(7), b'{"window_end": ', (key(7),), 1),
    ("not UTF-8", key(7), b"\xff\xfe{}", (key(7),), 1),
    ("empty bytes", key(7), b"", (key(7),), 1),
    ("JSON array", key(7), b"[1, 2]", (key(7),), 1),
    ("deep nesting", key(7), b"[" * 100_000 + b"]" * 100_000, (key(7),), 1),
    ("NaN", key(7), encode(window(7, queue_pct_peak=float("nan"))), (key(7),), 1),
    ("number beyond float range", key(7), encode(window(7, queue_pct_peak=10**400)), (key(7),), 1),
    ("huge int", key(7), b'{"signals": {"dropped_events": ' + b"9" * 5000 + b"}}", (key(7),), 1),
    ("missing field", key(7), encode({k: v for k, v in window(7).items() if k != "quality"}),
     (key(7),), 1),
    ("wrong type", key(7), encode(window(7, reconnects="5")), (key(7),), 1),
    ("window_start not a quarter hour", key(7),
     encode({**window(7), "window_start": "2026-11-24T01:50:00Z"}), (key(7),), 1),
    ("window_end not start + 900 s", key(7),
     encode({**window(7), "window_end": "2026-11-24T02:15:00Z"}), (key(7),), 1),
    ("a window_end-named key", K2400, b"{}", (K2400,), 0),
]


@pytest.mark.parametrize(("kind", "bad_key", "data", "named", "uncovered"), MALFORMED_OBJECTS,
                         ids=[m[0] for m in MALFORMED_OBJECTS])
def test_malformed_objects_are_counted_named_and_missing(
    kind: str, bad_key: str, data: bytes, named: tuple[str, ...], uncovered: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = day_of(full_day())
    raw[bad_key] = data
    with caplog.at_level(logging.WARNING, logger="compressor.quality.windows"):
        v = verdict(raw)
    assert v.counts.malformed == len(named)
    assert v.malformed_keys == tuple(sorted(named))
    assert v.counts.missing == uncovered and v.counts.good == 96 - uncovered
    assert v.label is Label.DEGRADED  # never GOOD with a malformed object
    assert _plural_malformed(len(named)) in v.reasons
    assert all(k in caplog.text for k in named)


def _plural_malformed(n: int) -> str:
    return "1 malformed window" if n == 1 else f"{n} malformed windows"


K0000_NEXT = old_last_window_key(DAY)

MISNAMED_OBJECTS: list[tuple[str, str, bytes, tuple[str, ...], int]] = [
    # (kind, key written over a full clean day, its bytes, keys named misnamed, slots
    #  left uncovered): the window counts once, by its window_start
    ("another slot's window under a key", key(7), encode(window(8)), (key(7),), 1),
    ("another day's window in this folder", key(7), encode(window(7, "20261123")), (key(7),), 1),
    ("the 2345 window also under 2400", K2400, encode(window(95)), (K2400,), 0),
    ("a key naming no slot", K1234, encode(window(7)), (K1234,), 0),
    ("a copy under another day's key", key(7, "20261123"), encode(window(7)),
     (key(7, "20261123"),), 0),
    ("the end-named 2345 window under the next day", K0000_NEXT, encode(window(95)),
     (K0000_NEXT,), 0),
]


@pytest.mark.parametrize(("kind", "odd_key", "data", "named", "uncovered"), MISNAMED_OBJECTS,
                         ids=[m[0] for m in MISNAMED_OBJECTS])
def test_misnamed_objects_are_counted_by_window_start_and_named(
    kind: str, odd_key: str, data: bytes, named: tuple[str, ...], uncovered: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = day_of(full_day())
    raw[odd_key] = data
    with caplog.at_level(logging.WARNING, logger="compressor.quality.windows"):
        v = verdict(raw)
    assert (v.counts.misnamed, v.counts.malformed) == (len(named), 0)
    assert v.misnamed_keys == tuple(sorted(named)) and v.malformed_keys == ()
    assert v.counts.missing == uncovered and v.counts.good == 96 - uncovered
    # misnaming alone never lowers the label; a slot it leaves uncovered does
    assert v.label is (Label.DEGRADED if uncovered else Label.GOOD)
    assert v.reasons[-1] == "1 misnamed window (counted by window_start)"
    assert all(k in caplog.text for k in named)


def test_misnamed_window_alone_counts_in_its_slot() -> None:
    raw = day_of(full_day())
    raw[K2400] = raw.pop(key(95))  # the 23:45 window named by its end
    v = verdict(raw)
    assert v.counts == WindowCounts(good=96, missing=0, misnamed=1)
    assert v.label is Label.GOOD and v.misnamed_keys == (K2400,)


def test_duplicates_none_named_right() -> None:
    raw = day_of(full_day())
    doc = raw.pop(key(95))
    raw[K2400] = raw[K0000_NEXT] = doc  # identical copies: counted once
    v = verdict(raw)
    assert v.counts == WindowCounts(good=96, missing=0, misnamed=2)
    assert v.label is Label.GOOD
    raw[K0000_NEXT] = encode(window(95, reconnects=1))  # different: neither is trusted
    v = verdict(raw)
    assert v.counts == WindowCounts(good=95, missing=1, malformed=2)
    assert v.malformed_keys == (K2400, K0000_NEXT) and v.label is Label.DEGRADED


def test_a_neighbour_window_of_its_own_day_is_not_ours() -> None:
    raw = day_of(full_day())
    raw[K0000_NEXT] = encode(window(0, "20261125"))  # the 25th's own first window
    raw[key(1, "20261125")] = b"junk"  # and another day's junk
    v = verdict(raw)
    assert v.counts == WindowCounts(good=96, missing=0) and v.reasons == ()


def test_a_day_named_by_window_end_scores_as_the_collector_meant_it() -> None:
    """The old convention (HHMM = the window's end, the 23:45 window under the next
    day's 0000): every window counts in its slot, each is reported misnamed."""
    end_named = {}
    for k in range(96):
        end = (datetime(2026, 11, 24, tzinfo=UTC) + timedelta(minutes=15 * (k + 1)))
        end_named[f"quality/date={end:%Y%m%d}/window={end:%H%M}.json"] = encode(window(k))
    v = verdict(end_named)
    assert v.counts == WindowCounts(good=96, missing=0, misnamed=96)
    assert v.label is Label.GOOD and len(v.misnamed_keys) == MALFORMED_KEYS_CAP


def test_malformed_keys_are_capped() -> None:
    raw = day_of(full_day())
    for k in range(25):
        raw[key(k)] = b"garbage"
    v = verdict(raw)
    assert v.counts.malformed == 25 and v.counts.missing == 25
    assert len(v.malformed_keys) == MALFORMED_KEYS_CAP == 20
    assert list(v.malformed_keys) == sorted(key(k) for k in range(25))[:20]
    assert v.label is Label.PARTIAL  # 71 full windows
    assert v.reasons == ("71 full windows < 80 (0 partial, 25 missing)", "25 windows missing",
                         "25 malformed windows")


def test_score_day_is_pure_and_deterministic() -> None:
    raw = day_of(with_windows(5, degraded))
    a = score_day(DAY, raw, now=NOW)
    b = score_day(DAY, dict(reversed(list(raw.items()))), now=NOW)
    assert a == b and a.to_bytes() == b.to_bytes()
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    assert score_day(DAY, raw, now=tokyo).scored_at == "2026-11-25T03:00:00.000Z"
    for bad_now in (datetime(2026, 11, 25), None, "2026-11-25 03:00", "2026-11-25T03:00:00"):
        with pytest.raises(ValueError, match="now"):
            score_day(DAY, raw, now=bad_now)
    # positional, and an ISO-8601 Z string is kept as given
    assert score_day(DAY, raw, "binance", "2026-11-25T03:00:00.123Z").scored_at == (
        "2026-11-25T03:00:00.123Z")
    with pytest.raises(ValueError):
        score_day("2026-11-24", raw, now=NOW)
    with pytest.raises(ValueError, match="primary"):
        score_day(DAY, raw, "", now=NOW)


# ----------------------------------------------------------------- DayVerdict JSON


def _mixed_verdict() -> DayVerdict:
    docs = with_windows(2, bad, with_windows(11, degraded))
    docs[20] = window(20, partial=True, offline_seconds_by_exchange=offline(binance=12.5))
    del docs[50]
    raw = day_of(docs)
    raw[key(60)] = b"x"
    return score_day(DAY, raw, now=NOW)


def test_day_verdict_round_trip() -> None:
    v = _mixed_verdict()
    assert v.label is Label.DEGRADED
    assert v.counts == WindowCounts(good=83, degraded=9, bad=2, partial=1, missing=2,
                                    malformed=1)
    assert v.counts.to_json() == {"good": 83, "degraded": 9, "bad": 2, "partial": 1,
                                  "missing": 2, "malformed": 1, "misnamed": 0,
                                  "expected": 96}
    assert v.reasons == ("2 BAD windows", "2 windows missing", "1 malformed window")
    assert DayVerdict.from_json(v.to_json()) == v
    assert DayVerdict.from_bytes(v.to_bytes()) == v
    assert json.loads(v.to_bytes()) == v.to_json()
    doc = v.to_json()
    assert doc["totals"] == {"dropped_events": 2, "primary_offline_seconds": 12.5}
    assert doc["malformed_keys"] == [key(60)] and doc["label"] == "DEGRADED"
    for label in Label:
        if label is not Label.UNKNOWN:
            assert DayVerdict.from_json({**doc, "label": label.value}).label is label


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed: dict[str, Any] = copy.deepcopy(doc)
    _set(path, value)(changed)
    return changed


def _without(doc: dict[str, Any], path: str) -> dict[str, Any]:
    changed: dict[str, Any] = copy.deepcopy(doc)
    _drop(path)(changed)
    return changed


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: _with(d, "label", "OK"), "label"),
        (lambda d: _with(d, "label", "UNKNOWN"), "label"),
        (lambda d: _without(d, "label"), "label"),
        (lambda d: _with(d, "day", "2026-11-24"), "day"),
        (lambda d: _with(d, "rules_version", ""), "rules_version"),
        (lambda d: _with(d, "primary_exchange", 3), "primary_exchange"),
        (lambda d: _without(d, "counts"), "counts"),
        (lambda d: _with(d, "counts.good", -1), "counts.good"),
        (lambda d: _with(d, "counts.bad", "2"), "counts.bad"),
        (lambda d: _with(d, "counts.missing", 3), "counts"),
        (lambda d: _with(d, "counts.expected", 95), "counts.expected"),
        (lambda d: _with(d, "counts.partial", 97), "counts"),
        (lambda d: _with(d, "counts.extra", 1), "counts.extra"),
        (lambda d: _with(d, "malformed_keys", [1]), "malformed_keys"),
        (lambda d: _with(d, "malformed_keys", ["a", "b"]), "malformed_keys"),
        (lambda d: _without(d, "totals"), "totals"),
        (lambda d: _with(d, "totals.dropped_events", 1.0), "totals.dropped_events"),
        (lambda d: _without(d, "totals.primary_offline_seconds"), "totals.primary_offline_seconds"),
        (lambda d: _with(d, "reasons", "why"), "reasons"),
        (lambda d: _with(d, "scored_at", "2026-11-25 03:00"), "scored_at"),
        (lambda d: _with(d, "scored_at", "2026-11-25T03:00:00+00:00"), "scored_at"),
        (lambda d: [d], "expected an object"),
    ],
)
def test_day_verdict_validation_names_the_field(
    change: Callable[[dict[str, Any]], Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        DayVerdict.from_json(change(_mixed_verdict().to_json()))


def test_unknown_day_verdict_round_trip() -> None:
    v = verdict({})
    assert DayVerdict.from_bytes(v.to_bytes()) == v
    with pytest.raises(ValueError, match="label"):
        DayVerdict.from_json({**v.to_json(), "label": "GOOD"})


# ----------------------------------------------------------------- the store


CLEAN: dict[str, Any] = {
    "quality": "GOOD",
    "signals": {
        "offline_seconds_by_exchange": offline(),
        "dropped_events": 0,
        "queue_pct_peak": 10.0,
        "reconnects": 0,
    },
}


def clean() -> dict[int, dict[str, Any]]:
    """Generator overrides making every window GOOD."""
    return {k: CLEAN for k in range(96)}


def test_generator_options_write_known_answers(tmp_path: Path) -> None:
    over = clean()
    over = {**over, 3: {**CLEAN, "signals": {**CLEAN["signals"], "dropped_events": 7}},
            4: {"quality": "BAD", "signals": {**CLEAN["signals"], "dropped_events": 1}}}
    write_quality_windows(tmp_path, DAY, partial=[10], overrides=over, missing=[95])
    raw = fetch_day_windows(LocalStore(tmp_path), DAY)
    assert len(raw) == 95 and key(95) not in raw
    doc = json.loads(raw[key(10)])
    assert doc["is_partial"] is True and doc["signals"]["actual_duration_seconds"] == 450.0
    assert set(doc["signals"]) >= {"ws_connected_seconds", "eps_by_exchange"}  # kept
    v = score_day(DAY, raw, now=NOW)
    assert v.counts == WindowCounts(good=93, bad=2, partial=1, missing=1)
    assert v.label is Label.DEGRADED
    assert v.reasons == ("2 BAD windows", "1 window missing")
    assert v.dropped_events == 8


def test_generator_defaults_unchanged_by_the_new_options(tmp_path: Path) -> None:
    a = write_quality_windows(tmp_path / "a", DAY)
    b = write_quality_windows(tmp_path / "b", DAY, partial=(), overrides={})
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_fetch_save_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw_root, compact = tmp_path / "raw", LocalStore(tmp_path / "compact")
    (tmp_path / "compact").mkdir()
    write_quality_windows(raw_root, DAY, missing=range(40, 60), overrides=clean())
    write_quality_windows(raw_root, "20261125", overrides=clean())  # another day
    folder = raw_root / f"quality/date={DAY}"
    (folder / "._window=0015.json").write_bytes(b"\x00\x05\x16\x07")
    (folder / "window=0030.json.tmp").write_bytes(b"{")
    (folder / "sub").mkdir()
    (folder / "sub/window=0045.json").write_bytes(b"{}")
    (folder / "window=2400.json").write_bytes(b"{}")  # malformed
    raw = LocalStore(raw_root)

    windows = fetch_day_windows(raw, DAY, workers=4)
    assert sorted(windows) == sorted([key(k) for k in range(96) if not 40 <= k < 60]
                                     + [K2400])
    assert fetch_day_windows(raw, "20261126") == {}
    v = score_day(DAY, windows, now=NOW)
    assert v.counts == WindowCounts(good=76, missing=20, malformed=1)
    assert v.label is Label.PARTIAL  # 76 full windows
    assert v.malformed_keys == (K2400,)

    assert load_verdict(compact, DAY) is None
    etag = save_verdict(compact, v)
    assert etag and (tmp_path / "compact" / verdict_key(DAY)).exists()
    assert load_verdict(compact, DAY) == v
    assert save_verdict(compact, v) == etag  # same verdict, same bytes

    compact.put_bytes(verdict_key(DAY), b"{not json")
    with caplog.at_level(logging.WARNING, logger="compressor.quality.windows"):
        assert load_verdict(compact, DAY) is None
    assert verdict_key(DAY) in caplog.text
    compact.put_bytes(verdict_key("20261125"), v.to_bytes())  # the 24th's verdict
    assert load_verdict(compact, "20261125") is None


class _FlakyStore(LocalStore):
    def __init__(self, root: Path, fail: dict[str, Exception]) -> None:
        super().__init__(root)
        self.fail = fail
        self.gets: list[str] = []

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        self.gets.append(key)
        if key in self.fail:
            raise self.fail[key]
        return super().get_bytes(key)


def test_fetch_skips_vanished_and_raises_other_errors(tmp_path: Path) -> None:
    write_quality_windows(tmp_path, DAY, overrides=clean())
    store = _FlakyStore(tmp_path, {key(3): NotFound("gone")})
    windows = fetch_day_windows(store, DAY)
    assert len(windows) == 95 and key(3) not in windows
    assert sorted(store.gets) == sorted(key(k) for k in range(96))  # one GET each
    assert score_day(DAY, windows, now=NOW).reasons == ("1 window missing",)

    store = _FlakyStore(tmp_path, {key(3): TransientStoreError("503")})
    with pytest.raises(TransientStoreError):
        fetch_day_windows(store, DAY, workers=2)
    with pytest.raises(ValueError, match="workers"):
        fetch_day_windows(store, DAY, workers=0)


# ----------------------------------------------------------------- the real collector's windows


REAL = Path(__file__).parent / "fixtures" / "collector-real"


def test_real_collector_windows_score_as_the_collector_wrote_them() -> None:
    """The four windows the collector wrote (tests/fixtures/collector-real): each in the
    slot of its window_start, none malformed or misnamed (rules 1.0.0 read all four as
    malformed and both days as UNKNOWN)."""
    store = LocalStore(REAL)
    feb = fetch_day_windows(store, "20260228")
    assert sorted(feb) == [f"quality/date=20260228/window={h}.json"
                           for h in ("2315", "2330", "2345")]
    labels = {k: score_window(json.loads(b), k) for k, b in feb.items()}
    labels["0000"] = score_window(json.loads(
        (REAL / "quality/date=20260301/window=0000.json").read_bytes()),
        "quality/date=20260301/window=0000.json")
    assert {v.slot_hhmm: (v.slot_day, v.slot_hhmm, v.label.value, v.partial, v.misnamed)
            for v in labels.values()} == {
        "2315": ("20260228", "2315", "DEGRADED", True, False),  # first window: 70 s
        "2330": ("20260228", "2330", "GOOD", False, False),
        "2345": ("20260228", "2345", "DEGRADED", False, False),  # 3 okx reconnects
        "0000": ("20260301", "0000", "BAD", False, False),  # 72 dropped, queue 95 (int)
    }
    v = score_day("20260228", feb, now=NOW)
    assert v.counts == WindowCounts(good=1, degraded=2, partial=1, missing=93)
    assert v.label is Label.PARTIAL and v.malformed_keys == v.misnamed_keys == ()
    assert v.reasons == ("2 full windows < 80 (1 partial, 93 missing)", "93 windows missing")
    assert v.primary_offline_seconds == 1.0
    v = score_day("20260301", fetch_day_windows(store, "20260301"), now=NOW)
    assert v.counts == WindowCounts(bad=1, missing=95) and v.dropped_events == 72
    assert v.label is Label.PARTIAL


def test_real_collector_window_makes_a_good_day() -> None:
    """96 copies of the collector's clean 23:30 window, moved to every slot of a day
    and written as the collector writes them: a GOOD day."""
    doc = json.loads((REAL / "quality/date=20260228/window=2330.json").read_bytes())
    raw = {}
    for k in range(96):
        start = datetime(2026, 2, 27, tzinfo=UTC) + timedelta(minutes=15 * k)
        one = {**doc, "window_start": f"{start:%Y-%m-%dT%H:%M:%SZ}",
               "window_end": f"{start + timedelta(minutes=15):%Y-%m-%dT%H:%M:%SZ}"}
        raw[f"quality/date=20260227/window={start:%H%M}.json"] = json.dumps(one, indent=2).encode()
    v = score_day("20260227", raw, now=NOW)
    assert v.label is Label.GOOD and v.counts == WindowCounts(good=96, missing=0)


def _shape(value: Any) -> Any:
    """A JSON document's keys (in order) and value types, numbers as 'number'."""
    if isinstance(value, dict):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def test_generator_writes_windows_as_the_collector_does(tmp_path: Path) -> None:
    real = (REAL / "quality/date=20260228/window=2315.json").read_bytes()
    paths = write_quality_windows(tmp_path, DAY, partial=[93], missing=[94])
    assert [p.name for p in paths][:2] == ["window=0000.json", "window=0015.json"]
    assert paths[-1].name == "window=2345.json" and paths[-1].parent.name == f"date={DAY}"
    ours = paths[-2].read_bytes()  # 23:15, the first window after a simulated restart
    assert not ours.endswith(b"\n") and not real.endswith(b"\n")
    doc, real_doc = json.loads(ours), json.loads(real)
    assert ours == json.dumps(doc, indent=2).encode()  # json.dump(indent=2)
    assert _shape(doc) == _shape(real_doc)  # the same fields, in the same order
    assert doc["window_start"] == "2026-11-24T23:15:00Z" and doc["is_partial"] is True
    assert 0 < doc["signals"]["actual_duration_seconds"] < 900
    counts = [doc["signals"][n] for n in ("dropped_events", "reconnects", "s3_upload_failures")]
    assert all(type(c) is int for c in counts)
    # queue_pct_peak: the backpressure floor of a BAD window is an int, else a float
    docs = [json.loads(p.read_bytes()) for p in write_quality_windows(tmp_path / "s4", DAY,
                                                                        seed=4)]
    queues = {(d["quality"], type(d["signals"]["queue_pct_peak"])) for d in docs}
    assert queues == {("BAD", int), ("GOOD", float), ("DEGRADED", float)}
    v = score_day(DAY, fetch_day_windows(LocalStore(tmp_path), DAY), now=NOW)
    assert v.counts.misnamed == v.counts.malformed == 0 and v.counts.missing == 1
    assert v.counts.partial == 1


def test_a_verdict_stored_by_rules_1_0_0_still_loads(tmp_path: Path) -> None:
    doc = score_day(DAY, day_of(full_day()), now=NOW).to_json()
    del doc["counts"]["misnamed"], doc["misnamed_keys"]
    doc["rules_version"] = "1.0.0"
    compact = LocalStore(tmp_path)
    compact.put_bytes(verdict_key(DAY), json.dumps(doc).encode())
    old = load_verdict(compact, DAY)
    assert old is not None and old.rules_version == "1.0.0" and old.counts.misnamed == 0
    assert old.misnamed_keys == () and RULES_VERSION == "2.0.0"
    for change, field in ((("counts", "misnamed", -1), "counts.misnamed"),
                          (("misnamed_keys", None, ["a"]), "misnamed_keys")):
        bad_doc = copy.deepcopy(doc)
        top, sub, value = change
        if sub is None:
            bad_doc[top] = value
        else:
            bad_doc[top][sub] = value
        with pytest.raises(ValueError, match=field):
            DayVerdict.from_json(bad_doc)


def test_fetch_reads_the_next_days_0000_only_for_an_end_named_day(tmp_path: Path) -> None:
    """A day written in the old end-named convention has no window starting at 23:45 in
    its folder: one more GET, of the next day's 0000, finds it. A day written as the
    collector writes it, or one without windows, costs no such request."""
    for k in range(96):
        end = datetime(2026, 11, 24, tzinfo=UTC) + timedelta(minutes=15 * (k + 1))
        path = tmp_path / f"quality/date={end:%Y%m%d}/window={end:%H%M}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(window(k)))
    store = _FlakyStore(tmp_path, {})
    windows = fetch_day_windows(store, DAY)
    assert len(windows) == 96 and K0000_NEXT in windows and store.gets[-1] == K0000_NEXT
    v = score_day(DAY, windows, now=NOW)
    assert v.counts == WindowCounts(good=96, missing=0, misnamed=96)
    assert v.label is Label.GOOD
    # the next day's folder holds only that end-named window: not the 25th's
    nxt = score_day("20261125", fetch_day_windows(store, "20261125"), now=NOW)
    assert nxt.counts == WindowCounts(missing=96, misnamed=1) and nxt.label is Label.UNKNOWN
    assert nxt.misnamed_keys == (K0000_NEXT,)

    store = _FlakyStore(tmp_path / "none", {})
    (tmp_path / "none").mkdir()
    assert fetch_day_windows(store, DAY) == {} and store.gets == []
