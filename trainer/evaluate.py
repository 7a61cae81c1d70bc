"""Offline evaluation: beam search constrained to the catalog trie, then ranking metrics.

Recall@K and NDCG@K treat the real next item as the one relevant item; validity is the share of
returned SIDs that exist (1.0 by construction under the trie, reported so an unconstrained run
can be compared); the most-popular baseline ranks the training targets by frequency.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from recot.synth.cot import grounding
from recot.trainer.rewards import answer_sid
from recot.trainer.trie import SidTrie


@dataclass(frozen=True)
class Ranking:
    """Ranked SIDs per prompt and the tokens each answer cost."""

    ranked: list[list[str]]
    completion_tokens: list[int]


def recommend(model, tokenizer, prompts: Sequence[list[dict]], trie: SidTrie | None, k: int = 10,
              batch_size: int = 16) -> Ranking:
    """Top-``k`` SIDs per conversational prompt by beam search (constrained when ``trie`` is given)."""
    tokenizer.padding_side = "left"
    ranked, cost = [], []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        width = batch["input_ids"].shape[1]
        with torch.no_grad():
            out = model.generate(**batch, num_beams=k, num_return_sequences=k, do_sample=False, early_stopping=True,
                                 max_new_tokens=(trie.depth + 1) if trie else 16, pad_token_id=tokenizer.pad_token_id,
                                 prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(width) if trie else None)
        decoded = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        lengths = (out[:, width:] != tokenizer.pad_token_id).sum(1).tolist()
        for row in range(len(texts)):
            answers = [answer_sid(text) for text in decoded[row * k:(row + 1) * k]]
            ranked.append(list(dict.fromkeys(a for a in answers if a)))
            cost.append(lengths[row * k])
    return Ranking(ranked, cost)


def ranking_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = (1, 5, 10),
                    valid: set[str] | None = None) -> dict[str, float]:
    """Recall@K, NDCG@K (one relevant item) and, with ``valid``, the share of returned SIDs that exist."""
    n = max(len(targets), 1)
    ranks = [next((i for i, sid in enumerate(r) if sid == t), None) for r, t in zip(ranked, targets)]
    out = {}
    for k in ks:
        out[f"recall@{k}"] = sum(r is not None and r < k for r in ranks) / n
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r is not None and r < k) / n
    if valid is not None:
        returned = [sid for r in ranked for sid in r]
        out["sid_validity"] = sum(sid in valid for sid in returned) / max(len(returned), 1)
    return out


def most_popular(train_targets: Sequence[str], n: int, k: int = 10) -> list[list[str]]:
    """The baseline: the ``k`` most frequent training targets, for every one of ``n`` rows."""
    top = [sid for sid, _ in Counter(train_targets).most_common(k)]
    return [top] * n


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Path
    dataset: Path
    split: Path | None = Field(None, description="the split.json synthesis wrote (or its output folder): evaluate on the "
                               "split the training data was made on; without it the dataset's default split (auto)")
    part: Literal["valid", "test"] = "test"
    k: int = Field(10, ge=1, description="beam width and the largest cut-off")
    limit: int | None = Field(None, ge=1, description="evaluate a seeded random sample of this many rows")
    think: bool = Field(True, description="also evaluate with reasoning (greedy <think>, then the constrained beam)")
    samples: int = Field(4, ge=1, description="sampled reasoning rollouts per row for Pass@samples")
    max_reasoning_tokens: int = 128
    max_history: int = 10
    batch_size: int = 16
    out: Path = Path("out/eval")


def evaluate(config: EvalConfig) -> dict:
    """Direct and think-mode rankings of ``part`` against the most-popular baseline; writes report.json and report.png."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from recot.synth.loaders import load_dataset
    from recot.synth.splits import SplitSpec
    from recot.trainer.data import next_item_rows
    from recot.trainer.rollout import two_stage

    dataset = load_dataset(config.dataset)
    spec = SplitSpec.load(config.split) if config.split else SplitSpec.choose(dataset.boundaries, "auto", config.max_history, dataset.name)
    split = spec.build(dataset.sequences())
    rows = next_item_rows(split, dataset.catalog, config.part).with_columns(
        think_prompt=next_item_rows(split, dataset.catalog, config.part, think=True)["prompt"])
    if config.limit and rows.height > config.limit:
        rows = rows.sample(config.limit, seed=0).sort("user_id")
    tokenizer, model = AutoTokenizer.from_pretrained(config.model), AutoModelForCausalLM.from_pretrained(config.model)
    valid = set(dataset.catalog.sid_text().drop_nulls().to_list())
    trie = SidTrie.from_sids(tokenizer, valid)
    targets = rows["target_sid"].to_list()
    ks = sorted({1, 5, config.k} & set(range(1, config.k + 1)))
    direct = recommend(model, tokenizer, rows["prompt"].to_list(), trie, config.k, config.batch_size)
    train = next_item_rows(split, dataset.catalog, "train")
    report = {"rows": len(targets), "part": config.part, "k": config.k, "split": spec.model_dump(),
              "split_source": str(config.split) if config.split else "chosen by eval (auto)",
              "direct": ranking_metrics(direct.ranked, targets, ks, valid) | {"completion_tokens": mean(direct.completion_tokens)},
              "most_popular": ranking_metrics(most_popular(train["target_sid"].to_list(), len(targets), config.k), targets, ks)}
    if config.think:
        prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                   for p in rows["think_prompt"].to_list()]
        history = rows["history_sids"].to_list()
        ranked, lengths, ehr, cov, passed = [], [], [], [], []
        sampling = GenerationConfig(do_sample=True, temperature=1.0)
        for start in range(0, len(prompts), config.batch_size):
            batch = [list(p) for p in prompts[start:start + config.batch_size]]
            greedy = two_stage(model, tokenizer, batch, trie, config.k, True, config.max_reasoning_tokens)
            sampled = two_stage(model, tokenizer, [p for p in batch for _ in range(config.samples)], trie, 1, True,
                                config.max_reasoning_tokens, sampling)
            for row, (reasoning, beams) in enumerate(zip(greedy.reasoning, greedy.beams)):
                index = start + row
                ranked.append(list(dict.fromkeys(tokenizer.decode(b, skip_special_tokens=True) for b in beams)))
                lengths.append(len(reasoning))
                e, c = grounding(tokenizer.decode(reasoning, skip_special_tokens=True), history[index])
                ehr.append(e)
                cov.append(c)
                tops = sampled.beams[row * config.samples:(row + 1) * config.samples]
                passed.append(any(tokenizer.decode(t[0], skip_special_tokens=True) == targets[index] for t in tops))
        report["think"] = ranking_metrics(ranked, targets, ks, valid) | {
            "cot_tokens": mean(lengths), f"pass@{config.samples}": mean(passed), "ehr": mean(ehr), "cov_rate": mean(cov)}
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, ks, config.out / "report.png")
    return report


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _plot(report: dict, ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in ("direct", "think", "most_popular"):
        if name in report:
            for axis, metric in zip(axes, ("recall", "ndcg")):
                axis.plot(ks, [report[name][f"{metric}@{k}"] for k in ks], marker="o", label=name)
                axis.set_title(f"{metric.upper()}@K ({report['part']}, {report['rows']} rows)")
                axis.set_xlabel("K")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
