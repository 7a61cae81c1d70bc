"""The trainer on tiny models: rewards and metrics on hand-made cases, the SID vocabulary and trie,
real TRL SFT and GRPO steps (constrained two-stage rollouts, per-token clipping)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl
import pytest
import torch

from recot.testing import RECOT
from recot.trainer.baselines import most_popular
from recot.trainer.evaluate import ranking_metrics, recommend
from recot.trainer.grpo import learning_signal
from recot.trainer.rewards import (
    coverage_reward,
    diversity_reward,
    exact_hit,
    format_reward,
    grounding_reward,
    prefix_match,
    rank_reward,
    slate_rank_penalty,
)
from recot.trainer.trie import SidTrie

datasets = pytest.importorskip("datasets")
T = "<a_1><b_2><c_3>"


def test_rewards_on_hand_made_cases():
    completions = ["<think>\nPersona: x\n</think>\n<a_1><b_2><c_3>", [{"role": "assistant", "content": "<a_1><b_2><c_9>"}],
                   "<a_4><b_2><c_3>", "no answer", "<think>\nx\n</think>\n<a_1><b_2><c_3> and more"]
    targets = [T] * 5
    assert exact_hit(completions, targets) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert prefix_match(completions, targets) == pytest.approx([1.0, 2 / 3, 0.0, 0.0, 1.0])
    assert format_reward(completions) == [1.0, 1.0, 1.0, 0.0, 0.0]
    slates = [["<a_9><b_9><c_9>", T], [T], ["<a_1><b_5><c_5>", "<a_1><b_2><c_8>"], [], ["<a_2><b_1><c_1>", "<a_3><b_1><c_1>"]]
    assert rank_reward(completions, targets, candidates=slates) == pytest.approx([1 / math.log2(3), 1.0, 0.0, 0.0, 0.0])
    assert coverage_reward(completions, targets, candidates=slates) == pytest.approx([1.0, 1.0, 2 / 3, 0.0, 0.0])
    assert diversity_reward(completions, candidates=slates) == pytest.approx([1.0, 1.0, 0.5, 0.0, 1.0])
    # a beam group: each answer is one place of the slate; the hit costs nothing, a miss more the higher it stands
    beam = ["<a_9><b_9><c_9>", T, "<a_1><b_2><c_8>"]
    assert slate_rank_penalty(beam, [T] * 3, candidates=[beam] * 3) == pytest.approx([-1.0, 0.0, -1 / math.log2(4)])
    assert slate_rank_penalty(["no answer"], [T], candidates=[beam]) == pytest.approx([-1 / math.log2(5)])
    # grounding: the history cited (#k or its SID), nothing named outside it
    history = [["<a_1><b_1><c_1>", "<a_2><b_2><c_2>"]] * 4
    reasoned = ["<think>\nafter #1 and <a_2><b_2><c_2>\n</think>\n" + T, "<think>\nafter #2\n</think>\n" + T,
                "<think>\n#1 then <a_7><b_7><c_7>\n</think>\n" + T, T]
    assert grounding_reward(reasoned, history) == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_ranking_metrics_against_hand_computed_values():
    ranked = [["x", "t1"], ["t2"], ["y", "z"]]
    got = ranking_metrics(ranked, ["t1", "t2", "t3"], ks=(1, 2), valid={"x", "t1", "t2", "y"})
    assert got == pytest.approx({"recall@1": 1 / 3, "ndcg@1": 1 / 3, "recall@2": 2 / 3,
                                 "ndcg@2": (1 / math.log2(3) + 1) / 3, "sid_validity": 4 / 5})
    assert most_popular(["a", "b", "a", "c", "a", "b"], n=2, k=2) == [["a", "b"], ["a", "b"]]


@pytest.fixture(scope="module")
def sample_export(sample_path, sample, tmp_path_factory) -> Path:
    """An export of 20 hindsight traces written with the dataset set: its next-item rows of every part, catalog and split."""
    from recot.curation.export import ExportConfig, export
    from recot.curation.store import Store
    from recot.synth.job import SynthConfig, run_synth

    work = tmp_path_factory.mktemp("export")
    run_synth(SynthConfig(dataset=sample_path, out=work / "s", tasks=["r3_cot_hindsight"], limit=20), progress=False)
    with Store(work / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(work / "s" / "traces.parquet")
        export(store, ExportConfig(name="e", out=work / "export", formats=["sft"], dataset=sample_path))
    return work / "export"


@pytest.fixture(scope="module")
def sid_model(tiny_model, sample, tmp_path_factory):
    """The tiny model with the sample catalog's SID vocabulary added and initialised from titles."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.trainer.sid_vocab import add_sid_vocabulary

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = model.get_input_embeddings().weight.detach().clone()
    new_ids = add_sid_vocabulary(model, tokenizer, sample.catalog)
    out = tmp_path_factory.mktemp("sid") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, new_ids, before


