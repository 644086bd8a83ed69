"""--quality-report --json: the report as one JSON document.

Separate from the terminal rendering because it is a contract: scripts read it, so
its fields (docs/quality.md "Quality report" documents every one) change only with
`REPORT_VERSION`, whatever the terminal's columns do. The HTML page embeds it.
"""

from __future__ import annotations

import json
from typing import Any

from compressor.labels import RULES_VERSION
from compressor.quality.report.model import DayReport, QualityReport

#: Bumped when a field of the document changes meaning or goes away.
REPORT_VERSION = 1


def to_json(report: QualityReport) -> dict[str, Any]:
    """The document `--json` prints (docs/quality.md "Quality report" documents every field)."""
    return {
        "report_version": REPORT_VERSION,
        "generated_at": report.generated_at,
        "today": report.today,
        "range": {"from": report.date_from, "to": report.date_to, "days": len(report.days)},
        "stores": {"raw": report.raw_uri, "compact": report.compact_uri},
        "primary_exchange": report.primary_exchange,
        "rules_version": RULES_VERSION,
        "watermark": {
            "last_compacted_date": report.watermark.last_compacted_date,
            "moved_at": report.watermark.moved_at,
            "state_updated_at": report.watermark.state_updated_at,
            "days_behind": report.watermark.days_behind,
        },
        "days": [_day_json(d) for d in report.days],
        "worst": [{"partition": p.key, "day": p.key[-8:], "condition": p.condition,
                   "reason": p.reason, "flags": list(p.flags)} for p in report.worst],
        "worst_total": report.worst_total,
        "elapsed_s": report.elapsed_s,
    }


def _day_json(d: DayReport) -> dict[str, Any]:
    change = d.rows_change
    return {
        "day": d.day,
        "status": d.status,
        "ready": d.ready,
        "has_raw_data": d.has_raw_data,
        "collector": {
            "label": d.collector.label,
            "source": d.collector.source,
            "windows": d.collector.windows,
            "reasons": list(d.collector.reasons),
            "scored_at": d.collector.scored_at,
            "rules_version": d.collector.rules_version,
        },
        "partitions": {"total": d.total, **d.partitions, "missing": d.missing},
        "rows": d.rows,
        "rows_previous": d.rows_previous,
        "rows_change": None if change is None else round(change, 6),
        "rows_received": d.rows_received,
        "rows_given": d.rows_given,
        "flags": d.flags,
        "state_labels": d.state_labels,
        "notes": list(d.notes),
    }


def render_json(report: QualityReport) -> str:
    return json.dumps(to_json(report), indent=1)
