"""Domain profiles: templates say what a domain's users do (views, clicks, ...) and offer its personas,
and a dataset with a domain column gets each sample's profile from its item's domain within one job."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

from recot.formats.profiles import PROFILES, DomainProfile
from recot.synth.job import SynthConfig, run_synth
from recot.synth.prompts import PromptLibrary


def test_templates_read_the_profile():
    history = [{"sid": "<a_1><b_2><c_3>", "title": "Cat video"}]
    video = PromptLibrary().render("r3_cot_blind", history=history, personas=list(PROFILES["short_video"].personas),
                                   profile=PROFILES["short_video"].model_dump()).messages[1]["content"]
    shop = PromptLibrary().render("r3_cot_blind", history=history, personas=["student"]).messages[1]["content"]
    assert video.startswith("A user's views, oldest first (number, semantic ID, title):") and "binge watcher" in video and "purchase" not in video
    assert shop.startswith("A user's purchases, oldest first (number, semantic ID, title):")
    for task in ("r0_caption", "r1_relation", "r2_interests", "r3_cot_hindsight", "r3_cot_slate"):
        source = PromptLibrary()[task].source
        assert "purchase" not in source and "product" not in source, task


def test_a_profile_of_ones_own(sample_path, tmp_path):
    podcasts = {"name": "podcasts", "event": "listen", "events": "listens", "verb": "listened to", "item": "episode",
                "items": "episodes", "personas": ["commuter", "news junkie"]}
    config = SynthConfig(dataset=sample_path, out=tmp_path, tasks=["r3_cot_blind"], limit=5, profile=podcasts)
    report = run_synth(config, progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.complete and all(json.loads(m)[1]["content"].startswith("A user's listens") for m in rows["messages"])
    assert {json.loads(o)["persona"]["prototype"] for o in rows["output"]} <= {"commuter", "news junkie"}
    with pytest.raises(ValidationError, match="unknown domain profile"):
        run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "x", profile="podcast"), progress=False)
    with pytest.raises(ValidationError):
        DomainProfile(name="x", event="e", events="es", verb="v", item="i", items="is", personas=[])


def test_one_job_over_two_domains_uses_each_domains_profile(sample, tmp_path):
    """The sample as generic tables whose items are split between short video and ads."""
    items = sample.catalog.items.with_columns(sid=sample.catalog.sid_text()).select("item_id", "title", "brand", "sid")
    domain_of = {item: ("short_video" if k % 2 else "ads") for k, item in enumerate(items["item_id"].to_list())}
    items.write_parquet(tmp_path / "items.parquet")
    events = sample.interactions.collect().with_columns(domain=pl.col("item_id").replace_strict(domain_of))
    events.select("user_id", "item_id", "ts", "domain").write_parquet(tmp_path / "events.parquet")
    (tmp_path / "ds.toml").write_text(f"valid_start = {sample.boundaries['valid_start']}\ntest_start = {sample.boundaries['test_start']}\n"
                                      '[items]\npath = "items.parquet"\n[interactions]\npath = "events.parquet"\n')
    report = run_synth(SynthConfig(dataset=tmp_path / "ds.toml", out=tmp_path / "out", tasks=["r3_cot_hindsight"], limit=60),
                       progress=False)
    rows = pl.read_parquet(tmp_path / "out" / "traces.parquet")
    assert report.complete and rows.height == 60
    seen = set()
    for target, messages, output in zip(rows["target"], rows["messages"], rows["output"]):
        profile = PROFILES[domain_of[target]]
        prompt = json.loads(messages)[1]["content"]
        assert prompt.startswith(f"A user's {profile.events}, oldest first (number, semantic ID, title):") and f"next {profile.event} was" in prompt
        assert json.loads(output)["persona"]["prototype"] in profile.personas
        seen.add(profile.name)
    assert seen == {"short_video", "ads"}
    # curation labels each item with its own domain, so the export's CoT mix and card follow the domains
    from recot.curation.export import ExportConfig, export
    from recot.curation.rules import run_rules
    from recot.curation.store import Store
    from recot.data.loaders import load_dataset

    dataset = load_dataset(tmp_path / "ds.toml")
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(dataset.catalog, "mixed", dataset.item_domains())
        store.ingest(tmp_path / "out" / "traces.parquet")
        run_rules(store)
        card = export(store, ExportConfig(name="mixed", out=tmp_path / "export", formats=["sft"], valid_share=0.0,
                                          cot_ratio={"ads": 0.0, "*": 1.0}))
    by_domain = card["r3_with_cot_by_domain"]
    assert set(by_domain) == {"short_video", "ads"} and by_domain["ads"]["with_cot"] == 0
    assert by_domain["short_video"]["with_cot"] == by_domain["short_video"]["rows"] > 0
