"""--quality-report (compressor/quality/report/, html.py) on lakes built by the job itself.

The main lake (`lake`, built once per module) holds, over the 7 days before TODAY:

| day      | collector windows          | partitions                                              |
|----------|----------------------------|---------------------------------------------------------|
| 20261124 | none                       | no raw data (after last_compacted_date: not ready)      |
| 20261123 | all GOOD -> GOOD           | 2 success, 1 stale (a raw file added), 1 not compacted  |
| 20261122 | 5 BAD windows -> BAD       | 1 success, 1 quarantined (corrupt), 1 failed (injected) |
| 20261121 | 30 missing -> PARTIAL      | 2 success, 1 gone from raw (its files deleted)          |
| 20261120 | none -> UNKNOWN            | 2 success, 1 stale (the next day's files are gone)      |
| 20261119 | none                       | no raw data, last_compacted_date passed it (grace)      |
| 20261118 | none                       | nothing at all, before the first run                    |

The report must show each of them, in text, JSON and HTML (the page opened in
Debian's headless chromium), and change nothing in either store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pytest

from compressor.cli import main
from compressor.demo import EXCHANGES, PartitionSpec, write_quality_windows
from compressor.discovery import list_partition
from compressor.job import Job
from compressor.layout import STATE_KEY, PartitionId
from compressor.lease import LeaseManager
from compressor.partition.compact import CompactSettings
from compressor.planning import Mode, PlanOptions, build_plan
from compressor.quality.html import CONDITION_COLOURS, LABEL_COLOURS, render_html
from compressor.quality.report import (
    CONDITIONS,
    Cell,
    Collector,
    DayReport,
    Problem,
    QualityReport,
    Watermark,
    gather,
    render_text,
    report_days,
)
from compressor.quality.verdicts import DayVerdicts
from compressor.state import StateStore
from compressor.storage import LocalStore, Store, TransientStoreError
from tests.conftest import (
    FlakyLocalStore,
    make_s3_store,
    put_partition,
    require_tool,
    store_listing,
)
from tests.support.s3proxy import S3Proxy

TODAY = "20261125"
DAYS = ("20261124", "20261123", "20261122", "20261121", "20261120", "20261119", "20261118")
SERIES = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"), ("bybit", "trade", "btcusdt"))
RAW_DAYS = ("20261120", "20261121", "20261122", "20261123")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pid(series: tuple[str, str, str], day: str) -> PartitionId:
    return PartitionId(*series, day)


def clean_windows(k: int) -> dict[str, Any]:
    """Overrides making window k GOOD under every rule (the generator's defaults roll some
    DEGRADED/BAD windows)."""
    return {"quality": "GOOD", "signals": {
        "dropped_events": 0, "queue_pct_peak": 10.0, "reconnects": 0,
        "drain_mode_accelerated_seconds": 0.0,
        "offline_seconds_by_exchange": {ex: 0.0 for ex in EXCHANGES}}}


def write_windows(root: Path, day: str, kind: str) -> None:
    """GOOD: 96 clean windows; BAD: 5 of them BAD with drops; PARTIAL: 30 missing."""
    overrides = {k: clean_windows(k) for k in range(96)}
    missing: list[int] = []
    if kind == "BAD":
        for k in range(5):
            overrides[k] = {"quality": "BAD", "signals": {
                **clean_windows(k)["signals"], "dropped_events": 5}}
    elif kind == "PARTIAL":
        missing = list(range(30))
    write_quality_windows(root, day, missing=missing, overrides=overrides)


def run_job(raw: Store, compact: Store, today: date, work: Path) -> None:
    """One catch-up run in-process, as the CLI does it (verdicts stored, labels set)."""
    state = StateStore(compact)
    plan = build_plan(raw, compact, state, PlanOptions(mode=Mode.CATCH_UP, today=today))
    verdicts = DayVerdicts(raw, compact, clock=time.time)
    leases = LeaseManager(compact, auto_renew=False)
    Job(plan, raw, compact, state, CompactSettings(tmp_root=work, download_workers=2), leases,
        sleep=lambda s: None, labels=verdicts.label).run()


@dataclass
class Lake:
    root: Path
    raw: LocalStore
    compact: LocalStore

    def cli(self, *extra: str) -> list[str]:
        return ["--quality-report", "--raw", str(self.root / "raw"), "--compact",
                str(self.root / "compact"), "--today", TODAY, "--days", "7", *extra]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    root = tmp_path_factory.mktemp("lake")
    for name in ("raw", "compact", "scratch"):
        (root / name).mkdir()
    raw = FlakyLocalStore(root / "raw")
    compact = LocalStore(root / "compact")
    for d, day in enumerate(RAW_DAYS):
        for n, series in enumerate(SERIES):
            corrupt = 1 if (day, n) == ("20261122", 1) else 0
            spec = PartitionSpec(*series, date=day, files=3, rows_per_file=40 + 10 * d,
                                 seed=10 * d + n, corrupt=corrupt)
            put_partition(raw, spec, root / "scratch")
    write_windows(root / "raw", "20261123", "GOOD")
    write_windows(root / "raw", "20261122", "BAD")
    write_windows(root / "raw", "20261121", "PARTIAL")
    state = StateStore(compact)
    state.advance_last_compacted("20261118")
    state.flush()
    raw.fail("get_file", pid(SERIES[2], "20261122").prefix,
             TransientStoreError("injected: retries ran out"))
    run_job(raw, compact, date(2026, 11, 25), root / "work")
    raw.clear()
    # after the run: a late raw file (stale), a new partition (not compacted), a partition
    # whose raw files are gone
    stale = list_partition(raw, pid(SERIES[0], "20261123"))
    raw.put_bytes(stale.files[-1].key.replace(".parquet", "9.parquet"),
                  raw.get_bytes(stale.files[-1].key)[0])
    put_partition(raw, PartitionSpec("okx", "trade", "solusdt", date="20261123", files=2,
                                     rows_per_file=30), root / "scratch")
    for info in list_partition(raw, pid(SERIES[1], "20261121")).files:
        raw.delete(info.key)
    shutil.rmtree(root / "scratch")
    return Lake(root, LocalStore(root / "raw"), compact)


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under root: path -> (size, mtime_ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- JSON


def test_json_days_show_every_condition(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, lake.cli("--json"))
    assert code == 0
    doc = json.loads(out)
    days = {d["day"]: d for d in doc["days"]}
    assert [d["day"] for d in doc["days"]] == list(DAYS)  # newest first
    assert doc["range"] == {"from": "20261118", "to": "20261124", "days": 7}
    assert doc["watermark"]["last_compacted_date"] == "20261121"  # the failed day holds it
    assert doc["watermark"]["days_behind"] == 3
    assert doc["watermark"]["moved_at"] is not None

    def parts(day: str) -> dict[str, int]:
        counts: dict[str, int] = days[day]["partitions"]
        return {k: v for k, v in counts.items() if v and k != "total"}

    assert parts("20261123") == {"success": 2, "stale": 1, "not_compacted": 1, "missing": 1}
    assert parts("20261122") == {"success": 1, "quarantined": 1, "failed": 1}
    assert parts("20261121") == {"success": 2, "gone_from_raw": 1, "missing": 1}
    # the partition whose next day's files are gone: its next midnight moves no row now,
    # so the job would compact it again (docs/guarantees.md "Rows belong to their event day")
    assert parts("20261120") == {"success": 2, "stale": 1}
    for day in ("20261124", "20261119", "20261118"):
        assert parts(day) == {}
        assert days[day]["has_raw_data"] is False
        assert days[day]["ready"] is False  # never ready without raw data
        assert "no raw data" in days[day]["notes"]
    assert days["20261119"]["day"] <= doc["watermark"]["last_compacted_date"]  # yet not ready

    labels = {day: (d["collector"]["label"], d["collector"]["source"]) for day, d in days.items()}
    assert labels["20261123"] == ("GOOD", "stored")
    assert labels["20261122"] == ("BAD", "stored")
    assert labels["20261121"] == ("PARTIAL", "scored")  # not final: scored again, in memory
    assert labels["20261120"] == ("UNKNOWN", "scored")
    assert days["20261121"]["collector"]["windows"]["missing"] == 30
    assert days["20261122"]["collector"]["windows"]["bad"] == 5
    assert [d["ready"] for d in doc["days"]] == [False, False, False, True, True, False, False]

    assert days["20261123"]["state_labels"] == {"GOOD": 3}  # the stale one is still published
    assert days["20261121"]["state_labels"] == {"PARTIAL": 3}  # gone from raw: still published
    assert days["20261121"]["rows"] > 0 and days["20261121"]["rows_previous"] > 0
    assert days["20261121"]["rows_change"] == pytest.approx(
        days["20261121"]["rows"] / days["20261121"]["rows_previous"] - 1, abs=1e-6)
    state = json.loads(lake.compact.get_bytes(STATE_KEY)[0])
    for day in RAW_DAYS:  # flags: partitions raising each, from the state entries
        expected: Counter[str] = Counter()
        for key, entry in state["partitions"].items():
            if key.endswith(day) and entry["status"] == "success":
                expected.update(entry.get("quality", {}).get("flags", []))
        assert days[day]["flags"] == dict(expected)

    worst = doc["worst"]
    assert [w["condition"] for w in worst[:6]] == [
        "quarantined", "failed", "not_compacted", "stale", "stale", "gone_from_raw"]
    assert worst[0]["partition"] == pid(SERIES[1], "20261122").state_key
    assert "injected" in worst[1]["reason"]
    assert "raw listing changed" in worst[3]["reason"]
    assert doc["worst_total"] >= 5


# --------------------------------------------------------------------------- text


def test_text_rows_fit_and_have_no_colour_off_a_tty(
    lake: Lake, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, lake.cli())
    assert code == 0
    assert "\x1b" not in out  # capsys is not a tty
    lines = out.rstrip("\n").splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    rows = {line[:8]: line for line in lines if line[:8] in DAYS}
    assert list(rows) == list(DAYS)  # one row per day, newest first
    # day ready ok fail quar run miss stale rows chg label g/d/b/p/m
    cols = rows["20261123"].split()
    assert cols[1:8] == ["no", "2", "0", "0", "0", "1", "1"]
    assert cols[10:12] == ["GOOD", "96/0/0/0/0"]
    cols = rows["20261122"].split()
    assert cols[1:8] == ["no", "1", "1", "1", "0", "0", "0"] and cols[10] == "BAD"
    cols = rows["20261121"].split()
    assert cols[1:8] == ["yes", "2", "0", "0", "0", "1", "0"]
    assert cols[10] == "PARTIAL" and cols[11].endswith("/30")
    for day in ("20261124", "20261119", "20261118"):
        assert rows[day].split()[1:5] == ["no", "no", "raw", "data"]
    doc = json.loads(run_cli(capsys, lake.cli("--json"))[1])
    for day in doc["days"]:  # a day's data flags on the line below its row, if any
        below = lines[lines.index(rows[day["day"]]) + 1]
        assert below.startswith("         flags: ") == bool(day["flags"]), below
    assert any(line.startswith("watermark: last_compacted_date: 20261121 (3 days behind")
               for line in lines)
    worst: list[str] = []  # one entry per partition: a reason too long goes below it
    for line in lines[next(i for i, x in enumerate(lines) if x.startswith("worst")) + 1:]:
        if line.startswith("    "):
            worst[-1] += " " + line.strip()
        else:
            worst.append(line)
    assert worst[0].split()[:2] == [pid(SERIES[1], "20261122").state_key, "quarantined"]
    assert worst[1].split()[1] == "failed" and "injected: retries ran out" in worst[1]


def test_text_width_on_extreme_values() -> None:
    """Long keys and store names, many flags, huge counts: every line <= 80 columns,
    with or without colour (colour codes take no column)."""
    flags = {f"flag_number_{i}": 1000 + i for i in range(12)}
    counts = {name: 9999 for name in CONDITIONS}
    windows = {"good": 96, "degraded": 96, "bad": 96, "partial": 96, "missing": 96,
               "malformed": 5, "expected": 96}
    day = DayReport("20261124", False, True, Collector("DEGRADED", "stored", windows,
                                                       ("x" * 300,)),
                    counts, 123_456_789_012_345, 1, flags, {"GOOD": 1}, ("y" * 200,))
    long_key = "exchange-with-a-long-name/stream_x/" + "s" * 60 + "/20261124"
    report = QualityReport(
        "2026-11-25T00:00:00.000Z", TODAY, "20261124", "20261124", "s3://" + "r" * 120,
        "s3://" + "c" * 120, "binance", Watermark("20261001", None, None, 54),
        [day, replace(day, has_raw_data=False, partitions=dict.fromkeys(CONDITIONS, 0))],
        [Problem(long_key, "quarantined", "z" * 500), Problem("a/b/c/20261124", "success",
                                                              "data flags: " + "q" * 300)],
        2, [Cell(long_key, "quarantined")])
    for colour in (False, True):
        text = render_text(report, colour=colour)
        assert ("\x1b[" in text) is colour
        for line in text.splitlines():
            assert len(ANSI.sub("", line)) <= 80, line


# --------------------------------------------------------------------------- HTML


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True)


def test_html_page_renders_the_heatmap_in_chromium(
    lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("chromium")
    page = tmp_path / "report.html"
    code, out, _ = run_cli(capsys, lake.cli("--html", str(page)))
    assert code == 0 and out.startswith("quality report")
    html = page.read_text()
    assert "default-src 'none'" in html  # no fetch of anything, by policy
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # and nothing to fetch
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    # drawn by the page's own script: 4 series x 7 days, 13 of them with a partition
    heatmap = dom[dom.index('<div id="heatmap"'):]
    heatmap = heatmap[:heatmap.index("</table>")]
    cells = re.findall(r'<td class="cell ([^"]*)"', heatmap)
    assert len(cells) == 4 * 7
    kinds = Counter(c.split()[0] for c in cells)
    assert kinds == {"absent": 15, "c-success": 7, "c-stale": 2, "c-not_compacted": 1,
                     "c-quarantined": 1, "c-failed": 1, "c-gone_from_raw": 1}
    assert 'data-cells="13"' in dom
    assert any("l-GOOD" in c for c in cells) and any("l-BAD" in c for c in cells)
    for label in ("GOOD", "BAD", "PARTIAL", "UNKNOWN"):
        assert f'class="badge lb-{label}"' in dom  # day headers and the daily table
    assert dom.count('class="bar"') == 7  # the rows chart
    shot = tmp_path / "report.png"
    chromium("--window-size=1280,1000", f"--screenshot={shot}", page.as_uri(),
             profile=tmp_path / "profile2")
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("QLC_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


#: Appended to a copy of the page (its CSP allows inline scripts): measures the layout in
#: a 390 px frame, then scrolls every scroll box to its right end and measures again.
PROBE = """<script>(function () {
  function box(el) { var r = el.getBoundingClientRect(); return [r.left, r.right]; }
  function bg(sel) { var s = getComputedStyle(document.querySelector(sel));
    return s.backgroundImage !== "none" ? "image" : s.backgroundColor; }
  var heads = document.querySelectorAll("#heatmap th.day");
  var out = {inner: window.innerWidth, page: document.documentElement.scrollWidth,
    heads: Array.prototype.map.call(heads, function (h) { return h.getAttribute("data-day"); }),
    newest: box(heads[0]), day: box(document.querySelector("table.days td")),
    series: box(document.querySelector("#heatmap tbody th")),
    badBadge: bg(".badge.lb-BAD"), badCell: bg("td.c-success.l-BAD"),
    badBar: document.querySelector("rect.bar[data-label=BAD]") ?
      getComputedStyle(document.querySelector("rect.bar[data-label=BAD]")).fill : null,
    missing: bg("td.c-not_compacted"), body: bg("body")};
  document.querySelectorAll(".scroll").forEach(function (el) { el.scrollLeft = 1e6; });
  out.dayScrolled = box(document.querySelector("table.days td"));
  out.seriesScrolled = box(document.querySelector("#heatmap tbody th"));
  parent.postMessage(JSON.stringify(out), "*");
})();</script>"""


def phone_layout(page: Path, tmp_path: Path) -> dict[str, Any]:
    """The page in a 390 px wide frame (headless chromium's window is at least 500 px
    wide, a frame is not), measured by PROBE."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    host = tmp_path / "host.html"
    host.write_text(
        '<!DOCTYPE html><html><body style="margin:0"><iframe src="probed.html" width="390" '
        'height="2000" style="border:0"></iframe><script>window.addEventListener("message", '
        'function (e) { var p = document.createElement("pre"); p.id = "probe"; '
        "p.textContent = e.data; document.body.appendChild(p); });</script></body></html>")
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", host.as_uri(),
                   profile=tmp_path / "profile-phone").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result: dict[str, Any] = json.loads(html_unescape(found.group(1)))
    return result


