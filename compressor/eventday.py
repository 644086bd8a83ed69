"""Rows belong to their event day: which raw rows a compact day holds.

The collector files a raw object under the UTC date of its *flush*, not of its
rows: the first files after midnight hold the last rows of the day before, and a
collector whose clock runs behind can put a few rows of the next day under the
day before (docs/guarantees.md "Rows belong to their event day").

The rule is a pure function of a raw object's key and one row's `ts_event`, so the
two days on either side of a midnight always agree on where each row goes, and
each raw row lands in exactly one compact partition:

- a row stays in the day its folder names, unless
- its `ts_event` falls in the *adjacent* day across a midnight, the file was
  flushed within `HORIZON_S` of that midnight (the flush time is the key's
  `part-<unix_s>-...`), and that midnight is an *event* edge: then it belongs to
  the adjacent day.

An edge is `flush` (rows stay where they were filed, the rule of versions before
2.0) when the store's outputs on either side of it were made by that older rule
and are kept (days before `event_day_from`, docs/operations.md
"compacted/_state.json"), or when the adjacent folder holds no raw data file (no
partition there could receive the rows). Rows further than one day off, and rows
of files flushed outside the horizon, stay in their folder and are counted as
`out_of_day_rows`.

This module knows keys, days and intervals only: no store, no merge.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from compressor.layout import format_day, parse_day
from compressor.storage.base import ObjectInfo

#: The rule that made an output, as meta.json's `day_rule` and the state entry's.
DAY_RULE = "event_day/1"
#: A raw file flushed within this many seconds of a midnight may give rows across it.
HORIZON_S = 900
#: A day whose next folder shows no file flushed past the horizon is settled this long
#: after its midnight anyway (a stream that stopped; the nightly run is at 02:30).
SETTLE_GRACE_S = 3600
DAY_MS = 86_400_000
#: Widest int64 interval: a raw row's ts_event always falls in it.
_ALL = (-(2**63), 2**63 - 1)

_FLUSH_RE = re.compile(r"(?:^|/)part-(\d{1,12})-\d+\.parquet$")


class EdgeMode(enum.StrEnum):
    """What happens to rows at one midnight of a partition (module docstring)."""

    EVENT = "event"
    FLUSH = "flush"


def flush_time(key: str) -> int | None:
    """The flush time (unix seconds) a collector key names, None when it names none."""
    match = _FLUSH_RE.search(key)
    return int(match.group(1)) if match else None


def midnight_s(day: str) -> int:
    """Unix seconds of 00:00 UTC starting `day` (YYYYMMDD)."""
    start = datetime.combine(parse_day(day), datetime.min.time(), UTC)
    return int(start.timestamp())


def shift(day: str, days: int) -> str:
    return format_day(parse_day(day) + timedelta(days=days))


def near(key: str, midnight: int) -> bool:
    """Whether the file `key` was flushed within the horizon of `midnight` (unix s)."""
    flushed = flush_time(key)
    return flushed is not None and abs(flushed - midnight) < HORIZON_S


def edge_mode(earlier_day: str, event_day_from: str | None, other_has_data: bool) -> EdgeMode:
    """The mode of the midnight that ends `earlier_day` (both sides compute the same)."""
    if not other_has_data:
        return EdgeMode.FLUSH
    if event_day_from is not None and earlier_day < event_day_from:
        return EdgeMode.FLUSH
    return EdgeMode.EVENT


@dataclass(frozen=True)
class Edges:
    """A partition-day's two midnights and the neighbour files that may give it rows.

    `before`: files of the day before's folder flushed within the horizon of this
    day's midnight; `after`: files of the next day's folder flushed within the
    horizon of the next midnight. Both are empty on a `flush` edge. `settled`: no
    later file can join `after` (a file flushed past the horizon is listed, or the
    grace time has passed); not part of what was compacted, so not in `digest`.
    """

    day: str
    previous: EdgeMode = EdgeMode.FLUSH
    next: EdgeMode = EdgeMode.FLUSH
    before: tuple[ObjectInfo, ...] = ()
    after: tuple[ObjectInfo, ...] = ()
    settled: bool = True

    @property
    def moves_rows(self) -> bool:
        """False when both edges are `flush`: the day is its folder, as before 2.0."""
        return EdgeMode.EVENT in (self.previous, self.next)

    @property
    def neighbours(self) -> tuple[ObjectInfo, ...]:
        return self.before + self.after

    def digest_lines(self) -> Iterable[str]:
        """What the source fingerprint adds for this day's edges (see `fingerprint`)."""
        yield f"rule\t{DAY_RULE}\tprevious={self.previous}\tnext={self.next}\n"
        for info in sorted(self.neighbours, key=lambda f: f.key):
            yield f"{info.key}\t{info.size}\t{info.etag}\n"

    def keep(self, key: str, own: bool) -> tuple[tuple[int, int], ...] | None:
        """The half-open ts_event intervals (ms) of `key`'s rows this day holds.

        None: every row (an own file that gives nothing away). A neighbour file
        gives exactly the rows of this day; an own file flushed near an `event`
        midnight keeps all but the adjacent day's rows across it.
        """
        start = midnight_s(self.day) * 1000
        end = start + DAY_MS
        if not own:
            return ((start, end),)
        cuts = []
        if self.previous is EdgeMode.EVENT and near(key, start // 1000):
            cuts.append((start - DAY_MS, start))
        if self.next is EdgeMode.EVENT and near(key, end // 1000):
            cuts.append((end, end + DAY_MS))
        return _complement(cuts) if cuts else None


def _complement(cuts: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The parts of the int64 line outside the sorted, disjoint `cuts`."""
    out, low = [], _ALL[0]
    for lo, hi in sorted(cuts):
        if lo > low:
            out.append((low, lo))
        low = hi
    out.append((low, _ALL[1]))
    return tuple(out)


def fingerprint(files: Iterable[ObjectInfo], edges: Edges | None) -> str:
    """sha256 over the sorted (key, size, etag) of a partition's raw files, and, when
    its edges move rows, their modes and neighbour files: any raw file added,
    removed or rewritten that can change the output changes it. A day whose edges
    are both `flush` keeps the fingerprint versions before 2.0 gave it, so outputs
    made by that rule stay current (docs/guarantees.md "Rows belong to their event day")."""
    digest = hashlib.sha256()
    for info in sorted(files, key=lambda f: f.key):  # ObjectInfo ETags are unquoted
        digest.update(f"{info.key}\t{info.size}\t{info.etag}\n".encode())
    if edges is not None and edges.moves_rows:
        for line in edges.digest_lines():
            digest.update(line.encode())
    return digest.hexdigest()


def settled(day: str, after_listing: Sequence[ObjectInfo], now: datetime) -> bool:
    """Whether rows for `day` can still arrive under the next day's folder.

    Settled when that folder holds a file flushed at or past the horizon of the
    next midnight (the collector has flushed past it, files arrive in flush order),
    or when `SETTLE_GRACE_S` has passed since that midnight (a stream that stopped).
    A late file after that is a late raw file: the lookback recompacts the day.
    """
    midnight = midnight_s(shift(day, 1))
    if now.timestamp() >= midnight + SETTLE_GRACE_S:
        return True
    return any((flush_time(f.key) or 0) >= midnight + HORIZON_S for f in after_listing)


def day_of_ms(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()
