"""The --quality-report page: one self-contained, offline HTML file from a QualityReport.

Everything is inline (CSS, one small script, SVG); a Content-Security-Policy of
`default-src 'none'` makes sure the page never fetches anything. It shows:

- the heatmap: one row per exchange/stream/symbol, one column per day (newest on the
  left, so a phone shows the newest days first), each cell coloured by the partition's
  condition and, for a published one, by the label readers select on
  (`day_quality_post`); a black corner marks data flags; the numbers are in each
  cell's tooltip (title). The page's script draws it from a JSON block, so the file
  stays small for thousands of partitions;
- the daily table (the terminal report's rows, with every flag and note);
- an SVG bar chart of published rows per day, coloured by the collector's label;
- the watermark and the worst partitions.

One colour per label everywhere (`LABEL_COLOURS`: day headers, badges, cells, bars),
none of them reused by a condition. On a narrow screen (a 390 px phone) the heatmap and
the tables scroll sideways inside their own boxes with their first column (the
partition, the day) kept in view, and the page itself never scrolls sideways.
"""

from __future__ import annotations

import html
import json
from typing import Any

from compressor.quality.report.json_doc import to_json
from compressor.quality.report.model import CONDITIONS, DayReport, QualityReport
from compressor.quality.report.terminal import compact_count, shown_condition

#: Condition -> (letter in the cell, legend text).
_CONDITION_TEXT = {
    "success": ("", "published, current (colour: its label)"),
    "stale": ("S", "stale: raw listing changed since compaction"),
    "failed": ("F", "failed (retried by the next run)"),
    "quarantined": ("Q", "quarantined (bad raw input)"),
    "in_progress": ("R", "in progress (running, or a killed run)"),
    "not_compacted": ("M", "missing: in raw, not compacted (hatched)"),
    "gone_from_raw": ("G", "missing: compacted, gone from raw"),
}
_LABELS = ("GOOD", "DEGRADED", "BAD", "PARTIAL", "UNKNOWN")
#: Label -> (background, text colour): the one colour of each label on the whole page.
LABEL_COLOURS = {"GOOD": ("#2b8a3e", "#fff"), "DEGRADED": ("#94c973", "#212529"),
                 "BAD": ("#c92a2a", "#fff"), "PARTIAL": ("#74c0fc", "#212529"),
                 "UNKNOWN": ("#adb5bd", "#212529"), "none": ("#adb5bd", "#212529")}
#: Condition -> background of its cell (the letter says which, too); no label's colour.
CONDITION_COLOURS = {"stale": "#0c8599", "failed": "#f08c00", "quarantined": "#5f3dc4",
                     "in_progress": "#1971c2", "gone_from_raw": "#343a40"}
