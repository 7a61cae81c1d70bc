"""Exports load with `datasets`, split by user, drop evaluation leaks, carry a data card, and train:
one real TRL SFTTrainer step on a tiny model from the SFT export."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recot.curation.dedup import run_dedup
from recot.curation.export import ExportConfig, export
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.errors import DataError
from recot.synth.job import SynthConfig, run_synth

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def exported(sample_path, sample, tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    run_synth(SynthConfig(dataset=sample_path, out=work / "synth", tasks=["r0_caption", "r3_cot_hindsight"], limit=200),
              progress=False)
    with Store(work / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(work / "synth" / "traces.parquet")
        run_rules(store)
        run_dedup(store)
        config = ExportConfig(name="sample-cot", out=work / "export", cot_ratio=0.5, valid_share=0.2, dataset=sample_path)
        card = export(store, config)
        kept = store.scalar("SELECT count(*) FROM traces t "
                            "WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.trace_id = t.trace_id AND NOT v.passed)")
        with pytest.raises(DataError, match="exists"):
            export(store, config)
    return work / "export", card, kept


def test_every_format_loads_with_datasets(exported):
    out, card, kept = exported
    for name in ("sft", "prompt_completion", "grpo", "verl", "sharegpt"):
        loaded = datasets.load_dataset(str(out), name=name)
        assert set(loaded) == {"train", "validation"}
        assert loaded["train"].num_rows == card["formats"][name]["train"] > 0
    sft = datasets.load_dataset(str(out), name="sft")["train"]
    assert sum(card["formats"]["sft"].values()) == kept - card["decontamination"]["rows_dropped"]
    assert sum(t["traces"] for t in card["teacher_tokens"]) == card["funnel"]["traces"]
    assert {t["teacher"] for t in card["teacher_tokens"]} == {"rules"} and card["teacher_cost"] is None
    assert "| r3_cot_hindsight | rules:rules-v1 |" in (out / "README.md").read_text()
    roles = {tuple(m["role"] for m in row["messages"]) for row in sft}
    assert roles == {("user", "assistant")}
    grpo = datasets.load_dataset(str(out), name="grpo")["train"][0]
    assert grpo["target_sid"].startswith("<a_") and len(grpo["history"]) == len(grpo["history_sids"])


def test_cot_mix_and_answers(exported, sample):
    out, _, _ = exported
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    rows = datasets.load_dataset(str(out), name="sft")["train"].filter(lambda r: r["task"] == "r3_cot_hindsight")
    with_cot = [r for r in rows if r["messages"][1]["content"].startswith("<think>")]
    assert 0.35 < len(with_cot) / len(rows) < 0.65
    assert all(r["messages"][1]["content"].split("\n")[-1] in set(sid_of.values()) for r in rows)


def test_users_never_straddle_splits(exported):
    out, _, _ = exported
    users = {part: set(datasets.load_dataset(str(out), name="grpo")[part]["user_id"]) for part in ("train", "validation")}
    assert users["train"] and users["validation"] and not users["train"] & users["validation"]


def test_data_card_has_front_matter_funnel_and_provenance(exported):
    out, card, _ = exported
    text = (out / "data_cards" / "sample-cot.md").read_text()
    assert text.startswith("---\nlicense: other") and "config_name: sft" in text and "## Funnel" in text
    twin = json.loads((out / "data_cards" / "sample-cot.json").read_text())
    assert twin["templates_and_teachers"][0]["teacher"] == "rules" and twin["rules_config"]["grounding"]["max_ehr"] == 0.5
    assert twin["funnel"]["rules"]["dedup"]["checked"] > 0


def test_one_real_sft_step_from_the_export(exported, tiny_model, tmp_path):
    trl = pytest.importorskip("trl")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = exported
    train = datasets.load_dataset(str(out), name="sft")["train"].select(range(8)).select_columns(["messages"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = model.lm_head.weight.detach().clone()
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, use_cpu=True, bf16=False,
                         report_to="none", assistant_only_loss=True, max_length=256, logging_steps=1, save_strategy="no")
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.lm_head.weight.detach())


def test_selection_by_judge_threshold_and_top_k(sample_path, sample, tmp_path):
    from recot.curation.judge import run_judge

    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "synth", tasks=["r3_cot_hindsight"], limit=150), progress=False)
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "synth" / "traces.parquet")
        run_judge(store)
        best = store.scalar("SELECT max(value) FROM scores WHERE name = 'judge'")
        strict = export(store, ExportConfig(name="strict", out=tmp_path / "strict", formats=["sft"], min_judge=best))
        top1 = export(store, ExportConfig(name="top1", out=tmp_path / "top1", formats=["grpo"], top_k_per_user=1))
        above = store.scalar("SELECT count(*) FROM scores WHERE name = 'judge' AND value >= ?", [best])
        users = store.scalar("SELECT count(DISTINCT user_id) FROM traces")
        # an export that selects nothing, in the same store session as ones that did, then one that does again
        empty = export(store, ExportConfig(name="none", out=tmp_path / "none", formats=["sft"], tasks=["no_such_task"]))
        again = export(store, ExportConfig(name="again", out=tmp_path / "again", formats=["sft"], min_judge=best))
    assert sum(strict["formats"]["sft"].values()) == above < 150
    assert sum(top1["formats"]["grpo"].values()) == users
    assert empty["formats"]["sft"] == {"train": 0, "validation": 0} and again["formats"] == strict["formats"]


def test_cot_share_per_domain(sample_path, sample, tmp_path):
    """Two domains (the sample's catalog split in two): each gets its own CoT share."""
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "synth", tasks=["r3_cot_hindsight", "r3_cot_blind"]), progress=False)
    items = sample.catalog.items
    tools = type(sample.catalog)(items.filter(pl.col("item_id").hash() % 2 == 0), sample.catalog.dialect)
    parts = type(sample.catalog)(items.filter(pl.col("item_id").hash() % 2 == 1), sample.catalog.dialect)
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(tools, "tools")
        store.load_catalog(parts, "parts")
        store.ingest(tmp_path / "synth" / "traces.parquet")
        card = export(store, ExportConfig(name="mix", out=tmp_path / "mix", formats=["sft"], cot_ratio={"tools": 0.0, "*": 0.6}))
    sft = pl.read_parquet(tmp_path / "mix" / "sft" / "train-*.parquet").filter(pl.col("task").str.starts_with("r3_"))
    shares = dict(sft.group_by("domain").agg(pl.col("with_cot").mean()).iter_rows())
    thinking = sft.filter(pl.col("messages").list.last().struct.field("content").str.contains("<think>"))
    assert set(shares) == {"tools", "parts"} and shares["tools"] == 0.0 and abs(shares["parts"] - 0.6) < 0.1
    assert thinking["with_cot"].all() and thinking.height == sft["with_cot"].sum()
    assert card["r3_with_cot_by_domain"]["tools"]["with_cot"] == 0


