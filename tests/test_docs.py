"""The README and docs/ as a reader uses them (README "Quick start").

- Every code block fenced as ```` ```sh runnable ```` is run as written: the README's
  in an empty directory (they make the demo lake), each of docs/'s in a copy of that
  directory, all with `quantlab-compact` and `python3` being this checkout's, no S3
  settings and every proxy pointing at a closed port on 127.0.0.1, so a block that
  reaches for the network fails instead of leaving the machine.
- Every citation of a section in the code, tests, bench and deployment files
  (`README "Title"`, `docs/operations.md "Title"`) names a heading or a bold lead that
  exists in that file, and every relative link of the README and docs/ reaches a file:
  moving a section without fixing what cites it fails here.
- The README stays a front page: at most 250 lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: The fence of a block the test runs: GitHub colours it as `sh` and ignores the rest.
RUNNABLE = re.compile(r"^```sh runnable\n(.*?)^```$", re.M | re.S)
#: Files whose prose cites README or docs sections.
CITING = ["compressor", "tests", "bench", "deploy", "run.py", "quantlab-compact.service",
          "quantlab-compact.timer", ".ci/run", "bench/README.md"]
#: `README "Title"`, `docs/x.md, "Title"`, `README 'Title'`, across a wrapped comment line.
CITATION = re.compile(r"""\b(README|docs/\w+\.md)(?!\.md)[, ]+(["'])([^"'\n]+?)\2""")
BLOCK_TIMEOUT_S = 120


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of every runnable block of `path`."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in RUNNABLE.finditer(text)]


def shims(bin_dir: Path) -> None:
    """`quantlab-compact` (= `python3 run.py`, as the README says) and `python3`, both
    this checkout's interpreter and code."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("quantlab-compact", f'"{sys.executable}" "{ROOT / "run.py"}"'),
                         ("python3", f'"{sys.executable}"'), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)


def block_env(tmp: Path) -> dict[str, str]:
    """This checkout's code first, no store settings, no way off 127.0.0.1."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("S3_", "AWS_", "MERGE_", "QLC_")) and "proxy" not in k.lower()}
    env.update(PATH=f"{tmp / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=str(ROOT), TMPDIR=str(tmp), NO_COLOR="1",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               NO_PROXY="", AWS_EC2_METADATA_DISABLED="true")
    return env


def run_block(where: str, code: str, cwd: Path, tmp: Path) -> None:
    """Run one block with bash (stop at the first failing line) and require exit 0."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=block_env(tmp),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False)
    assert done.returncode == 0, (f"{where} exited {done.returncode}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where the README's runnable blocks ran: the Quick start's demo lake.
    The install line before them needs PyPI, so `.venv/bin/quantlab-compact` is the
    shim of this checkout."""
    tmp = tmp_path_factory.mktemp("readme")
    shims(tmp / "bin")
    work = tmp / "work"
    shims(work / ".venv" / "bin")
    blocks = runnable_blocks(ROOT / "README.md")
    assert blocks, "README.md has no ```sh runnable block (the Quick start's demo)"
    for line, code in blocks:
        run_block(f"README.md:{line}", code, work, tmp)
    assert (work / "demo" / "compact" / "compacted" / "_state.json").is_file()
    shutil.rmtree(work / ".venv")
    return work


def test_readme_demo_makes_a_ready_lake(demo: Path) -> None:
    compact = demo / "demo" / "compact"
    outputs = list(compact.glob("exchange=*/stream=*/symbol=*/date=*/meta.json"))
    assert outputs, "the README's demo published nothing"
    state = json.loads((compact / "compacted" / "_state.json").read_text())
    newest = max(p.parent.name.removeprefix("date=") for p in outputs)
    # yesterday, or the day before in the first hour after midnight (cli.demo_today)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert newest in {f"{yesterday - timedelta(days=n):%Y%m%d}" for n in (0, 1)}
    assert state["last_compacted_date"] == newest
    assert {e["status"] for e in state["partitions"].values()} == {"success"}


DOC_BLOCKS = [pytest.param(path, line, code, id=f"{path.name}:{line}")
              for path in DOCS[1:] for line, code in runnable_blocks(path)]


def test_docs_have_runnable_blocks() -> None:
    """The marker is spelled as the test reads it: a typo would leave nothing to run."""
    assert {p.name for p, *_ in (param.values for param in DOC_BLOCKS)} >= {
        "operations.md", "quality.md"}


@pytest.mark.parametrize(("path", "line", "code"), DOC_BLOCKS)
def test_docs_block_runs(path: Path, line: int, code: str, demo: Path,
                         tmp_path: Path) -> None:
    shims(tmp_path / "bin")
    work = tmp_path / "work"
    shutil.copytree(demo, work)
    run_block(f"docs/{path.name}:{line}", code, work, tmp_path)


def titles(path: Path) -> set[str]:
    """What a citation of `path` may name: a heading, or the bold lead of a paragraph or
    a bullet (`**Killed runs**`, `**Readiness never lies.**`), without a final period."""
    text = path.read_text(encoding="utf-8")
    found = {m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}
    found |= {m.group(1).rstrip(".").strip() for m in re.finditer(r"\*\*([^*\n]+)\*\*", text)}
    return found


def cites(title: str, known: set[str]) -> bool:
    """A heading may go on after the cited words ("Fetch cost (issue ...)")."""
    return any(t == title or t.startswith(title + " ") or t.startswith(title + ":")
               for t in known)


def citing_files() -> list[Path]:
    files: list[Path] = []
    for name in CITING:
        path = ROOT / name
        if path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in
                      {".py", ".md", ".yaml", ".json", ".sh", ""} and "fixtures" not in p.parts]
        elif path.is_file():
            files.append(path)
    return sorted({f for f in files if f != Path(__file__).resolve()})


def test_every_cited_section_exists() -> None:
    known = {"README": titles(ROOT / "README.md")}
    known |= {f"docs/{p.name}": titles(p) for p in DOCS[1:]}
    broken = []
    for path in citing_files():
        # a citation may wrap onto the next comment or docstring line
        raw = path.read_text(encoding="utf-8", errors="replace")
        text = re.sub(r"\s*\n\s*(?:#:?\s*)?", " ", raw)
        for m in CITATION.finditer(text):
            doc, title = m.group(1), m.group(3)
            if doc not in known:
                broken.append(f"{path.relative_to(ROOT)}: {doc} is not a file")
            elif not cites(title, known[doc]):
                broken.append(f'{path.relative_to(ROOT)}: {doc} "{title}"')
    assert not broken, "citations of sections that do not exist:\n" + "\n".join(broken)


def test_relative_links_reach_files() -> None:
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the detail into docs/"