def test_html_on_a_phone_shows_the_newest_days_and_one_colour_per_label(
    lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    assert run_cli(capsys, lake.cli("--html", str(page)))[0] == 0
    got = phone_layout(page, tmp_path)
    inner = got["inner"]
    assert inner == 390
    assert got["page"] <= inner  # the page never scrolls sideways: its boxes do
    assert got["heads"] == sorted(got["heads"], reverse=True) and got["heads"][0] == DAYS[0]
    assert 0 <= got["newest"][0] and got["newest"][1] <= inner  # newest day in view
    for name in ("day", "series", "dayScrolled", "seriesScrolled"):  # first columns stay
        assert 0 <= got[name][0] and got[name][1] <= inner, (name, got[name])
    assert got["badBadge"] == got["badCell"]  # BAD is one colour in headers and cells
    assert got["badBar"] == got["badBadge"]  # and in the rows chart
    assert got["missing"] not in (got["body"], "rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")
    labels = {background for background, _ in LABEL_COLOURS.values()}
    assert not labels & set(CONDITION_COLOURS.values())  # no condition looks like a label


def test_html_flag_markers_and_tooltips(lake: Lake) -> None:
    report = gather(lake.raw, lake.compact, report_days(date(2026, 11, 25), 7, None, None),
                    today=TODAY)
    flagged = [c for c in report.cells if c.flags]
    page = render_html(report)
    data = json.loads(re.search(r'id="heat-data">(.*?)</script>', page, re.S)
                      .group(1))  # type: ignore[union-attr]
    drawn = [c for s in data["series"] for c in s["cells"]]
    assert len(drawn) == len(report.cells) == 13
    assert sum(1 for c in drawn if c["f"]) == len(flagged)
    assert "flagged" in page  # the marker's CSS and legend


# --------------------------------------------------------------------------- read-only


def test_the_report_changes_nothing(lake: Lake, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = (store_listing(lake.raw), store_listing(lake.compact), tree(lake.root))
    for extra in ((), ("--json",), ("--html", str(tmp_path / "r.html"))):
        assert run_cli(capsys, lake.cli(*extra))[0] == 0
    assert (store_listing(lake.raw), store_listing(lake.compact), tree(lake.root)) == before
    # days scored in memory were not saved
    assert lake.compact.head("compacted/quality/date=20261121.json") is not None  # by the job
    assert lake.compact.head("compacted/quality/date=20261124.json") is None


@dataclass
class S3Lake:
    proxy: S3Proxy
    raw: Store
    compact: Store
    partitions: int


@pytest.fixture
def s3_lake(moto_server: str, s3proxy: S3Proxy, bucket_factory: Any,
            tmp_path: Path) -> Iterator[S3Lake]:
    """3 days x 4 partitions on moto, compacted by the job, every day GOOD (stored)."""
    raw_bucket, compact_bucket = bucket_factory(), bucket_factory()
    raw = make_s3_store(moto_server, raw_bucket)
    compact = make_s3_store(moto_server, compact_bucket)
    series = [*SERIES, ("okx", "trade", "solusdt")]
    days = ("20261122", "20261123", "20261124")
    for day in days:
        for n, s in enumerate(series):
            put_partition(raw, PartitionSpec(*s, date=day, files=2, rows_per_file=20, seed=n),
                          tmp_path / "gen")
        local = tmp_path / "windows"
        write_windows(local, day, "GOOD")
        for path in sorted((local / f"quality/date={day}").iterdir()):
            raw.put_file(f"quality/date={day}/{path.name}", path)
    state = StateStore(compact)
    state.advance_last_compacted("20261121")
    state.flush()
    run_job(raw, compact, date(2026, 11, 25), tmp_path / "work")
    yield S3Lake(s3proxy, make_s3_store(s3proxy.endpoint, raw_bucket),
                 make_s3_store(s3proxy.endpoint, compact_bucket), len(series) * len(days))


def test_over_s3_only_reads_and_counts_its_requests(s3_lake: S3Lake) -> None:
    before = (store_listing(s3_lake.raw), store_listing(s3_lake.compact))
    s3_lake.proxy.reset_counts()
    started = time.monotonic()
    report = gather(s3_lake.raw, s3_lake.compact, ["20261124", "20261123", "20261122"],
                    today=TODAY)
    seconds = time.monotonic() - started
    counts = s3_lake.proxy.counts()
    # one state GET + one verdict GET per day; the walk: root, 3 exchanges, 4 streams
    # (binance/trade, okx/bbo, okx/trade, bybit/trade), 4 symbols; three LISTs per
    # partition: its own folder and the days around (listed as the job lists them)
    assert counts == {"GET": 1 + 3, "LIST_DELIM": 1 + 3 + 4 + 4, "LIST": 12 * 3}, counts
    assert [d.collector.source for d in report.days] == ["stored"] * 3
    assert all(d.partitions["success"] == 4 for d in report.days)
    print(f"\ns3: {sum(counts.values())} requests {counts} in {seconds:.3f} s")
    s3_lake.proxy.reset_counts()
    assert (store_listing(s3_lake.raw), store_listing(s3_lake.compact)) == before


# --------------------------------------------------------------------------- flags and days


@pytest.mark.parametrize(("argv", "flag"), [
    (["--days", "3", "--date-from", "20261120"], "--days"),
    (["--date-to", "20261120"], "--date-to"),
    (["--date-from", "20261122", "--date-to", "20261120"], "--date-to"),
    (["--date-from", "20261126"], "--date-from"),
    (["--date-from", "2026-11-20"], "--date-from"),
    (["--days", "0"], "--days"),
    (["--days", "x"], "--days"),
    (["--html", "/nonexistent-dir/r.html"], "--html"),
])
def test_bad_flags_are_one_line_usage_errors(
    argv: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "compact").mkdir()
    code, out, err = run_cli(capsys, ["--quality-report", "--raw", str(tmp_path / "raw"),
                                      "--compact", str(tmp_path / "compact"),
                                      "--today", TODAY, *argv])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and flag in err, err


def test_days_asked_for() -> None:
    today = date(2026, 11, 25)
    assert report_days(today, None, None, None) == [
        f"202611{d:02d}" for d in range(24, 10, -1)]  # 14 days before today
    assert report_days(today, 2, None, None) == ["20261124", "20261123"]
    assert report_days(today, None, "20261120", "20261122") == [
        "20261122", "20261121", "20261120"]
    assert report_days(today, None, "20261125", None) == ["20261125"]  # today: allowed


def test_date_range_through_the_cli(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in lake.cli("--json") if a not in ("--days", "7")]
    code, out, _ = run_cli(capsys, [*argv, "--date-from", "20261121", "--date-to", "20261122"])
    assert code == 0
    assert [d["day"] for d in json.loads(out)["days"]] == ["20261122", "20261121"]


# --------------------------------------------------------------------------- consumers


def test_consumer_selection_of_good_days(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Readers select `status == "success" and day_quality_post == "GOOD"` from the state:
    after a real run (cli.main) they get exactly the partitions of the GOOD day."""
    raw, compact = tmp_path / "raw", tmp_path / "compact"
    raw.mkdir()
    compact.mkdir()
    store = LocalStore(raw)
    good, bad = "20261123", "20261124"
    for day in (good, bad):
        for n, s in enumerate(SERIES):
            put_partition(store, PartitionSpec(*s, date=day, files=2, rows_per_file=30, seed=n),
                          tmp_path / "gen")
    write_windows(raw, good, "GOOD")
    write_windows(raw, bad, "BAD")
    base = ["--raw", str(raw), "--compact", str(compact), "--today", TODAY,
            "--tmp-dir", str(tmp_path / "tmp")]
    assert main([*base, "--mode", "backfill", "--date-from", good, "--date-to", bad]) == 0
    capsys.readouterr()
    state = json.loads((compact / STATE_KEY).read_bytes())
    selected = {key for key, e in state["partitions"].items()
                if e["status"] == "success" and e["day_quality_post"] == "GOOD"}
    assert selected == {pid(s, good).state_key for s in SERIES}
    assert {e["day_quality_post"] for k, e in state["partitions"].items()
            if k.endswith(bad)} == {"BAD"}
    code, out, _ = run_cli(capsys, [*base, "--quality-report", "--json", "--days", "2"])
    days = {d["day"]: d for d in json.loads(out)["days"]}
    assert days[good]["collector"]["label"] == "GOOD"
    assert days[bad]["collector"]["label"] == "BAD"
    assert days[good]["state_labels"] == {"GOOD": 3}


# --------------------------------------------------------------------------- fallbacks


class StateWithoutFingerprints(LocalStore):
    """The lake's compact store as an older version left it: no source_fingerprint in the
    state entries (read-only: the change is made on the way out)."""

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        data, etag = super().get_bytes(key)
        if key == STATE_KEY:
            doc = json.loads(data)
            for entry in doc["partitions"].values():
                entry.pop("source_fingerprint", None)
            data = json.dumps(doc).encode()
        return data, etag


def conditions(report: QualityReport) -> dict[str, str]:
    return {c.key: c.condition for c in report.cells}


def test_meta_json_fingerprint_is_the_fallback(lake: Lake) -> None:
    days = report_days(date(2026, 11, 25), 7, None, None)
    usual = gather(lake.raw, lake.compact, days, today=TODAY)
    older = gather(lake.raw, StateWithoutFingerprints(lake.root / "compact"), days,
                   today=TODAY)
    assert conditions(older) == conditions(usual)
    assert conditions(usual)[pid(SERIES[0], "20261123").state_key] == "stale"


def test_an_unlistable_partition_is_named_not_guessed(lake: Lake) -> None:
    raw = FlakyLocalStore(lake.root / "raw")
    bad = pid(SERIES[2], "20261123")
    raw.fail("list_objects", bad.prefix, TransientStoreError("SlowDown after retries"))
    report = gather(raw, lake.compact, report_days(date(2026, 11, 25), 7, None, None),
                    today=TODAY)
    day = next(d for d in report.days if d.day == "20261123")
    assert "1 partitions could not be checked against raw (see below)" in day.notes
    problem = next(p for p in report.worst if p.key == bad.state_key)
    assert "raw listing failed" in problem.reason and "SlowDown" in problem.reason
    assert "unchecked" in render_text(report)


def test_a_day_not_compacted_yet_shows_no_change_of_minus_100_percent() -> None:
    """Raw data, nothing published, the day before published: not a -100 % collapse."""
    windows = {"good": 96, "degraded": 0, "bad": 0, "partial": 0, "missing": 0,
               "malformed": 0, "misnamed": 0, "expected": 96}
    counts = {**dict.fromkeys(CONDITIONS, 0), "not_compacted": 12}
    pending = DayReport("20261124", False, True, Collector("GOOD", "stored", windows), counts,
                        0, 28_600, {}, {})
    done = replace(pending, day="20261123", ready=True, rows=28_000, state_labels={"GOOD": 12},
                   partitions={**dict.fromkeys(CONDITIONS, 0), "success": 12})
    assert pending.status == "pending" and pending.rows_change is None
    assert done.rows_change == pytest.approx(28_000 / 28_600 - 1)
    report = QualityReport("2026-11-25T00:00:00.000Z", TODAY, "20261123", "20261124", "raw",
                           "compact", "binance", Watermark("20261123", None, None, 1),
                           [pending, done], [], 0)
    page = render_html(report)
    row = re.search(r'<tr data-day="20261124">.*?</tr>', page)
    assert row and "not compacted" in row.group(0) and "%" not in row.group(0)
    text = render_text(report)
    assert "-100" not in text
    line = next(x for x in text.splitlines() if x.startswith("20261124"))
    assert line.split()[1:9] == ["no", "0", "0", "0", "0", "12", "0", "0"]
    assert line.split()[9] == "-"


def test_misnamed_windows_are_counted_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GOOD day whose 23:45 window is named by its end (`window=2400.json`): still
    GOOD, and the report's JSON counts it misnamed; text and HTML say so."""
    raw, compact = tmp_path / "raw", tmp_path / "compact"
    raw.mkdir()
    compact.mkdir()
    day = "20261124"
    put_partition(LocalStore(raw), PartitionSpec(*SERIES[0], date=day, files=2,
                                                 rows_per_file=20), tmp_path / "gen")
    write_windows(raw, day, "GOOD")
    folder = raw / f"quality/date={day}"
    (folder / "window=2345.json").rename(folder / "window=2400.json")
    base = ["--raw", str(raw), "--compact", str(compact), "--today", TODAY,
            "--tmp-dir", str(tmp_path / "tmp")]
    assert main([*base, "--mode", "catch-up"]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(capsys, [*base, "--quality-report", "--json", "--days", "1"])
    collector = json.loads(out)["days"][0]["collector"]
    assert code == 0 and collector["label"] == "GOOD"
    assert collector["windows"]["misnamed"] == 1 and collector["windows"]["missing"] == 0
    assert collector["reasons"] == ["1 misnamed window (counted by window_start)"]
    html = tmp_path / "report.html"
    code, out, _ = run_cli(capsys, [*base, "--quality-report", "--days", "1",
                                    "--html", str(html)])
    assert "1 misnamed window" in out and "1 misnamed window" in html.read_text()
