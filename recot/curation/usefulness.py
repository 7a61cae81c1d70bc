"""Usefulness of a CoT under a scorer model: delta_ll = log p(target SID | prompt, CoT) - log p(target SID | prompt).

A trace whose reasoning makes the real next item more likely to a (student-sized) scorer helps
training; one that makes it less likely does not. The prompts are the export's student prompts
(:mod:`recot.formats.student`: asking for reasoning with the CoT, for the SID alone without); the CoT is
the trace's think block; only the target SID's
tokens are scored. Batched, padded forward passes with transformers; scores ``ll_cot``,
``ll_plain`` and ``delta_ll`` go to ``scores`` with the scorer's name as provenance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from recot.curation.rules import COT
from recot.curation.store import Store
from recot.curation.trace_columns import trace_columns
from recot.formats.cot import THINK_OPEN, think_block_sql
from recot.formats.student import ASK_DIRECT, ASK_THINK, prompt_sql, sql_text


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
    from recot.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(scorer)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(scorer).eval()
    trace_columns(store, ("lines",))
    rows = store.con.execute(f"""
        SELECT t.trace_id, {think_block_sql("t.text")} || chr(10) AS think, c.sid_text,
               {prompt_sql("h.lines", sql_text(ASK_THINK))} AS ask_think, {prompt_sql("h.lines", sql_text(ASK_DIRECT))} AS ask_direct
        FROM traces t JOIN catalog c ON c.item_id = t.target JOIN trace_columns h USING (trace_id)
        WHERE t.status = 'ok' AND t.task IN {COT} AND starts_with(t.text, '{THINK_OPEN}') ORDER BY t.trace_id""").fetchall()

    def chat(prompt: str) -> str:
        return str(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True))

    targets = [sid for _, _, sid, _, _ in rows]
    # as the export trains them: a CoT row asks for reasoning and gets it, a plain row asks for the SID alone
    with_cot = sid_logprobs(model, tokenizer, [chat(think_ask) + think for _, think, _, think_ask, _ in rows], targets,
                            batch_size, max_length)
    plain = sid_logprobs(model, tokenizer, [chat(direct) for *_, direct in rows], targets, batch_size, max_length)
    provenance = json.dumps({"scorer": str(scorer)})
    scored = [{"trace_id": row[0], "name": name, "value": value, "provenance": provenance}
              for row, cot, base in zip(rows, with_cot, plain)
              for name, value in (("ll_cot", cot), ("ll_plain", base), ("delta_ll", cot - base))]
    store.replace_scores(("ll_cot", "ll_plain", "delta_ll"), scored)
    helped = sum(cot > base for cot, base in zip(with_cot, plain))
    return {"scored": len(rows), "cot_helps": helped, "mean_delta_ll": (sum(with_cot) - sum(plain)) / max(len(rows), 1)}
