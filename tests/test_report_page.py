"""The funnel page as a person sees it: `recot curate report --html` through the installed CLI, opened in Chromium with
every request that is not the file itself recorded and refused. Its numbers are the JSON report's, a catalog title
holding markup shows as text, and a screenshot is kept (``$RECOT_TEST_ARTIFACTS``, else ``out/test-artifacts``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl

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


def test_a_thinking_teachers_tokens_reach_the_page_and_the_card(sample_path, sample, instant_server, tmp_path):
    """The reasoning tokens a thinking teacher was paid for show in the page's provenance and cost tables and in the data
    card, as part of the completion tokens; its reasoning stays out of every exported row."""
    import re

    from recot.curation.export import ExportConfig, export
    from recot.curation.report_page import report_page
    from recot.curation.rules import run_rules
    from recot.teachers import OpenAITeacherConfig
    from recot.testing.instant_server import THOUGHT_TOKENS

    report = run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r1_relation"], limit=20,
                                   teacher=OpenAITeacherConfig(model="think", base_urls=[instant_server.url], backoff_s=0.01)),
                       progress=False)
    with Store(tmp_path / "c.duckdb") as db:
        db.load_catalog(sample.catalog)
        db.ingest(tmp_path / "s" / "traces.parquet")
        run_rules(db)
        page = report_page(db, synth_summary=json.loads((tmp_path / "s" / "summary.json").read_text()))
        export(db, ExportConfig(name="thinking", out=tmp_path / "export"))
    cells = lambda key: re.findall(r"<td[^>]*>([^<]*)</td>", page.split(f'data-table="{key}"')[1].split("</table>")[0])  # noqa: E731
    assert cells("provenance")[-4:] == ["240", str(20 * (9 + THOUGHT_TOKENS)), str(20 * THOUGHT_TOKENS), "20"]
    assert cells("cost")[cells("cost").index("of them reasoning") + 2] == str(report.reasoning_tokens) == str(20 * THOUGHT_TOKENS)
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"| r1_relation | openai:think | 20 | 240 | {20 * (9 + THOUGHT_TOKENS)} | {20 * THOUGHT_TOKENS} |" in card
    exported = [pl.read_parquet(p).to_dicts() for p in (tmp_path / "export").rglob("*.parquet") if p.name != "catalog.parquet"]
    assert sum(map(len, exported)) >= 20 and "thinks first" not in json.dumps(exported, default=str)
