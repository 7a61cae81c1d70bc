"""Offline evaluation: beam search constrained to the catalog trie, then ranking metrics.

Recall@K and NDCG@K treat the real next item as the one relevant item; validity is the share of
returned SIDs that exist (1.0 by construction under the trie, reported so an unconstrained run
can be compared); the most-popular baseline ranks the training targets by frequency.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recot.formats.grounding import grounding
from recot.trainer.baselines import SASRecConfig, SASRecRecommender, Transition, most_popular
from recot.trainer.rewards import answer_sid
from recot.trainer.rollout import Ranking, Rollouts, beam_search
from recot.trainer.trie import SidTrie


def recommend(model, tokenizer, prompts: Sequence[list[dict]], trie: SidTrie | None, k: int = 10,
              batch_size: int = 16) -> Ranking:
    """Top-``k`` SIDs per conversational prompt by beam search (constrained when ``trie`` is given)."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return rank_texts(model, tokenizer, texts, trie, k, batch_size)


def rank_texts(model, tokenizer, texts: Sequence[str], trie: SidTrie | None, k: int = 10, batch_size: int = 16) -> Ranking:
    """Top-``k`` SIDs per prompt text (already in the model's template, or plain text) by beam search."""
    tokenizer.padding_side = "left"
    ranked, cost = [], []
    model.eval()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        width = batch["input_ids"].shape[1]
        with torch.no_grad():
            out = beam_search(model, dict(batch), k, num_return_sequences=k, do_sample=False, early_stopping=True,
                              max_new_tokens=(trie.depth + 1) if trie else 16, pad_token_id=tokenizer.pad_token_id,
                              prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(width) if trie else None)
        decoded = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        lengths = (out[:, width:] != tokenizer.pad_token_id).sum(1).tolist()
        for row in range(batch["input_ids"].shape[0]):
            answers = [answer_sid(text) for text in decoded[row * k:(row + 1) * k]]
            ranked.append(list(dict.fromkeys(a for a in answers if a)))
            cost.append(lengths[row * k])
    return Ranking(ranked, cost)


