"""How entries and the watermark combine when several runs write the same state.

Merge rule (see `merge_entries`): an entry belongs to one *attempt*, identified by
`started_at` (when the attempt began, after it took the partition lease). Between two
entries for the same partition the newer attempt wins; within one attempt the later
`updated_at` wins; exact ties go to the more final status (success > quarantined >
failed > in_progress), then to the canonical JSON. `attempts` is the max of both.
So a `success` is never replaced by the `in_progress` or `failed` of an attempt that
started before it (e.g. a paused run that lost its lease and reports it late), but a
newer attempt (an `--overwrite` re-run, new raw files) that fails does replace it:
the state tells the truth about the latest attempt while the published meta.json and
data.parquet stay the previous, consistent pair. The rule is a max over a total
order, so it is commutative, associative and idempotent: the order in which
concurrent runs flush, and retries of a write whose outcome was unknown, never
change the result.

`last_compacted_date` only passes a day that is compacted at the moment it is written
(README "Readiness never lies"). A run does not write a value it computed earlier:
it *vouches* for days (`vouch_for`: each day with the state keys of its partitions
that have raw data), and every compare-and-swap write recomputes the watermark from
the document it replaces: from that document's value it moves over the next vouched
day, and the next, as long as each is the very next calendar day and every one of
its partitions has a `success` entry in the merged document. So a `--mode cleanup`
that lowered the value and marked or removed a day's entries (`hold_back`, `forget`)
between a run's check of the day and its write holds the run back before that day:
no larger value computed from an older read is restored. `advance_last_compacted`
(an operator's or a test's seed) is trusted as given and only moves it forward.
`ready_date` computes a run's candidate value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from compressor.layout import format_day, parse_day
from compressor.state.document import PartitionState
from compressor.text import parse_utc_iso

#: Tie-break between entries of the same attempt with the same updated_at.
_STATUS_RANK = {"in_progress": 0, "failed": 1, "quarantined": 2, "success": 3}


def _merge_key(entry: PartitionState) -> tuple[float, float, int, str]:
    canonical = entry.to_json()
    canonical.pop("attempts")
    return (
        parse_utc_iso(entry.attempt_started_at),
        parse_utc_iso(entry.updated_at),
        _STATUS_RANK[entry.status],
        json.dumps(canonical, sort_keys=True),
    )


def merge_entries(a: PartitionState, b: PartitionState) -> PartitionState:
    """The entry to keep when two writers recorded the same partition (module docstring)."""
    winner = max(a, b, key=_merge_key)
    attempts = max(a.attempts, b.attempts)
    return winner if winner.attempts == attempts else replace(winner, attempts=attempts)


# ---------------------------------------------------------------- readiness


def ready_date(previous: str | None, days: Iterable[tuple[str, bool]]) -> str | None:
    """New last_compacted_date after a run.

    `days`: the days this run processed, ascending, each with True when every one of
    its partitions is done (success or already up to date). The date advances to the
    last day D such that every processed day up to D is done; the first day not done
    holds it back even when later days were compacted. Never moves backward; days at
    or before `previous` do not count.
    """
    result = previous
    last_seen: str | None = None
    for day, done in days:
        parse_day(day)
        if last_seen is not None and day <= last_seen:
            raise ValueError(f"days must be ascending and unique: {day} after {last_seen}")
        last_seen = day
        if previous is not None and day <= previous:
            continue
        if not done:
            break
        result = day
    return result


def _next_day(day: str) -> str:
    return format_day(parse_day(day) + timedelta(days=1))


def vouched_watermark(current: str | None, vouched: Mapping[str, frozenset[str]],
                      partitions: Mapping[str, Any]) -> str | None:
    """The watermark a vouching write may set over `current` (module docstring).

    `partitions`: the raw entries of the document being written. It moves over each
    vouched day after `current` in order and stops at the first one that is not the
    next calendar day (nobody vouches for the gap: a cleanup lowered the value below
    what the run started from) or that has a partition without a `success` entry.
    """
    value = current
    for day in sorted(vouched):
        if value is not None and day <= value:
            continue
        if value is not None and day != _next_day(value):
            break
        keys = vouched[day]
        if any(partitions.get(k, {}).get("status") != "success" for k in keys):
            break
        value = day
    return value


def _max_day(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)