def test_sid_tokens_start_from_their_items_titles(sid_model, sample):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, new_ids, before = sid_model
    tokenizer = AutoTokenizer.from_pretrained(path)
    embeddings = AutoModelForCausalLM.from_pretrained(path).get_input_embeddings().weight.detach()
    sid = sample.catalog.sid_text()[0]
    assert len(tokenizer(sid, add_special_tokens=False)["input_ids"]) == sample.catalog.levels
    first = tokenizer.convert_tokens_to_ids(sid[:sid.index(">") + 1])
    items = sample.catalog.items.filter(sample.catalog.sid_text().str.starts_with(sid[:sid.index(">") + 1]))
    vectors = [before[tokenizer(t, add_special_tokens=False)["input_ids"]].mean(0) for t in items["title"].fill_null("").to_list()]
    assert first in new_ids and torch.allclose(embeddings[first], torch.stack(vectors).mean(0), atol=1e-5)


def test_trie_beam_search_returns_k_distinct_valid_sids(sid_model, sample):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split

    path, _, _ = sid_model
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    valid = set(sample.catalog.sid_text().drop_nulls().to_list())
    trie = SidTrie.from_sids(tokenizer, valid)
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "test").head(6)
    ranking = recommend(model, tokenizer, rows["prompt"].to_list(), trie, k=5)
    assert all(len(r) == 5 and set(r) <= valid for r in ranking.ranked)
    free = recommend(model, tokenizer, rows["prompt"].to_list(), None, k=5)  # an untrained model, unconstrained
    assert ranking_metrics(free.ranked, rows["target_sid"].to_list(), valid=valid).get("sid_validity", 0.0) < 1.0


def test_export_and_trainer_build_the_same_prompt(sample_path, sample, tmp_path):
    from recot.curation.export import ExportConfig, export
    from recot.curation.next_item import next_item_rows
    from recot.curation.store import Store
    from recot.synth.job import SynthConfig, choose_split, run_synth

    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r3_cot_blind"], limit=40), progress=False)
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "s" / "traces.parquet")
        export(store, ExportConfig(name="p", out=tmp_path / "p", formats=["prompt_completion"], cot_ratio=0.0))
        keys = pl.from_arrow(store.con.sql("SELECT trace_id, user_id, target, len(history) AS n FROM traces").to_arrow_table())
    exported = pl.read_parquet(tmp_path / "p" / "prompt_completion" / "train-*.parquet").join(keys, on="trace_id")
    built = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train").with_columns(n=pl.col("history_sids").list.len())
    both = exported.join(built, on=["user_id", "target", "n"], suffix="_trainer")  # a user may buy one item twice
    assert both.height > 0
    assert (both["prompt"].list.first().struct.field("content") == both["prompt_trainer"].list.first().struct.field("content")).all()


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_warmup_trains_only_the_sid_rows(sid_model):
    from transformers import AutoModelForCausalLM

    from recot.trainer.sid_vocab import freeze_for_warmup

    path, new_ids, _ = sid_model
    model = AutoModelForCausalLM.from_pretrained(path)
    freeze_for_warmup(model, new_ids)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(input_ids=torch.tensor([[new_ids[0], 5, new_ids[1], 7]]), labels=torch.tensor([[new_ids[0], 5, new_ids[1], 7]])).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    rows = (before["model.embed_tokens.weight"] != model.get_input_embeddings().weight).any(1).nonzero().flatten().tolist()
    assert changed == {"model.embed_tokens.weight"} and rows and set(rows) <= set(new_ids)