def ranks_of(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """0-based rank of each target in its ranking (-1 when absent)."""
    return np.array([next((i for i, x in enumerate(r) if x == t), -1) for r, t in zip(ranked, targets)], dtype=np.int64)


def per_row_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Recall@K and NDCG@K of each row (one relevant item): the means are the metrics, resampled for intervals."""
    out = {}
    for k in ks:
        hit = (ranks >= 0) & (ranks < k)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1 / np.log2(np.maximum(ranks, 0) + 2), 0.0)
    return out


def ranking_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = (1, 5, 10),
                    valid: set[str] | None = None) -> dict[str, float]:
    """Recall@K, NDCG@K (one relevant item) and, with ``valid``, the share of returned SIDs that exist."""
    out = {name: float(values.mean()) if len(values) else 0.0
           for name, values in per_row_metrics(ranks_of(ranked, targets), ks).items()}
    if valid is not None:
        returned = [sid for r in ranked for sid in r]
        out["sid_validity"] = sum(sid in valid for sid in returned) / max(len(returned), 1)
    return out


def _resampled_means(per_row: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Means of each per-row value over the same ``resamples`` draws of rows with replacement."""
    rng = np.random.default_rng(seed)
    rows = len(next(iter(per_row.values())))
    means: dict[str, list[np.ndarray]] = {name: [] for name in per_row}
    for start in range(0, resamples, 100):  # chunks keep memory at 100 x rows
        picks = rng.integers(0, rows, size=(min(100, resamples - start), rows))
        for name, values in per_row.items():
            means[name].append(values[picks].mean(axis=1))
    return {name: np.concatenate(m) for name, m in means.items()}


def _percentiles(means: np.ndarray) -> list[float]:
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def bootstrap_intervals(ranks: np.ndarray, ks: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of Recall@K and NDCG@K over rows resampled with replacement."""
    if not len(ranks) or not resamples:
        return {}
    return {name: _percentiles(m) for name, m in _resampled_means(per_row_metrics(ranks, ks), resamples, seed).items()}


def paired_difference(base: np.ndarray, other: np.ndarray, ks: Sequence[int], resamples: int = 1000,
                      seed: int = 0) -> dict[str, dict]:
    """``other`` minus ``base`` on each metric, two rankings of the same rows, with a 95% interval from resampling
    rows jointly: the rows both get right or both miss cancel, so this interval is far tighter than the gap
    between two marginal intervals, and it is the one that says whether a change helped."""
    if len(base) != len(other):
        raise ValueError(f"paired rankings need the same rows: {len(base)} against {len(other)}")
    a, b = per_row_metrics(base, ks), per_row_metrics(other, ks)
    differences = {name: b[name] - a[name] for name in a}
    spread = _resampled_means(differences, resamples, seed) if resamples and len(base) else {}
    return {name: {"difference": float(d.mean()) if len(d) else 0.0, "ci95": _percentiles(spread[name]) if spread else []}
            for name, d in differences.items()}


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Path = Field(description="the trained model folder (with the SID tokens)")
    export: Path = Field(description="the recot export the model was trained on: its next-item rows of every part (written "
                         "with the dataset set), its catalog (the trie) and its split.json")
    part: Literal["valid", "test"] = Field("test", description="the split part evaluated")
    k: int = Field(10, ge=1, description="beam width and the largest cut-off")
    limit: int | None = Field(None, ge=1, description="evaluate a seeded random sample of this many rows")
    think: bool = Field(True, description="also evaluate with reasoning (greedy <think>, then the constrained beam)")
    samples: int = Field(4, ge=1, description="sampled reasoning rollouts per row for Pass@samples")
    max_reasoning_tokens: int = Field(128, ge=1, description="reasoning budget of think mode")
    batch_size: int = Field(16, ge=1, description="prompts per generate call")
    out: Path = Field(Path("out/eval"), description="report.json and report.png go here")
    baselines: list[Literal["most_popular", "transition", "sasrec"]] = Field(
        ["most_popular", "transition", "sasrec"], description="sequential baselines scored on the same rows, "
        "learnt from the split's training samples")
    sasrec: SASRecConfig = Field(SASRecConfig(), description="SASRec's size and training")
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% intervals of every metric (0: none)")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="what decodes: vLLM (the trie as its logits processor), transformers generate, or auto: "
        "vLLM when it is installed and a GPU is present (on a CPU transformers starts faster for an evaluation)")
    vllm: dict = Field({}, description="vllm.LLM arguments for engine vllm (dtype, max_model_len, gpu_memory_utilization, ...)")
    against: Path | None = Field(None, description="the out folder of an earlier evaluation of the same rows (another "
                                 "model, say a GRPO run's SFT start): the report adds this model's difference from it, "
                                 "each metric with a paired bootstrap 95% interval")

    def uses_vllm(self) -> bool:
        if self.engine != "auto":
            return self.engine == "vllm"
        import importlib.util

        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def evaluate(config: EvalConfig) -> dict:
    """The model's direct and think-mode rankings and the sequential baselines on the same rows of ``part``, each
    with Recall/NDCG@K and bootstrap 95% intervals; writes report.json and report.png."""
    from recot.models.loading import load_tokenizer
    from recot.trainer.data import export_catalog, export_rows, export_split

    spec, catalog = export_split(config.export), export_catalog(config.export)
    rows = export_rows(config.export, config.part)
    if config.limit and rows.height > config.limit:
        rows = rows.sample(config.limit, seed=0).sort("user_id")
    tokenizer = load_tokenizer(config.model, catalog, config.export)
    valid = set(catalog.sid_text().drop_nulls().to_list())
    trie = SidTrie.from_catalog(tokenizer, catalog)
    targets = rows["target_sid"].to_list()
    ks = sorted({1, 5, config.k} & set(range(1, config.k + 1)))
    config.out.mkdir(parents=True, exist_ok=True)
    with _decoders(config, tokenizer, trie) as (rank, rollout):
        direct = rank(rows["prompt"].to_list())
        think = _think(rollout, tokenizer, rows, targets, ks, valid, config) if config.think else None
    rankings = {"direct": direct.ranked} | ({"think": think.pop("ranked")} if think else {})
    report = {"rows": len(targets), "part": config.part, "k": config.k, "split": spec.model_dump(), "export": str(config.export),
              "engine": "vllm" if config.uses_vllm() else "transformers",
              "direct": _scored(direct.ranked, targets, ks, config, valid) | {"completion_tokens": mean(direct.completion_tokens)}}
    if think is not None:
        report["think"] = think
    train = export_rows(config.export, "train")
    sid_of = dict(zip(catalog.items["item_id"].to_list(), catalog.sid_text().to_list()))
    for name, ranked_items in _baselines(train, rows, config, spec.max_history).items():
        rankings[name] = [[sid_of[i] for i in r if sid_of.get(i)] for r in ranked_items]
        report[name] = _scored(rankings[name], targets, ks, config)
    ranks = {name: ranks_of(ranked, targets) for name, ranked in rankings.items()}
    if config.against:
        report["against"] = {"out": str(config.against), "direct": paired_difference(
            _earlier_ranks(config.against, targets), ranks["direct"], ks, config.bootstrap)}
    (config.out / "ranks.json").write_text(json.dumps({"targets": targets} | {n: r.tolist() for n, r in ranks.items()}) + "\n")
    (config.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, ks, config.out / "report.png")
    return report


def _earlier_ranks(out: Path, targets: Sequence[str]) -> np.ndarray:
    """The direct ranks an earlier evaluation saved in ``out``, checked to be of the same rows in the same order."""
    from recot.errors import DataError

    path = out / "ranks.json"
    if not path.exists():
        raise DataError(path, "no ranks.json here", "point `against` at the out folder of an evaluation made by this recot")
    earlier = json.loads(path.read_text())
    if earlier["targets"] != list(targets):
        raise DataError(path, f"its {len(earlier['targets'])} rows are not the {len(targets)} rows evaluated now",
                        "evaluate both models on the same split, part and limit")
    return np.array(earlier["direct"], dtype=np.int64)


Rank = Callable[[list[list[dict]]], Ranking]
Rollout = Callable[[list[list[int]], int, bool], Rollouts]


@contextmanager
def _decoders(config: EvalConfig, tokenizer, trie: SidTrie) -> Iterator[tuple[Rank, Rollout]]:
    """The chosen engine's direct ranking of chat prompts and its two-stage rollout ``(prompts, k, sampled)``;
    a vLLM engine is shut down on leaving."""
    if config.uses_vllm():
        from recot.trainer import vllm_decoding

        llm = vllm_decoding.constrained_engine(config.model, **config.vllm)
        trie_file = vllm_decoding.save_trie(trie, config.out / "trie.json")
        try:
            yield (lambda prompts: vllm_decoding.recommend(llm, tokenizer, prompts, trie, trie_file, config.k),
                   lambda prompts, k, sampled: vllm_decoding.two_stage(llm, tokenizer, prompts, trie_file, trie.depth, k, True,
                                                                       config.max_reasoning_tokens, 1.0 if sampled else 0.0))
        finally:
            vllm_decoding.shutdown(llm)
        return
    from transformers import GenerationConfig

    from recot.models.loading import load_model
    from recot.trainer.rollout import two_stage

    model = load_model(config.model)
    sampling = GenerationConfig(do_sample=True, temperature=1.0)
    yield (lambda prompts: recommend(model, tokenizer, prompts, trie, config.k, config.batch_size),
           lambda prompts, k, sampled: two_stage(model, tokenizer, prompts, trie, k, True, config.max_reasoning_tokens,
                                                 sampling if sampled else None))


def _scored(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int], config: EvalConfig,
            valid: set[str] | None = None) -> dict:
    """Metrics of one method, with the bootstrap 95% interval of each ranking metric under ``ci95``."""
    return ranking_metrics(ranked, targets, ks, valid) | {
        "ci95": bootstrap_intervals(ranks_of(ranked, targets), ks, config.bootstrap)}


def _baselines(train, rows, config: EvalConfig, max_len: int) -> dict[str, list[list[str]]]:
    """Each configured baseline's ranked item ids for ``rows``, learnt from the training samples ``train``."""
    histories, targets = train["history"].to_list(), train["target"].to_list()
    asked = rows["history"].to_list()
    out = {}
    if "most_popular" in config.baselines:
        out["most_popular"] = most_popular(targets, len(asked), config.k)
    if "transition" in config.baselines:
        out["transition"] = Transition(histories, targets).rank(asked, config.k)
    if "sasrec" in config.baselines:
        out["sasrec"] = SASRecRecommender(histories, targets, max_len, config.sasrec).rank(asked, config.k)
    return out


def _think(rollout: Rollout, tokenizer, rows, targets: Sequence[str], ks: Sequence[int],
           valid: set[str], config: EvalConfig) -> dict:
    """Greedy reasoning then the constrained beam, Pass@samples over sampled reasoning, CoT cost and grounding, and
    the ranked SIDs (``ranked``, not for the report); ``rollout(prompts, k, sampled)`` is the two-stage rollout."""
    prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
               for p in rows["think_prompt"].to_list()]
    history = rows["history_sids"].to_list()
    ranked, lengths, ehr, cov, passed = [], [], [], [], []
    for start in range(0, len(prompts), config.batch_size):
        batch = [list(p) for p in prompts[start:start + config.batch_size]]
        greedy = rollout(batch, config.k, False)
        sampled = rollout([p for p in batch for _ in range(config.samples)], 1, True)
        for row, (reasoning, beams) in enumerate(zip(greedy.reasoning, greedy.beams)):
            index = start + row
            ranked.append(list(dict.fromkeys(tokenizer.decode(b, skip_special_tokens=True) for b in beams)))
            lengths.append(len(reasoning))
            e, c = grounding(tokenizer.decode(reasoning, skip_special_tokens=True), history[index])
            ehr.append(e)
            cov.append(c)
            tops = sampled.beams[row * config.samples:(row + 1) * config.samples]
            passed.append(any(tokenizer.decode(t[0], skip_special_tokens=True) == targets[index] for t in tops))
    return _scored(ranked, targets, ks, config, valid) | {
        "ranked": ranked, "cot_tokens": mean(lengths), f"pass@{config.samples}": mean(passed), "ehr": mean(ehr), "cov_rate": mean(cov)}


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _plot(report: dict, ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in ("direct", "think", "most_popular", "transition", "sasrec"):
        if name in report:
            for axis, metric in zip(axes, ("recall", "ndcg")):
                axis.plot(ks, [report[name][f"{metric}@{k}"] for k in ks], marker="o", label=name)
                axis.set_title(f"{metric.upper()}@K ({report['part']}, {report['rows']} rows)")
                axis.set_xlabel("K")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
