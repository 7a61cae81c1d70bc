"""Offline evaluation: beam search constrained to the catalog trie, then ranking metrics.

Recall@K and NDCG@K treat the real next item as the one relevant item; validity is the share of
returned SIDs that exist (1.0 by construction under the trie, reported so an unconstrained run
can be compared); the most-popular baseline ranks the training targets by frequency.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.rewards import answer_sid
from trainer.trie import SidTrie


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
