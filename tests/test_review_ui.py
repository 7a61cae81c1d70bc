"""Review as a reviewer does it, in a real browser: Chromium (Debian's package) driven by Playwright logs into the
Argilla the tests started, reads a pushed record (every SID, title and interest must be visible), edits the
correction the box starts with and accepts, rejects the next record, and the pull and the export see exactly that."""

from __future__ import annotations

import re
import time

import polars as pl
import pytest

from recot.curation.argilla_api import Argilla
from recot.curation.export import ExportConfig, export
from recot.curation.review import ReviewConfig, pull, push
from recot.curation.store import Store
from recot.formats.sid import ANY_SID_PATTERN
from recot.synth.job import SynthConfig, run_synth

FIX = ["Persona: a careful buyer", "Interests:", "1. tape (from #1)", "Transition: #1 tape -> interest 1. more tape for the same repair job"]


@pytest.fixture()
def store(sample_path, sample, tmp_path):
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r3_cot_hindsight"], limit=12), progress=False)
    with Store(tmp_path / "c.duckdb") as db:
        db.load_catalog(sample.catalog)
        db.ingest(tmp_path / "s" / "traces.parquet")
        yield db


def _rendered(page, records: dict) -> str:
    """The page's text once the record on screen has rendered its history and answer (the fields render one by one,
    later on a busy machine): every SID of some pushed record is shown, or 30 s have passed (the asserts then say what
    is missing)."""
    expected = [re.findall(ANY_SID_PATTERN, r["fields"]["history"] + r["fields"]["answer"]) for r in records.values()]
    deadline = time.monotonic() + 30
    while True:
        shown = page.inner_text("body")
        if any(sids and all(sid in shown for sid in sids) for sids in expected) or time.monotonic() > deadline:
            return shown
        time.sleep(0.5)


def test_a_reviewer_reads_edits_accepts_and_rejects_in_the_browser(argilla, chromium, store, tmp_path):
    from playwright.sync_api import sync_playwright

    config = ReviewConfig(dataset=f"ui-{time.time_ns()}")
    with Argilla() as api:
        push(store, config, api)
        dataset = api.find_dataset(config.dataset, api.workspace_id("argilla"))["id"]
        records = {r["external_id"]: r for r in api.records(dataset)}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(**chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{argilla}/sign-in")
        page.locator("input").nth(0).fill("argilla")
        page.locator("input").nth(1).fill("1234")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*(?<!sign-in)$"), timeout=30_000)
        page.goto(f"{argilla}/dataset/{dataset}/annotation-mode")
        page.wait_for_selector("text=Purchase history", timeout=30_000)
        page.locator("label[for=verdict_accept]").wait_for(timeout=30_000)
        shown = _rendered(page, records)
        page.locator("label[for=quality_4]").click()
        page.locator("label[for=verdict_accept]").click()
        page.locator("#contentId").click()  # the correction box, filled with the trace's reasoning
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        for number, line in enumerate(FIX):
            if number:
                page.keyboard.press("Shift+Enter")
            page.keyboard.type(line)
        page.get_by_role("button", name=re.compile("Submit")).click()
        page.wait_for_selector("text=2 of 12", timeout=30_000)
        page.locator("label[for=verdict_reject]").wait_for(timeout=30_000)
        page.locator("label[for=quality_2]").click()
        page.locator("label[for=verdict_reject]").click()
        page.get_by_role("button", name=re.compile("Submit")).click()
        page.wait_for_selector("text=3 of 12", timeout=30_000)
        browser.close()
    with Argilla() as api:
        report = pull(store, config, api)
    assert report["decisions"] == {"accept": 1, "reject": 1, "pending": 10}
    accepted, rejected = (store.scalar("SELECT trace_id FROM review_decisions WHERE decision = ?", [d]) for d in ("accept", "reject"))
    # the first record on the screen (the one accepted there): every SID as written, every title, every interest
    titles = dict(store.con.execute("SELECT sid_text, title FROM catalog").fetchall())
    sids = re.findall(ANY_SID_PATTERN, records[accepted]["fields"]["history"] + records[accepted]["fields"]["answer"])
    assert sids and all(sid in shown and titles[sid] in shown for sid in sids)
    text = store.scalar("SELECT text FROM traces WHERE trace_id = ?", [accepted])
    interests = re.search(r"Interests:\n(.*?)\nTransition:", text, re.S).group(1).splitlines()
    assert interests and all(line.split(". ", 1)[1] in shown for line in interests)  # every interest, not "-"
    export(store, ExportConfig(name="ui", out=tmp_path / "export", formats=["sft"], valid_share=0.0))
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train-*.parquet")
    completions = dict(zip(sft["trace_id"], (m[1]["content"] for m in sft["messages"])))
    assert rejected not in completions
    assert completions[accepted].startswith("<think>\n" + "\n".join(FIX) + "\n</think>\n")  # the editor's newline is gone
