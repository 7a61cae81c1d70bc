"""Usefulness of a CoT under a scorer model: delta_ll = log p(target SID | prompt, CoT) - log p(target SID | prompt).

A trace whose reasoning makes the real next item more likely to a (student-sized) scorer helps
training; one that makes it less likely does not. The prompt is the student prompt of the export
(history with SIDs and titles); the CoT is the trace's ``<think>`` block; only the target SID's
tokens are scored. Batched, padded forward passes with transformers; scores ``ll_cot``,
``ll_plain`` and ``delta_ll`` go to ``scores`` with the scorer's name as provenance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from curation.export import HISTORY_HEAD, R3_DIRECT
from curation.store import Store
from curation.trace_columns import trace_columns


def sid_logprobs(model, tokenizer, prefixes: Sequence[str], targets: Sequence[str], batch_size: int = 8,
                 max_length: int = 1024) -> list[float]:
    """Sum of log-probabilities of each ``targets[i]`` right after ``prefixes[i]`` (left-truncated to ``max_length``)."""
    import torch

    scores: list[float] = []
    for start in range(0, len(prefixes), batch_size):
        texts = [p + t for p, t in zip(prefixes[start:start + batch_size], targets[start:start + batch_size])]
        cut = [len(p) for p in prefixes[start:start + batch_size]]
        encoded = tokenizer(texts, return_offsets_mapping=True, return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length, add_special_tokens=False)
        offsets = encoded.pop("offset_mapping")
        with torch.no_grad():
            logits = model(**encoded).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, encoded["input_ids"][:, 1:, None])[..., 0]
        in_target = (offsets[:, 1:, 0] >= torch.tensor(cut)[:, None]) & encoded["attention_mask"][:, 1:].bool()
        scores += (logprobs * in_target).sum(dim=1).tolist()
    return scores


def run_usefulness(store: Store, scorer: str | Path, batch_size: int = 8, max_length: int = 1024) -> dict:
    """Score every answered R3 trace's delta_ll under the causal LM at ``scorer``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(scorer)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(scorer).eval()
    trace_columns(store, ("lines",))
    rows = store.con.execute("""
        SELECT t.trace_id, split_part(t.text, '</think>', 1) || '</think>' || chr(10) AS think, c.sid_text, h.lines
        FROM traces t JOIN catalog c ON c.item_id = t.target JOIN trace_columns h USING (trace_id)
        WHERE t.status = 'ok' AND t.task LIKE 'r3_%' AND t.text LIKE '<think>%' ORDER BY t.trace_id""").fetchall()
    prompts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{HISTORY_HEAD}\n{lines}\n{R3_DIRECT}"}],
        tokenize=False, add_generation_prompt=True) for _, _, _, lines in rows]
    targets = [sid for _, _, sid, _ in rows]
    with_cot = sid_logprobs(model, tokenizer, [p + think for p, (_, think, _, _) in zip(prompts, rows)], targets, batch_size, max_length)
    plain = sid_logprobs(model, tokenizer, prompts, targets, batch_size, max_length)
    provenance = json.dumps({"scorer": str(scorer)})
    scored = [{"trace_id": row[0], "name": name, "value": value, "provenance": provenance}
              for row, cot, base in zip(rows, with_cot, plain)
              for name, value in (("ll_cot", cot), ("ll_plain", base), ("delta_ll", cot - base))]
    store.replace_scores(("ll_cot", "ll_plain", "delta_ll"), scored)
    helped = sum(cot > base for cot, base in zip(with_cot, plain))
    return {"scored": len(rows), "cot_helps": helped, "mean_delta_ll": (sum(with_cot) - sum(plain)) / max(len(rows), 1)}
