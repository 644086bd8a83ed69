"""UTC ISO-8601 times, one-line messages and human sizes."""

from __future__ import annotations

import pytest

from compressor.text import human_size, one_line, parse_utc_iso, utc_iso

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_utc_iso_round_trips_to_the_millisecond() -> None:
    assert utc_iso(T0) == "2023-11-14T22:13:20.000Z"
    assert utc_iso(T0 + 0.1234) == "2023-11-14T22:13:20.123Z"
    assert utc_iso(T0 + 59.9996) == "2023-11-14T22:14:20.000Z"  # rounding carries over
    assert parse_utc_iso(utc_iso(T0 + 1.5)) == T0 + 1.5
    assert parse_utc_iso("2023-11-14T22:13:20Z") == T0


@pytest.mark.parametrize(
    "text", ["2023-11-14T22:13:20", "2023-11-14 22:13:20Z", "2023-13-14T22:13:20Z", "", None, 5]
)
def test_parse_utc_iso_rejects_anything_else(text: object) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 UTC time ending in Z"):
        parse_utc_iso(text)


def test_one_line() -> None:
    assert one_line("a\n  b\r\n\tc ") == "a b c"
    assert one_line("x" * 20, limit=10) == "xxxxxxx..."
    assert len(one_line("y " * 2000)) == 1000


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(5 << 20) == "5.0 MiB"
    assert human_size(3 << 40) == "3072.0 GiB"  # GiB is the largest unit
