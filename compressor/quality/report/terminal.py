"""--quality-report in a terminal: one row per day, then the watermark, notes, the
worst partitions, every line within 80 columns.

Separate from the JSON document (`json_doc.py`) and the page
(`compressor.quality.html`), which show the same report: the columns, their widths
and the colours are this module's alone (docs/quality.md "Quality report").
`compact_count` and `shown_condition` are here because the page says counts and
conditions the way the terminal does.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from compressor.quality.report.model import DayReport, Problem, QualityReport

#: A terminal, or a phone's SSH app.
LINE_WIDTH = 80


_COLOURS = {"GOOD": "32", "DEGRADED": "33", "BAD": "31", "PARTIAL": "35", "UNKNOWN": "2",
            "problem": "31", "bold": "1"}
#: (header, width, right-aligned) of the day row's columns: with single spaces the first
#: eleven take 66 columns, leaving the windows 14 of 80 (docs/quality.md "Quality report"). The
#: partitions' total is left to JSON: it is ok + fail + quar + run + miss + stale.
_COLUMNS = (("day", 8, False), ("ready", 5, False), ("ok", 4, True), ("fail", 4, True),
            ("quar", 4, True), ("run", 3, True), ("miss", 4, True), ("stale", 5, True),
            ("rows", 5, True), ("chg", 5, True), ("label", 8, False), ("g/d/b/p/m", 14, False))
#: The partition and row columns, which a day without raw data or never compacted
#: replaces by what explains it.
_COUNT_COLUMNS = slice(2, 10)


def compact_count(n: int) -> str:
    """999, 1.2K, 61.2M, 3.00G: at most 5 characters (6 from 1000T on)."""
    if n < 1000:
        return str(n)
    for unit, scale in (("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        value = n / scale
        if value < 999.5 or unit == "T":
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def _change(change: float | None) -> str:
    if change is None:
        return "-"
    pct = change * 100
    if pct >= 999.5:
        return ">999%"
    return f"{pct:+.1f}%" if abs(pct) < 9.95 else f"{pct:+.0f}%"


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending '...' when cut (ASCII: any terminal)."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 3)] + "..." if width >= 3 else text[:width]


def _wrap(text: str, width: int, indent: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=" " * indent,
                         subsequent_indent=" " * (indent + 2), break_on_hyphens=False,
                         break_long_words=True)


def render_text(report: QualityReport, colour: bool = False, width: int = LINE_WIDTH) -> str:
    """The terminal report: one row per day (newest first; its data flags on a line of
    their own below it), the watermark, notes, the worst partitions. Every line fits
    `width` columns (80: a terminal or a phone's SSH app); ANSI colours only when `colour`."""

    def paint(text: str, what: str | None) -> str:
        code = _COLOURS.get(what or "")
        return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text

    header = " ".join(f"{h:>{w}}" if right else f"{h:<{w}}" for h, w, right in _COLUMNS)
    lines = _wrap(f"quality report {report.date_from}..{report.date_to} ({len(report.days)} "
                  f"days, UTC); raw {report.raw_uri}; compact {report.compact_uri}", width, 0)
    lines.append(paint(_fit(header.rstrip(), width), "bold"))
    for d in report.days:
        lines.append(_day_row(d, paint, width))
        if d.flags:
            lines.extend(_wrap("flags: " + ", ".join(f"{k} {v}" for k, v in d.flags.items()),
                               width, 9))
        if d.rows_received or d.rows_given:
            lines.extend(_wrap(f"midnights: {d.rows_received} rows from the days around, "
                               f"{d.rows_given} given to them", width, 9))
    lines.append("")
    for line in _watermark_lines(report):
        lines.extend(_wrap(line.lstrip(), width, len(line) - len(line.lstrip())))
    noted = [d for d in report.days if d.collector.reasons or d.notes]
    if noted:
        lines.append("notes:")
        for d in noted:
            why = "; ".join(x for x in (*d.notes, *d.collector.reasons) if x)
            source = {"stored": "", "scored": " (scored now)"}.get(d.collector.source, "")
            label = d.collector.label or "label n/a"
            lines.extend(_wrap(f"{d.day} {label}{source}: {why}", width, 2))
    lines.extend(_worst_lines(report, paint, width))
    return "\n".join(lines)


def _worst_lines(report: QualityReport, paint: Callable[[str, str | None], str],
                 width: int) -> list[str]:
    """The worst partitions: key and condition, then the reason on the same line when it
    fits, else wrapped on the lines below it (an error message is never cut)."""
    if not report.worst_total:
        return ["worst partitions: none (every partition compacted, current, unflagged)"]
    lines = [f"worst partitions ({len(report.worst)} of {report.worst_total}):"]
    key_width = min(36, max(len(p.key) for p in report.worst))
    for p in report.worst:
        key = f"  {p.key:<{key_width}} "
        condition = f"{shown_condition(p):<13} "
        if len(key + condition + p.reason) <= width:
            lines.append(key + paint(condition, "problem") + p.reason)
            continue
        if len(key + condition) > width:
            lines.append(_fit(key + condition, width).rstrip())
        else:
            lines.append(key + paint(shown_condition(p), "problem"))
        lines.extend(_wrap(p.reason, width, 4))
    return lines


def _day_explained(d: DayReport) -> str | None:
    """What replaces a day's counts when they would mislead, else None."""
    if d.status == "no_raw_data" and not d.total:
        return "no raw data"
    if d.status == "not_compacted":
        older = any("older than the first run" in note for note in d.notes)
        return ("not compacted, older than the first run" if older
                else "not compacted: nothing published")
    return None


def _day_row(d: DayReport, paint: Callable[[str, str | None], str], width: int) -> str:
    """One day, padded cell by cell (colour codes added after padding), cut to `width`."""
    w = d.collector.windows
    windows = ("/".join(str(w[k]) for k in ("good", "degraded", "bad", "partial", "missing"))
               if w else "n/a")
    label = d.collector.label or "n/a"
    p = d.partitions

    def problem(n: int) -> tuple[str, str | None]:
        return str(n), "problem" if n else None

    counts: list[tuple[str, str | None]] = [
        (str(p["success"]), None), problem(p["failed"]),
        problem(p["quarantined"]), problem(p["in_progress"]), problem(d.missing),
        problem(p["stale"]), (compact_count(d.rows), None), (_change(d.rows_change), None)]
    values = [(d.day, None), ("yes" if d.ready else "no", None), *counts, (label, label),
              (windows, None)]
    plain = [f"{v:>{c[1]}}" if c[2] else f"{v:<{c[1]}}"
             for (v, _), c in zip(values, _COLUMNS, strict=True)]
    painted = [paint(text, what) for text, (_, what) in zip(plain, values, strict=True)]
    explained = _day_explained(d)
    if explained is not None:  # the counts give way to what explains them
        room = len(" ".join(plain[_COUNT_COLUMNS]))
        plain[_COUNT_COLUMNS] = [f"{explained:<{room}}"]
        painted[_COUNT_COLUMNS] = [paint(plain[_COUNT_COLUMNS][0], "problem"
                                         if d.status == "not_compacted" else None)]
    if len(" ".join(plain).rstrip()) > width:  # only on extreme values: cut the windows
        plain[-1] = painted[-1] = _fit(plain[-1], max(0, width - len(" ".join(plain[:-1])) - 1))
        if len(" ".join(plain)) > width:
            return _fit(" ".join(plain), width)
    return " ".join(painted).rstrip()


def shown_condition(p: Problem) -> str:
    """The condition as the terminal names it: a published, current partition is listed
    for its data flags ("flagged") or because its raw listing could not be read."""
    if p.condition != "success":
        return p.condition
    return "flagged" if p.reason.startswith("data flags: ") else "unchecked"


def _watermark_lines(report: QualityReport) -> list[str]:
    w = report.watermark
    if w.last_compacted_date is None:
        first = "watermark: no last_compacted_date yet (no day is ready)"
    else:
        behind = ("up to date (yesterday is ready)" if w.days_behind == 0
                  else f"{w.days_behind} day{'s' if w.days_behind != 1 else ''} behind yesterday")
        first = f"watermark: last_compacted_date: {w.last_compacted_date} ({behind})"
    return [first, f"  last moved {w.moved_at or 'unknown (not recorded)'}; state updated "
            f"{w.state_updated_at or '-'}; report read in {report.elapsed_s:.2f} s"]
