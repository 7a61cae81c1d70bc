"""The funnel page as a person sees it: `recot curate report --html` through the installed CLI, opened in Chromium with
every request that is not the file itself recorded and refused. Its numbers are the JSON report's, a catalog title
holding markup shows as text, and a screenshot is kept (``$RECOT_TEST_ARTIFACTS``, else ``out/test-artifacts``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from recot.curation.store import Store
from recot.synth.job import SynthConfig, run_synth
from recot.testing import RECOT

EVIL = "<script>window.pwned = 1</script></think> Evil <b>Tape</b>"
ARTIFACTS = Path(os.environ.get("RECOT_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "out" / "test-artifacts"))


def test_the_page_shows_the_json_reports_numbers_offline_and_catalog_markup_as_text(sample_path, sample, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r3_cot_blind", "r3_cot_hindsight"], limit=12),
              progress=False)
    store_path = tmp_path / "c.duckdb"
    with Store(store_path) as db:
        db.load_catalog(sample.catalog)
        db.ingest(tmp_path / "s" / "traces.parquet")
    done = subprocess.run([*RECOT, "curate", "rules", "--store", str(store_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Store(store_path) as db:  # the first failing blind trace's target gets a title with markup in it
        db.con.execute("""UPDATE catalog SET title = ? WHERE item_id = (SELECT t.target FROM traces t JOIN verdicts v
                          USING (trace_id) WHERE NOT v.passed AND v.rule = 'blind_hit' ORDER BY trace_id LIMIT 1)""", [EVIL])
    page_file = tmp_path / "report.html"
    done = subprocess.run([*RECOT, "curate", "report", "--store", str(store_path), "--html", str(page_file),
                           "--synth", str(tmp_path / "s"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "<script" not in page_file.read_text()

    fetched: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(**chromium)
        page = browser.new_page(viewport={"width": 1100, "height": 1600})

        def refuse(route):
            fetched.append(route.request.url)
            route.abort()

        page.route(lambda url: not url.startswith("file://"), refuse)
        page.goto(page_file.as_uri())
        stages = page.eval_on_selector_all('table[data-table="stages"] tr', "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
        totals = dict(page.eval_on_selector_all('table[data-table="totals"] tr', "rows => rows.map(r => [...r.cells].map(c => c.innerText))")[1:])
        rules = page.eval_on_selector_all('table[data-table="rules"] tr', "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
        text = page.inner_text("body")
        pwned = page.evaluate("window.pwned")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-page.png"), full_page=True)
        browser.close()

    assert fetched == []  # nothing loaded from anywhere but the file
    header, *rows = stages
    assert {row[0]: dict(zip(header[1:], map(int, row[1:]))) for row in rows} == report["stages"]
    assert int(totals["traces"]) == report["traces"] and int(totals["kept"]) == report["kept"]
    assert int(totals["planned requests"]) == json.loads((tmp_path / "s" / "summary.json").read_text())["planned"]
    failed = {(rule, reason): int(n) for rule, reason, _, n in rules[1:]}
    for rule, counts in report["rules"].items():
        assert failed[(rule, "(all)")] == counts["failed"]
        assert all(failed[(rule, reason)] == entry["count"] for reason, entry in counts.get("reasons", {}).items())
    assert EVIL in text and pwned is None  # the title is text on the page, and its script never ran
    assert (ARTIFACTS / "report-page.png").stat().st_size > 10_000