#: What the daily table says in its `ready` column, per day state (report.model.DAY_STATES).
_STATUS_TEXT = {"ready": "yes", "pending": "not yet", "no_raw_data": "no raw data",
                "not_compacted": "not compacted"}

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#212529}
h1{font-size:18px;margin:0 0 4px;overflow-wrap:anywhere}h2{font-size:15px;margin:20px 0 6px}
.meta{color:#495057;overflow-wrap:anywhere}.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-width:100%;-webkit-overflow-scrolling:touch}
table.days,table.worst{border-collapse:collapse}
table.days th,table.days td,table.worst th,table.worst td{border-bottom:1px solid #dee2e6;
padding:2px 6px;vertical-align:top;background:#fff}
table.days th,table.worst th{background:#f1f3f5;text-align:left}
table.days td:first-child,table.days th:first-child{position:sticky;left:0;z-index:1}
table.days td{white-space:nowrap}
table.days td.flags{white-space:normal;min-width:160px}
table.days td.notes{white-space:normal;min-width:320px}
.bad{color:#c92a2a;font-weight:600}.notes{color:#495057;max-width:480px}
.st-not_compacted{color:#c92a2a;font-weight:600}
.badge{display:inline-block;padding:0 5px;border-radius:3px;font-weight:600;font-size:11px}
table.heat{border-collapse:separate;border-spacing:1px}
table.heat th{font-weight:400;font-size:11px;white-space:nowrap;padding:0 4px}
table.heat th.series{text-align:right;font-family:ui-monospace,monospace;position:sticky;left:0;
z-index:1;background:#fff}
table.heat th.day{writing-mode:vertical-rl;transform:rotate(180deg);padding:2px 0;height:48px}
td.cell{width:16px;min-width:16px;height:16px;padding:0;position:relative;text-align:center;
font-size:10px;font-weight:700;line-height:16px;color:#fff;cursor:default}
td.absent{background:#f1f3f5}
.c-not_compacted{background:repeating-linear-gradient(45deg,#ffe066 0 3px,#fff 3px 6px);
color:#212529;outline:1px solid #e67700;outline-offset:-1px}
td.flagged::after{content:"";position:absolute;top:0;right:0;border-top:7px solid #000;
border-left:7px solid transparent}
.legend span.item{white-space:nowrap;margin-right:6px;display:inline-block}
.legend span.absent{background:#f1f3f5;outline:1px solid #dee2e6}
.legend span.cell{display:inline-block;width:14px;height:14px;vertical-align:middle;
position:relative;margin:0 4px 0 10px;font-size:9px;line-height:14px;text-align:center;
color:#fff;font-weight:700}
.legend span.flagged::after{content:"";position:absolute;top:0;right:0;
border-top:7px solid #000;border-left:7px solid transparent}
svg.chart{width:100%;max-width:640px;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#495057}
"""


def _colour_css() -> str:
    """The label and condition colours (LABEL_COLOURS, CONDITION_COLOURS) as rules."""
    rules = []
    for label, (background, text) in LABEL_COLOURS.items():
        rules.append(f".lb-{label},.c-success.l-{label}{{background:{background};color:{text}}}")
    for condition, background in CONDITION_COLOURS.items():
        rules.append(f".c-{condition}{{background:{background}}}")
    return "\n".join(rules)


_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("heat-data").textContent);
  var letters = data.letters, days = data.days, out = [];
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;")
      .replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  out.push('<table class="heat"><thead><tr><th class="series"></th>');
  days.forEach(function (d) {
    out.push('<th class="day" data-day="' + esc(d.day) + '"><span class="badge lb-' +
      esc(d.label || "none") + '" title="' +
      esc(d.title) + '">' + esc(d.day.slice(4, 6) + "-" + d.day.slice(6)) + "</span></th>");
  });
  out.push("</tr></thead><tbody>");
  var drawn = 0;
  data.series.forEach(function (s) {
    out.push('<tr><th class="series">' + esc(s.name) + "</th>");
    var byDay = {};
    s.cells.forEach(function (c) { byDay[c.d] = c; });
    for (var i = 0; i < days.length; i++) {
      var c = byDay[i];
      if (!c) { out.push('<td class="cell absent" title="' + esc(s.name + "/" + days[i].day) +
        ': no partition"></td>'); continue; }
      var tip = [s.name + "/" + days[i].day, c.c.replace(/_/g, " ")];
      if (c.l) tip.push("label " + c.l);
      if (c.r) tip.push(c.r.toLocaleString("en-US") + " rows");
      if (c.n !== null && c.n !== undefined) tip.push(c.n + " raw files");
      if (c.f.length) tip.push("flags: " + c.f.join(", "));
      if (c.m) tip.push(c.m);
      out.push('<td class="cell c-' + c.c + " l-" + esc(c.l || "none") +
        (c.f.length ? " flagged" : "") + '" title="' + esc(tip.join("\\n")) + '">' +
        (letters[c.c] || "") + "</td>");
      drawn++;
    }
    out.push("</tr>");
  });
  out.push("</tbody></table>");
  var box = document.getElementById("heatmap");
  box.innerHTML = out.join("");
  box.setAttribute("data-cells", String(drawn));
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _script_json(doc: Any) -> str:
    """JSON safe inside <script>: no '<' can close the element."""
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")


def _heat_data(report: QualityReport) -> dict[str, Any]:
    days = sorted(report.days, key=lambda d: d.day, reverse=True)  # newest first
    index = {d.day: i for i, d in enumerate(days)}
    series: dict[str, list[dict[str, Any]]] = {}
    for cell in report.cells:
        if cell.day not in index:
            continue
        series.setdefault(cell.series, []).append({
            "d": index[cell.day], "c": cell.condition, "l": cell.label, "r": cell.rows,
            "f": list(cell.flags), "m": cell.reason, "n": cell.raw_files,
        })
    return {
        "letters": {name: letter for name, (letter, _) in _CONDITION_TEXT.items()},
        "days": [{"day": d.day, "label": d.collector.label, "title": _day_title(d)}
                 for d in days],
        "series": [{"name": name, "cells": cells} for name, cells in sorted(series.items())],
    }


def _day_title(d: DayReport) -> str:
    w = d.collector.windows
    windows = (f"windows good {w['good']}, degraded {w['degraded']}, bad {w['bad']}, "
               f"partial {w['partial']}, missing {w['missing']}" if w else "windows n/a")
    return (f"{d.day}: collector {d.collector.label or 'n/a'} ({d.collector.source}); {windows}; "
            f"{_STATUS_TEXT[d.status] if d.status != 'ready' else 'ready'}; {d.rows:,} rows")


def _legend() -> str:
    items = []
    for name in CONDITIONS:
        letter, text = _CONDITION_TEXT[name]
        if name == "success":
            for label in _LABELS:
                items.append(f'<span class="cell c-success l-{label}"></span>published, {label}')
            continue
        items.append(f'<span class="cell c-{name}">{letter}</span>{_e(text)}')
    items.append('<span class="cell c-success l-GOOD flagged"></span>data flags raised '
                 "(black corner)")
    items.append('<span class="cell absent"></span>no partition')
    return ('<p class="legend">' + "".join(f'<span class="item">{i}</span>' for i in items)
            + "</p><p class=\"meta\">Columns: days, newest on the left; the day's header is "
            "coloured by the collector's label. Hover a cell for its numbers.</p>")


def _days_table(report: QualityReport) -> str:
    head = ("<tr><th>day</th><th>ready</th><th>collector</th><th>windows g/d/b/p/m</th>"
            "<th>partitions</th><th>ok</th><th>failed</th><th>quar.</th><th>running</th>"
            "<th>missing</th><th>stale</th><th>rows</th><th>Δ rows</th><th>flags</th>"
            "<th>notes</th></tr>")
    rows = []
    for d in report.days:
        w = d.collector.windows
        windows = ("/".join(str(w[k]) for k in ("good", "degraded", "bad", "partial",
                                                "missing")) if w else "n/a")
        p = d.partitions
        label = d.collector.label or "none"

        def n(value: int) -> str:
            return f'<td class="num{" bad" if value else ""}">{value}</td>'

        flags = ", ".join(f"{_e(k)} {v}" for k, v in d.flags.items()) or "-"
        notes = "; ".join(_e(x) for x in (*d.collector.reasons, *d.notes)) or ""
        ready = _STATUS_TEXT[d.status]
        rows.append(
            f'<tr data-day="{d.day}"><td>{d.day}</td>'
            f'<td class="st-{d.status}">{ready}</td>'
            f'<td><span class="badge lb-{_e(label)}" title="{_e(d.collector.source)}">'
            f"{_e(d.collector.label or 'n/a')}</span></td><td>{windows}</td>"
            f'<td class="num">{d.total}</td><td class="num">{p["success"]}</td>'
            f"{n(p['failed'])}{n(p['quarantined'])}{n(p['in_progress'])}{n(d.missing)}"
            f"{n(p['stale'])}"
            f'<td class="num" title="{d.rows:,}">{compact_count(d.rows)}</td>'
            f'<td class="num">{_change_text(d)}</td>'
            f'<td class="flags">{flags}</td><td class="notes">{notes}</td></tr>')
    return f'<div class="scroll"><table class="days">{head}{"".join(rows)}</table></div>'


def _change_text(d: DayReport) -> str:
    """Δ rows: a day with nothing published says why instead of a -100 % change."""
    change = d.rows_change
    if change is not None:
        return f"{change * 100:+.1f}%"
    if d.has_raw_data and not d.state_labels:
        return "not compacted"
    return "-"


def _rows_chart(report: QualityReport) -> str:
    days = sorted(report.days, key=lambda d: d.day)
    width, height, left, bottom = 640, 170, 56, 22
    top = max((d.rows for d in days), default=0) or 1
    step = (width - left - 8) / max(1, len(days))
    bar = max(1.0, step * 0.8)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="rows per day">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 4}" y2="{height - bottom}"'
             ' stroke="#868e96"/>',
             f'<text x="{left - 4}" y="14" text-anchor="end">{compact_count(top)}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>']
    every = max(1, len(days) // 7)
    for i, d in enumerate(days):
        h = (height - bottom - 10) * d.rows / top
        x = left + i * step + (step - bar) / 2
        change = d.rows_change
        tip = (f"{d.day}: {d.rows:,} rows"
               + ("" if change is None else f" ({change * 100:+.1f}% on the day before)")
               + f"; collector {d.collector.label or 'n/a'}"
               + ("" if d.has_raw_data else "; no raw data"))
        fill = LABEL_COLOURS.get(d.collector.label or "none", LABEL_COLOURS["none"])[0]
        parts.append(f'<rect class="bar" data-label="{_e(d.collector.label or "none")}" '
                     f'x="{x:.1f}" y="{height - bottom - h:.1f}" '
                     f'width="{bar:.1f}" height="{max(h, 0.5):.1f}" fill="{fill}">'
                     f"<title>{_e(tip)}</title></rect>")
        if i % every == 0 or i == len(days) - 1:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                         f"{d.day[4:6]}-{d.day[6:]}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _worst_table(report: QualityReport) -> str:
    if not report.worst:
        return "<p>None: every partition compacted, current and without flags.</p>"
    rows = "".join(f"<tr><td>{_e(p.key)}</td><td>{_e(shown_condition(p).replace('_', ' '))}</td>"
                   f"<td>{_e(p.reason)}</td></tr>" for p in report.worst)
    return (f"<p>{len(report.worst)} of {report.worst_total}, worst first.</p>"
            f'<div class="scroll"><table class="worst"><tr><th>partition</th><th>condition</th>'
            f"<th>reason</th></tr>{rows}</table></div>")


def render_html(report: QualityReport) -> str:
    """The whole page as one string (UTF-8 when written)."""
    doc = to_json(report)
    w = report.watermark
    watermark = (f"last_compacted_date <b>{_e(w.last_compacted_date or 'none')}</b>"
                 + (f" ({w.days_behind} days behind yesterday)" if w.days_behind else "")
                 + f", last moved {_e(w.moved_at or 'unknown')}; state updated "
                 f"{_e(w.state_updated_at or '-')}")
    title = f"quantlab-compact quality report {report.date_from}..{report.date_to}"
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}{_colour_css()}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(report.days)} days (UTC), generated {_e(report.generated_at)}; '
        f"raw {_e(report.raw_uri)}, compact {_e(report.compact_uri)}; primary exchange "
        f"{_e(report.primary_exchange)}; rules {_e(doc['rules_version'])}</p>",
        f'<p class="meta">{watermark}</p>',
        "<h2>Partitions by day</h2>", _legend(),
        '<div id="heatmap" class="scroll" data-cells="0"><noscript>The heatmap needs '
        "JavaScript; the daily table below has the same counts.</noscript></div>",
        "<h2>Days</h2>", _days_table(report),
        "<h2>Published rows per day</h2>", _rows_chart(report),
        "<h2>Worst partitions</h2>", _worst_table(report),
        f'<script type="application/json" id="heat-data">{_script_json(_heat_data(report))}'
        "</script>",
        f"<script>{_SCRIPT}</script></body></html>\n",
    ])