def test_sft_steps_with_embedding_warmup(sid_model, sample, sample_path, tmp_path):
    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer.sft import RecSFTConfig, train_sft

    path, _, _ = sid_model
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train").head(16)
    catalog = tmp_path / "catalog.parquet"  # the slice an export hands the trainer
    sample.catalog.items.select("item_id", "title", "brand").with_columns(sid_text=sample.catalog.sid_text()).write_parquet(catalog)
    config = RecSFTConfig(output_dir=str(tmp_path / "sft"), model_path=str(path), max_steps=2, embedding_warmup_steps=1,
                          sid_catalog=str(catalog),
                          per_device_train_batch_size=4, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                          max_length=256, learning_rate=1e-3)
    trainer = train_sft(config, datasets.Dataset.from_polars(rows.select("prompt", "completion")))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [trainer.state.log_history[-1]["train_loss"]]
    assert all(math.isfinite(float(x)) for x in losses)
    assert (tmp_path / "sft" / "warmup").exists() and (tmp_path / "sft" / "model.safetensors").exists()


def _grpo_trainer(sid_model, sample, tmp_path, callbacks=(), extra_rewards=(), rewards=None, **settings):
    """Two GRPO steps' trainer on the tiny model over 8 think prompts, 4 rollouts each, K = 3; with the
    policy and the catalog's SIDs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer.grpo import RecGRPOConfig, RecGRPOTrainer

    path, _, _ = sid_model
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    valid = set(sample.catalog.sid_text().drop_nulls().to_list())
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train", think=True).head(8)
    config = RecGRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                           num_candidates=3, max_reasoning_tokens=8, max_completion_length=16, learning_rate=1e-2,
                           report_to="none", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, beta=0.0, **settings)

    def brevity(completions, **_):  # varies between random rollouts, so advantages are not all zero
        return [-len(c[0]["content"]) / 100 for c in completions]

    trainer = RecGRPOTrainer(model=model, args=config, trie=SidTrie.from_sids(tokenizer, valid), processing_class=tokenizer,
                             reward_funcs=rewards or [prefix_match, rank_reward, format_reward, brevity, *extra_rewards], callbacks=list(callbacks),
                             train_dataset=datasets.Dataset.from_polars(rows.select("prompt", "target_sid")))
    return trainer, model, valid


def test_grpo_steps_with_two_stage_constrained_rollouts(sid_model, sample, tmp_path):
    trainer, model, valid = _grpo_trainer(sid_model, sample, tmp_path, sid_epsilon_low=0.05, sid_epsilon_high=0.05, no_hit_weight=0.5)
    before = _weights(model)
    trainer.train()
    assert all(len(c) == 3 and set(c) <= valid for c in trainer._candidates)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(math.isfinite(h["loss"]) for h in logged)
    assert any("rollout_hit_rate" in key for key in logged[0]), logged[0].keys()
    assert logged[0]["rewards/format_reward/mean"] == 1.0 and not torch.equal(before, _weights(model))
    assert learning_signal(trainer) == {"logged_steps": 2, "steps_without_reward_spread": 0}


def test_grpo_says_when_no_group_had_a_reward_spread(sid_model, sample, tmp_path):
    """A reward every rollout earns alike gives zero advantages: the policy does not move, and the report says so."""
    trainer, model, _ = _grpo_trainer(sid_model, sample, tmp_path, rewards=[format_reward])
    before = _weights(model)
    trainer.train()
    signal = learning_signal(trainer)
    assert signal["steps_without_reward_spread"] == signal["logged_steps"] == 2 and "temperature" in signal["fix"]
    assert torch.equal(before, _weights(model))


def test_grpo_beam_groups_rank_distinct_sids(sid_model, sample, tmp_path):
    """rollout = "beam": each prompt's group is its num_generations best distinct SIDs, every copy sees the slate,
    and the slate-rank reward spreads the group's rewards."""
    from recot.trainer.grpo import RecGRPOConfig

    with pytest.raises(ValueError, match="reasoning = False"):
        RecGRPOConfig(output_dir=str(tmp_path / "x"), rollout="beam", use_cpu=True, bf16=False, report_to="none")
    trainer, model, valid = _grpo_trainer(sid_model, sample, tmp_path, extra_rewards=[slate_rank_penalty], rollout="beam",
                                          reasoning=False)
    before = _weights(model)
    trainer.train()
    groups = [trainer._answers[i:i + 4] for i in range(0, len(trainer._answers), 4)]
    assert groups and all(len(set(g)) == 4 and set(g) <= valid for g in groups)
    assert all(trainer._candidates[i] == trainer._answers[i - i % 4:i - i % 4 + 4] for i in range(len(trainer._answers)))
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[0]["rewards/slate_rank_penalty/std"] > 0 and not torch.equal(before, _weights(model))


