"""--quality-report: what the stores say about a range of days, read once, shown three ways.

Four concepts, one module each, importing downward only (`tests/test_import_direction.py`):

- `model`: the days a report covers (`report_days`) and the typed report
  (`QualityReport`, `DayReport`, `Cell`, ...), with the partition conditions and the
  day states it distinguishes;
- `partitions` and `gather`: every read the report makes (read-only:
  no verdict saved, no lease, no write of any kind), `gather` building the report;
- `terminal`: the 80-column text; `json_doc`: the `--json` document.

The offline page is `compressor.quality.html`, a renderer beside these: like them it
reads the model, never a store (docs/quality.md "Quality report"). Callers import
from `compressor.quality.report`.
"""

from compressor.quality.report.gather import DEFAULT_WORKERS, WORST_LIMIT, gather
from compressor.quality.report.json_doc import REPORT_VERSION, render_json, to_json
from compressor.quality.report.model import (
    CONDITIONS,
    DAY_STATES,
    DEFAULT_DAYS,
    MAX_DAYS,
    Cell,
    Collector,
    DayReport,
    Problem,
    QualityReport,
    Watermark,
    report_days,
)
from compressor.quality.report.terminal import (
    LINE_WIDTH,
    compact_count,
    render_text,
    shown_condition,
)

__all__ = [
    "CONDITIONS",
    "DAY_STATES",
    "DEFAULT_DAYS",
    "DEFAULT_WORKERS",
    "LINE_WIDTH",
    "MAX_DAYS",
    "REPORT_VERSION",
    "WORST_LIMIT",
    "Cell",
    "Collector",
    "DayReport",
    "Problem",
    "QualityReport",
    "Watermark",
    "compact_count",
    "gather",
    "render_json",
    "render_text",
    "report_days",
    "shown_condition",
    "to_json",
]