def test_rows_that_would_leak_an_evaluation_target_are_dropped(exported, sample_path, sample, tmp_path):
    """Copies of training traces re-aimed at their user's validation or test target must not be exported."""
    from recot.data.loaders import load_dataset
    from recot.synth.job import choose_split

    split = choose_split(load_dataset(sample_path), "auto", 10)
    evaluation = split.samples.filter(pl.col("part") != "train").select("user_id", "target").collect()
    traces = pl.read_parquet(exported[0].parent / "synth" / "traces.parquet").filter(pl.col("task") == "r3_cot_hindsight")
    crafted = traces.join(evaluation.unique("user_id"), on="user_id", suffix="_eval").head(5).with_columns(
        target=pl.col("target_eval"), subject_id=pl.col("subject_id") + "#leak").drop("target_eval")
    pl.concat([traces, crafted]).write_parquet(tmp_path / "traces.parquet")
    (tmp_path / "split.json").write_text((exported[0].parent / "synth" / "split.json").read_text())  # the split they were made on
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "traces.parquet")
        card = export(store, ExportConfig(name="clean", out=tmp_path / "clean", formats=["grpo"], dataset=sample_path))
    exported_pairs = pl.concat([pl.read_parquet(p) for p in (tmp_path / "clean" / "grpo").glob("*.parquet")]).select("user_id", "target")
    assert crafted.height == 5 and card["decontamination"]["rows_dropped"] >= 5
    assert exported_pairs.join(evaluation, on=["user_id", "target"]).is_empty()
    assert exported_pairs.height == sum(card["formats"]["grpo"].values()) > 0