def test_rejection_sampling_keeps_only_hits_and_trains_on_them(sid_model, sample, tmp_path):
    from recot.curation.next_item import next_item_rows
    from recot.runs.recipe import rejection_samples
    from recot.synth.job import choose_split
    from recot.trainer.sft import RecSFTConfig, train_sft

    path, _, _ = sid_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train", think=True).head(3)
    # a trie of two SIDs, one of them the first row's target: about half the rollouts hit, none of the others can
    trie = SidTrie.from_sids(tokenizer, [rows["target_sid"][0], sample.catalog.sid_text().drop_nulls()[-1]])
    kept = rejection_samples(path, rows.to_dicts(), trie, samples=6, max_reasoning_tokens=4)
    first = rows.to_dicts()[0]
    assert kept and all(k["completion"][0]["content"].endswith(first["target_sid"]) for k in kept)
    assert all(k["prompt"] == first["prompt"] for k in kept) and "<think>" in kept[0]["completion"][0]["content"]
    config = RecSFTConfig(output_dir=str(tmp_path / "rft"), model_path=str(path), max_steps=1, per_device_train_batch_size=2,
                          report_to="none", use_cpu=True, bf16=False, save_strategy="no", max_length=256)
    assert math.isfinite(train_sft(config, datasets.Dataset.from_list(kept)).state.log_history[-1]["train_loss"])


