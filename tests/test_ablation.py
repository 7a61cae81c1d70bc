"""The grid on a tiny model: one command exports the store's traces at each CoT ratio, aligns the base once,
fine-tunes every (alignment, ratio) cell from the same base, runs GRPO with reasoning, evaluates each model
with and without reasoning on the same rows against the reference cell, probes its perception, and writes
the table and plot; more CoT in the data costs more training tokens per sample, and the table says so."""

from __future__ import annotations

import json

import pytest

from recot.testing import curated_store

pytest.importorskip("trl")


def test_grid_over_alignment_cot_ratio_and_stage(sample_path, tiny_model, tmp_path):
    from recot.runs.ablation import AblationConfig, run_ablation

    store = curated_store(sample_path, tmp_path, ["r3_cot_hindsight", "r1_relation"], 48)
    config = AblationConfig(store=store, dataset=sample_path, base_model=str(tiny_model), out=tmp_path / "ablation",
                            ratios=[1.0, 0.0], tasks=["r3_cot_hindsight", "r1_relation"], probe_items=3,
                            align={"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 256},
                            sft={"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 384},
                            grpo={"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4, "num_candidates": 2,
                                  "max_completion_length": 24, "logging_steps": 1},
                            eval={"limit": 6, "k": 3, "samples": 1, "max_reasoning_tokens": 12, "baselines": [], "bootstrap": 20})
    table = run_ablation(config)
    assert [(r["align"], r["cot_ratio"], r["stage"], r["mode"]) for r in table] == [
        (arm, ratio, stage, mode) for arm in ("none", "align") for ratio in (0.0, 1.0)
        for stage in ("sft", "sft+grpo") for mode in ("direct", "think")]
    sft = {r["cot_ratio"]: r for r in table if r["stage"] == "sft" and r["mode"] == "direct" and r["align"] == "none"}
    assert sft[1.0]["train_tokens_per_sample"] > 1.5 * sft[0.0]["train_tokens_per_sample"]  # the CoT's cost, measured
    assert all(r["eval_rows"] == 6 and 0 <= r["recall@3"] <= 1 and r["recall@3_ci95"] is not None for r in table)
    assert all(r["cot_tokens"] > 0 for r in table if r["mode"] == "think")
    reference = table[0]["vs_reference"]["recall@3"]
    assert reference["difference"] == 0.0 and reference["ci95"] == [0.0, 0.0]
    assert all(len(r["vs_reference"]["recall@3"]["ci95"]) == 2 for r in table)
    assert all(r["probe"]["train"]["items"] == 3 and r["probe"]["held_out"]["items"] == 3 for r in table)
    saved = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert saved["table"] == table and saved["bases"]["align"]["probe"]["train"]["items"] == 3
    assert saved["bases"]["base_probe"]["chance"]["title_to_sid"] > 0
    exported = {ratio: json.loads((tmp_path / "ablation" / f"cot-{ratio:g}" / "export" / "data_card.json").read_text())
                for ratio in (0, 1)}
    assert set(exported[0]["by_task"]) == {"r3_cot_hindsight", "r1_relation"} and exported[0]["align"]["relation"]["train"] > 0
    assert exported[0]["r3_with_cot_by_domain"] != exported[1]["r3_with_cot_by_domain"]
    markdown = (tmp_path / "ablation" / "ablation.md").read_text()
    assert markdown.count("\n| ") == len(table) and (tmp_path / "ablation" / "ablation.png").stat().st_size > 0
    assert "Aligned base:" in markdown
    signals = [r["grpo_signal"] for r in table if r["stage"] == "sft+grpo"]
    assert all(s["logged_steps"] == 1 for s in signals)  # what GRPO had to learn from, and a note when it had nothing
    assert ("GRPO (" in markdown) == any(s["steps_without_reward_spread"] for s in signals)
