"""The HTML report as a reader sees it: `snakemake --report` rendered by headless Chromium.

Chromium is Debian's package (installed with apt-get when missing, as CI does for Slurm); the
page is driven over the DevTools protocol on a pipe (tests/browser/cdp.py), nothing downloaded.
Screenshots are kept in $ROBUSTCORE_TEST_ARTIFACTS, else tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from browser.cdp import Chromium, chromium_binary
from test_workflow import REPO, TINY, snakemake

pytestmark = pytest.mark.cpu_only(
    "renders the report of a CPU workflow run in headless Chromium; no model runs in the test"
)

ARTIFACTS = Path(os.environ.get("ROBUSTCORE_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")

# The tiny study with a paper and a claim (two seeds: the claim gets an interval).
CONFIG = {
    **TINY,
    "studies": {
        "tiny": {
            **TINY["studies"]["tiny"],
            "paper": "EasyCore (a test)",
            "seeds": [0, 1],
            "compare": [
                {"a": "easy", "b": "random", "claim": "Easy beats random.", "source": "T1"}
            ],
        }
    },
}
TABLE = "results/report/tiny/tables/accuracy.html"


def _install_chromium() -> str | None:
    """Debian's chromium, installed with apt-get when missing and possible (root, apt)."""
    if chromium_binary() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
    return chromium_binary()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _install_chromium()
    if path is None:
        pytest.skip("no chromium, and it cannot be installed here (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    """report.html of a finished tiny run (built once for this module)."""
    workdir = tmp_path_factory.mktemp("browser")
    run = snakemake(workdir, config=CONFIG)
    assert run.returncode == 0, run.stderr[-3000:]
    report = snakemake(workdir, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    return workdir / "report.html"


def _keep(path: Path) -> None:
    """Copy a screenshot to the artefact folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def _results(report: Path) -> dict:
    """The report's registered results (path -> record), from its embedded JSON."""
    page = report.read_text()
    match = re.search(r'<script id="results">\s*var results = (.*?);?\s*</script>', page, re.S)
    assert match, "the report embeds its results as JSON"
    return json.loads(match.group(1))


def test_console_errors_are_caught(tmp_path, chromium):
    """The check below is not vacuous: a page that logs an error or throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<p>x</p><script>console.error("deliberate"); missingFunction();</script>')
    with Chromium(binary=chromium) as browser:
        browser.open(page.as_uri())
        browser.pump(0.3)
    assert any("deliberate" in e for e in browser.errors), browser.errors
    assert any("missingFunction" in e for e in browser.errors), browser.errors


def test_landing_page_shows_the_claims_table(report_html, tmp_path, chromium):
    with Chromium(binary=chromium) as browser:
        started = time.monotonic()
        browser.open(report_html.as_uri())
        browser.wait_for("document.querySelector('#claims tbody tr.claim') !== null")
        loaded = time.monotonic() - started
        browser.pump(0.5)
        shown = browser.evaluate(
            """(() => {
              const table = document.querySelector('#claims');
              const row = table.querySelector('tbody tr.claim');
              const box = row.getBoundingClientRect();
              const hit = document.elementFromPoint(box.left + box.width / 2,
                                                    box.top + box.height / 2);
              return {width: box.width, height: box.height, top: box.top, left: box.left,
                      onTop: table.contains(hit), viewport: [innerWidth, innerHeight],
                      header: [...table.querySelectorAll('thead th')].map(c => c.innerText),
                      cells: [...row.querySelectorAll('th, td')].map(c => c.innerText),
                      rows: table.querySelectorAll('tbody tr.claim').length};
            })()"""
        )
        shot = browser.screenshot(tmp_path / "browser_landing.png")
    _keep(shot)
    assert browser.errors == [], browser.errors
    assert loaded < 15, f"the landing page took {loaded:.1f} s"
    # Visible without scrolling, not covered by anything else.
    assert shown["width"] > 300 and shown["height"] > 10 and shown["onTop"], shown
    assert 0 <= shown["top"] < shown["viewport"][1] and shown["left"] < shown["viewport"][0]
    assert [h.split("\n")[0] for h in shown["header"]] == [
        "paper", "claim", "source · study", "measured (best-powered setting)", "verdict",
    ]  # fmt: skip
    assert shown["rows"] == 1
    paper, claim, source, measured, verdict = shown["cells"]
    assert (paper, claim) == ("EasyCore", "Easy beats random.")
    assert source.split("\n") == ["T1", "tiny"]
    assert measured.startswith("easy − random, robust pgd at f=0.5: ")
    assert verdict.split()[0] in ("supports", "contradicts", "inconclusive")


def test_a_study_table_renders_inline(report_html, tmp_path, chromium):
    with Chromium(binary=chromium) as browser:
        browser.open(report_html.as_uri())
        browser.wait_for("document.querySelector('#claims a') !== null")
        # The claims row links to its study: the study's table opens in the report's viewer.
        browser.evaluate("document.querySelector('#claims tbody a').click()")
        browser.wait_for("document.querySelector('iframe') !== null")
        frame = browser.child_frames()[0]
        assert frame["url"].startswith("data:text/html"), frame["url"][:60]
        table = browser.wait_for(
            """(() => {
              const rows = [...document.querySelectorAll('table')[0].querySelectorAll('tbody tr')];
              if (!rows.length) return null;
              const num = document.querySelector('td.num');
              return {rows: rows.map(r => [...r.children].map(c => c.innerText)),
                      height: rows[0].getBoundingClientRect().height,
                      align: getComputedStyle(num).textAlign,
                      title: document.querySelector('h1').innerText,
                      comparisons: document.querySelectorAll('table').length};
            })()""",
            frame=frame["id"],
        )
        shown = browser.evaluate("app.state.resultPath")
        shot = browser.screenshot(tmp_path / "browser_table.png")
    _keep(shot)
    assert browser.errors == [], browser.errors
    assert shown == TABLE
    assert table["title"] == "tiny: clean and robust accuracy (%)"
    assert [row[:2] for row in table["rows"]] == [["quick", "random"], ["quick", "easy"]]
    cells = [c for row in table["rows"] for c in row[2:]]
    assert cells and all(re.fullmatch(r"\d+\.\d ± \d+\.\d( ⚠)?", c) for c in cells), cells
    assert table["height"] > 0 and table["align"] == "right"
    assert table["comparisons"] == 2, "the paired comparisons follow the accuracy table"


def test_labels_after_the_first_tell_results_apart_as_their_files_do(report_html):
    """The report turns a label with two values, each on half of the listed results, into a
    toggle, and the page breaks when a listed row has no result under the toggle's value; two
    such labels switch toggles off. Labels after `study` are one-to-one with the file names."""
    results = _results(report_html)
    assert TABLE in results and not any(p.endswith(".md") for p in results), "tables as HTML"
    assert all(list(r["labels"]) == ["study", "item", "file"] for r in results.values())
    items = {(r["labels"]["item"], r["labels"]["file"]) for r in results.values()}
    assert len({i for i, _ in items}) == len({f for _, f in items}) == len(items)


def test_searching_never_breaks_the_page(report_html, chromium):
    with Chromium(binary=chromium) as browser:
        browser.open(report_html.as_uri())
        browser.wait_for("document.querySelector('#claims') !== null")
        for term in ("accuracy", "figures", "tables", "png", "html", "tiny"):
            # Back to the menu first: the result list is built when it is shown.
            browser.evaluate("app.setView({navbarMode: 'menu'})")
            browser.pump(0.1)
            browser.evaluate(f"app.setView({{navbarMode: 'searchresults', searchTerm: '{term}'}})")
            browser.pump(0.3)
            listed = browser.evaluate("document.querySelectorAll('nav tbody tr').length")
            assert listed > 0 and browser.errors == [], (term, listed, browser.errors)
    assert browser.errors == [], browser.errors