def test_recipe_experts_per_domain_then_distillation(sid_model, sample, sample_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from recot.curation.export import ExportConfig, export
    from recot.curation.store import Store
    from recot.runs.recipe import RecipeConfig, run_recipe
    from recot.synth.job import SynthConfig, run_synth

    path, _, _ = sid_model
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r3_cot_hindsight"], limit=30), progress=False)
    items = sample.catalog.items
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(type(sample.catalog)(items.filter(pl.col("item_id").hash() % 2 == 0), sample.catalog.dialect), "tools")
        store.load_catalog(type(sample.catalog)(items.filter(pl.col("item_id").hash() % 2 == 1), sample.catalog.dialect), "parts")
        store.ingest(tmp_path / "s" / "traces.parquet")
        export(store, ExportConfig(name="r", out=tmp_path / "export", formats=["grpo"], valid_share=0.0))
    tiny = {"max_steps": 1, "per_device_train_batch_size": 2, "use_cpu": True, "bf16": False}
    config = RecipeConfig(base_model=str(path), export=tmp_path / "export", out=tmp_path / "recipe", unify="distill",
                          # beam groups rank distinct SIDs and the slate-rank penalty scores each by its place, so every group
                          # has a spread to learn from whatever the random model prefers: the experts move
                          rewards=["slate_rank", "format"],
                          grpo={**tiny, "max_steps": 3, "per_device_train_batch_size": 4, "num_generations": 4, "num_candidates": 4,
                                "rollout": "beam", "reasoning": False,
                                "max_reasoning_tokens": 8,
                                "max_completion_length": 12, "learning_rate": 1e-2},
                          distill={**tiny, "max_completion_length": 6, "learning_rate": 1e-2})
    report = run_recipe(config)
    assert set(report["experts"]) == {"tools", "parts"} and all(n > 0 for n in report["domains"].values())
    base, unified = AutoModelForCausalLM.from_pretrained(path), AutoModelForCausalLM.from_pretrained(report["unified"])
    expert = AutoModelForCausalLM.from_pretrained(report["experts"]["tools"])
    assert not torch.equal(_weights(base), _weights(expert)) and not torch.equal(_weights(base), _weights(unified))


def test_train_and_eval_commands(sid_model, sample, sample_path, tmp_path):
    """`recot train sft CONFIG` on an export, then `recot eval`: report.json with every metric and a plot."""
    import json
    import subprocess

    from recot.curation.export import ExportConfig, export
    from recot.curation.store import Store
    from recot.synth.job import SynthConfig, run_synth

    path, _, _ = sid_model
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r3_cot_hindsight"], limit=20), progress=False)
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "s" / "traces.parquet")
        export(store, ExportConfig(name="e", out=tmp_path / "export", formats=["sft"], dataset=sample_path))
    (tmp_path / "sft.toml").write_text(f"""model_path = "{path}"\ndataset_path = "{tmp_path / 'export'}"\n
output_dir = "{tmp_path / 'model'}"\nmax_steps = 1\nper_device_train_batch_size = 2\nuse_cpu = true\nbf16 = false
report_to = "none"\nsave_strategy = "no"\nmax_length = 384\n""")
    cli = RECOT
    done = subprocess.run([*cli, "train", "sft", str(tmp_path / "sft.toml"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["output_dir"] == str(tmp_path / "model")  # stdout holds the report alone
    (tmp_path / "eval.toml").write_text("[sasrec]\nepochs = 2\n")  # every baseline, SASRec trained briefly
    done = subprocess.run([*cli, "eval", "--config", str(tmp_path / "eval.toml"), "--model", str(tmp_path / "model"), "--export",
                           str(tmp_path / "export"), "--limit", "4", "--k", "3", "--out", str(tmp_path / "eval"), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["rows"] == 4 and report["direct"]["sid_validity"] == 1.0 and report["think"]["sid_validity"] == 1.0
    assert {"recall@3", "ndcg@3", "pass@4", "cot_tokens", "ehr", "cov_rate"} <= set(report["think"])
    for method in ("direct", "think", "most_popular", "transition", "sasrec"):  # the same 4 rows for every method
        low, high = report[method]["ci95"]["recall@3"]
        assert 0 <= low <= report[method]["recall@3"] <= high <= 1, method
    assert (tmp_path / "eval" / "report.png").stat().st_size > 1000
    # the untrained start on the same rows: the trained model's report carries the paired difference from it
    (tmp_path / "model-only.toml").write_text("baselines = []\n")
    common = ["--config", str(tmp_path / "model-only.toml"), "--export", str(tmp_path / "export"), "--k", "3", "--no-think", "--json"]
    done = subprocess.run([*cli, "eval", "--model", str(path), "--limit", "4", "--out", str(tmp_path / "start"), *common],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    start = json.loads((tmp_path / "start" / "report.json").read_text())
    done = subprocess.run([*cli, "eval", "--model", str(tmp_path / "model"), "--limit", "4", "--against", str(tmp_path / "start"),
                           "--out", str(tmp_path / "after"), *common], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads((tmp_path / "after" / "report.json").read_text())
    change = after["against"]["direct"]["recall@3"]
    assert change["difference"] == pytest.approx(after["direct"]["recall@3"] - start["direct"]["recall@3"])
    assert change["ci95"][0] <= change["difference"] <= change["ci95"][1]
    done = subprocess.run([*cli, "eval", "--model", str(path), "--limit", "3", "--against", str(tmp_path / "start"),
                           "--out", str(tmp_path / "other"), *common], capture_output=True, text=True)
    assert done.returncode != 0 and "ranks.json" in done.stderr and "same split, part and limit" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('learning_rat = 0.1\noutput_dir = "x"\n')
    done = subprocess.run([*cli, "train", "sft", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "learning_rat" in done.stderr and "bad.toml" in done.stderr


def test_sft_with_lora_keeps_the_sid_embeddings_trainable(sid_model, sample, tmp_path):
    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer.sft import RecSFTConfig, train_sft

    path, _, _ = sid_model
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train").head(8)
    config = RecSFTConfig(output_dir=str(tmp_path / "lora"), model_path=str(path), max_steps=1, lora_r=4,
                          per_device_train_batch_size=4, report_to="none", use_cpu=True, bf16=False, save_strategy="no", max_length=256)
    trainer = train_sft(config, datasets.Dataset.from_polars(rows.select("prompt", "completion")))
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable) and any("embed_tokens" in name for name in trainable)
    assert (tmp_path / "lora" / "adapter_config.json").exists()


def test_rollouts_without_reasoning_sample_the_answer_under_the_trie(sid_model, sample):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer.rollout import two_stage

    path, _, _ = sid_model
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    valid = set(sample.catalog.sid_text().drop_nulls().to_list())
    trie = SidTrie.from_sids(tokenizer, valid)
    prompt = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train").to_dicts()[0]["prompt"]
    ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
    greedy = two_stage(model, tokenizer, [ids] * 6, trie, 3, reasoning=False)
    drawn = two_stage(model, tokenizer, [ids] * 6, trie, 3, reasoning=False, generation_config=GenerationConfig(do_sample=True))
    def decode(rows):
        return [[tokenizer.decode(b) for b in row] for row in rows]

    assert len({tuple(r) for r in decode(greedy.beams)}) == 1  # beam search alone: every rollout alike
    firsts = {row[0] for row in decode(drawn.beams)}
    assert len(firsts) > 1 and firsts <= valid and all(len(row) == 3 and len(set(row)) == 3 for row in decode(drawn.beams))


def _patterned(count: int, seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """Sequences over 40 items that walk by a step of 1 or 3: the next item depends on the last two."""
    import random

    rng = random.Random(seed)
    histories, targets = [], []
    for _ in range(count):
        start, step, length = rng.randrange(40), rng.choice([1, 3]), rng.randint(2, 8)
        walk = [f"i{(start + j * step) % 40}" for j in range(length + 1)]
        histories.append(walk[:-1])
        targets.append(walk[-1])
    return histories, targets


def test_sasrec_and_transition_learn_a_pattern_they_can_see():
    """Transition sees only the last item, so it can tell the two walks apart only by chance; SASRec sees the
    sequence and learns both."""
    from recot.trainer.baselines import SASRecConfig, SASRecRecommender, Transition
    from recot.trainer.evaluate import ranks_of

    histories, targets = _patterned(2500)
    test_h, test_t = _patterned(400, seed=1)
    transition = ranks_of(Transition(histories, targets).rank(test_h, 10), test_t)
    sasrec = SASRecRecommender(histories, targets, 8, SASRecConfig(epochs=12))
    learnt = ranks_of(sasrec.rank(test_h, 10), test_t)
    assert ((transition >= 0) & (transition < 10)).mean() > 0.95  # both next items are among the last one's followers
    assert 0.3 < (transition == 0).mean() < 0.7
    assert (learnt == 0).mean() > 0.85 and sasrec.losses[-1] < sasrec.losses[0] / 3


def test_bootstrap_intervals_hold_the_mean_and_narrow_with_rows():
    import numpy as np

    from recot.trainer.evaluate import bootstrap_intervals

    rng = np.random.default_rng(0)
    few, many = rng.integers(-1, 10, 200), rng.integers(-1, 10, 20000)
    small, large = bootstrap_intervals(few, [5], 500), bootstrap_intervals(many, [5], 500)
    hit = ((few >= 0) & (few < 5)).mean()
    assert small["recall@5"][0] < hit < small["recall@5"][1]
    assert large["recall@5"][1] - large["recall@5"][0] < (small["recall@5"][1] - small["recall@5"][0]) / 5
    assert bootstrap_intervals(few, [5], 500) == small  # seeded


def test_paired_difference_is_tighter_than_two_marginal_intervals():
    import numpy as np

    from recot.trainer.evaluate import bootstrap_intervals, paired_difference

    rng = np.random.default_rng(1)
    base = rng.integers(-1, 30, 3000)  # about a third within the top 10
    better = base.copy()
    better[rng.choice(np.flatnonzero((base < 0) | (base >= 10)), 60, replace=False)] = 3  # 60 misses become hits
    got = paired_difference(base, better, [10], 500)["recall@10"]
    assert got["difference"] == pytest.approx(60 / 3000)
    assert 0 < got["ci95"][0] < got["difference"] < got["ci95"][1]  # the gain is outside chance here...
    a, b = bootstrap_intervals(base, [10], 500)["recall@10"], bootstrap_intervals(better, [10], 500)["recall@10"]
    assert b[0] < a[1]  # ...though the two marginal intervals overlap
    same = paired_difference(base, base, [10], 200)["ndcg@10"]
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0]}
    with pytest.raises(ValueError, match="same rows"):
        paired_difference(base, base[:10], [10])


def test_plain_loss_on_cpu_equals_trls_fused_loss(sid_model, sample, tmp_path):
    """RecSFTTrainer skips TRL's tiled fused LM head where it has no Triton: same loss, same metrics, less time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer.sft import RecSFTConfig, RecSFTTrainer

    path, _, _ = sid_model
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train").select("prompt", "completion").head(8)
    data = datasets.Dataset.from_list(rows.to_dicts())
    losses = {}
    for fused in (True, False):
        args = RecSFTConfig(output_dir=str(tmp_path / str(fused)), per_device_train_batch_size=8, report_to="none",
                            max_length=384, fused_lm_head=fused, early_stopping_patience=0)  # no validation set here
        trainer = RecSFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=data,
                                processing_class=AutoTokenizer.from_pretrained(path))
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        losses[fused] = (float(trainer.compute_loss(trainer.model, dict(batch))), trainer._metrics["train"]["mean_token_accuracy"][-1],
                         trainer._metrics["train"]["entropy"][-1])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert RecSFTConfig(output_dir=str(tmp_path)).gradient_checkpointing is False  # a CPU: no recomputation by default


def test_vllm_and_transformers_rank_the_same_sids(sid_model, sample, tmp_path):
    """The trie as a vLLM logits processor: the engine's constrained beams and two-stage rollouts equal
    transformers' on the tiny model (same SIDs in the same order, every one valid)."""
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer import vllm_decoding
    from recot.trainer.rollout import two_stage

    path, _, _ = sid_model
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    valid = set(sample.catalog.sid_text().drop_nulls().to_list())
    trie = SidTrie.from_sids(tokenizer, valid)
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "test").head(8)
    think = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "test", think=True).head(4)
    think_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in think["prompt"]]
    expected = recommend(model, tokenizer, rows["prompt"].to_list(), trie, k=5)
    expected_think = two_stage(model, tokenizer, [list(p) for p in think_ids], trie, 3, True, 12)
    llm = vllm_decoding.constrained_engine(path, dtype="float32", max_model_len=1024, enforce_eager=True)
    try:
        trie_file = vllm_decoding.save_trie(trie, tmp_path / "trie.json")
        got = vllm_decoding.recommend(llm, tokenizer, rows["prompt"].to_list(), trie, trie_file, k=5)
        got_think = vllm_decoding.two_stage(llm, tokenizer, think_ids, trie_file, trie.depth, 3, True, 12)
    finally:
        vllm_decoding.shutdown(llm)
    assert all(len(r) == 5 and set(r) <= valid for r in got.ranked)
    assert got.ranked == expected.ranked
    assert got_think.reasoning == expected_think.reasoning and got_think.beams == expected_think.beams


def test_eval_on_vllm_reports_the_metrics_of_transformers(sid_model, sample_export, tmp_path):
    """`evaluate` with engine = "vllm" scores the same rows as with transformers, with the same direct and
    greedy-reasoning metrics (sampled Pass@n draws differ between the engines)."""
    pytest.importorskip("vllm")
    from recot.trainer.evaluate import EvalConfig, evaluate

    path, _, _ = sid_model
    common = {"model": path, "export": sample_export, "limit": 6, "k": 3, "samples": 2, "max_reasoning_tokens": 8, "baselines": [],
              "bootstrap": 0}
    reports = {engine: evaluate(EvalConfig(**common, engine=engine, out=tmp_path / engine,
                                           vllm={"dtype": "float32", "max_model_len": 1024, "enforce_eager": True}))
               for engine in ("transformers", "vllm")}
    assert reports["vllm"]["engine"] == "vllm" and reports["transformers"]["engine"] == "transformers"
    for mode in ("direct", "think"):
        for metric in ("recall@1", "ndcg@1", "recall@3", "ndcg@3", "sid_validity"):
            assert reports["vllm"][mode][metric] == pytest.approx(reports["transformers"][mode][metric]), (mode, metric)
    assert reports["vllm"]["think"]["cot_tokens"] == reports["transformers"]["think"]["cot_tokens"]


def test_grpo_rolls_out_on_vllm_with_the_policys_weights(sid_model, sample, tmp_path):
    """rollout_engine = "vllm": every candidate a catalog SID, and the engine rolls out with the weights the
    policy had after the previous step (synced in-process), not the starting ones."""
    pytest.importorskip("vllm")
    from transformers import TrainerCallback

    after_first: list[torch.Tensor] = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                after_first.append(model.get_input_embeddings().weight.detach().clone())

    trainer, model, valid = _grpo_trainer(sid_model, sample, tmp_path, callbacks=[Snapshot()], model_path=str(sid_model[0]),
                                          rollout_engine="vllm",
                                          vllm_engine={"dtype": "float32", "max_model_len": 1024, "enforce_eager": True})
    start = model.get_input_embeddings().weight.detach().clone()
    try:
        trainer.train()
        engine = trainer._engine.apply_model(
            lambda m: next(p for name, p in m.named_parameters() if name.endswith("embed_tokens.weight")).detach().cpu().clone())[0]
    finally:
        trainer.close_rollout_engine()
    assert all(len(c) == 3 and set(c) <= valid for c in trainer._candidates)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(math.isfinite(h["loss"]) for h in logged) and logged[0]["rewards/format_reward/mean"] == 1.0
    rows_used = start.shape[0]
    assert torch.equal(engine[:rows_used], after_first[0]) and not torch.equal(engine[:rows_used], start)


def _launch(sid_model, sample, work: Path, processes: int) -> dict[str, list[dict]]:
    """tests/distributed_job.py (SFT, then GRPO) as one process, or as ``processes`` ranks under ``accelerate launch``
    (gloo on the CPU): each kind's report of every rank."""
    import subprocess
    import sys

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split

    path, _, _ = sid_model
    work.mkdir()
    catalog = work / "catalog.parquet"
    sample.catalog.items.select("item_id", "title", "brand").with_columns(sid_text=sample.catalog.sid_text()).write_parquet(catalog)
    rows = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train")
    rows.head(16).select("prompt", "completion").write_parquet(work / "sft.parquet")
    rows.head(4).select("prompt", "target_sid").write_parquet(work / "grpo.parquet")
    job = [str(Path(__file__).with_name("distributed_job.py")), str(path), str(catalog), str(work), str(work)]
    launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command = [*launcher, *job] if processes > 1 else [sys.executable, *job]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return {kind: [json.loads((work / "reports" / f"{kind}-{rank}.json").read_text()) for rank in range(processes)]
            for kind in ("sft", "grpo")}


def test_sft_and_grpo_under_accelerate_launch_on_two_processes_match_one(sid_model, sample, tmp_path):
    """What `accelerate launch --multi_gpu --num_processes N` does on N GPUs, on 2 CPU processes (gloo): both ranks train,
    each row is trained once per epoch by one rank, the loss and the saved weights match one process at the same global
    batch (within 1e-4 on the loss, 1e-4 on any weight: float sums in another order), and only rank 0 writes the model.
    GRPO rolls out with the catalog trie (beam groups: deterministic, so the two runs can be compared)."""
    from safetensors.torch import load_file

    single, double = _launch(sid_model, sample, tmp_path / "one", 1), _launch(sid_model, sample, tmp_path / "two", 2)
    for kind in ("sft", "grpo"):
        one, ranks = single[kind][0], double[kind]
        assert [r["world"] for r in ranks] == [2, 2] and all(r["seen"] for r in ranks), kind
        assert ranks[0]["steps"] == ranks[1]["steps"] == one["steps"] > 0
        seen = [json.dumps(x) for r in ranks for x in r["seen"]]
        assert sorted(seen) == sorted(json.dumps(x) for x in one["seen"])  # the same rows as one process
        if kind == "sft":  # 16 rows, 4 per global step: every row once, no row on both ranks
            assert len(set(seen)) == len(seen) == 16
        else:  # a prompt's rollouts: each group whole on one rank
            assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
        assert ranks[0]["losses"] == pytest.approx(one["losses"], abs=1e-4)
        assert ranks[1]["writes"] == [] and any(w.endswith("config.json") for w in ranks[0]["writes"])
        weights = [load_file(run / "runs" / kind / "model.safetensors") for run in (tmp_path / "one", tmp_path / "two")]
        assert weights[0].keys() == weights[1].keys()
        assert max(float((weights[0][name] - weights[1][name]).abs().max()) for name in weights[0]) < 1e-4, kind


def test_beam_search_runs_each_prompt_once_and_returns_generates_beams(sid_model, sample):
    """recot's beam search (prompts prefilled once, the cache repeated per beam) against transformers' own (every prompt
    repeated k times first): the same SIDs in the same order, the same scores, on left-padded prompts of mixed length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.next_item import next_item_rows
    from recot.synth.job import choose_split
    from recot.trainer.rollout import beam_search
    from recot.trainer.trie import TrieLogitsProcessor

    path, _, _ = sid_model
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    trie = SidTrie.from_catalog(tokenizer, sample.catalog)
    prompts = next_item_rows(choose_split(sample, "auto", 10), sample.catalog, "train")["prompt"].to_list()[:6]
    tokenizer.padding_side = "left"
    batch = tokenizer([f"{p}\n" for p in prompts], return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # mixed lengths: padding is exercised
    settings = {"num_return_sequences": 4, "do_sample": False, "max_new_tokens": trie.depth + 1, "pad_token_id": tokenizer.pad_token_id,
                "output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        ours = beam_search(model, dict(batch), 4, logits_processor=[TrieLogitsProcessor(trie, width)], **settings)
        theirs = model.generate(**batch, num_beams=4, logits_processor=[TrieLogitsProcessor(trie, width)], **settings)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.allclose(ours.sequences_scores, theirs.sequences_scores, atol=1e-4)
