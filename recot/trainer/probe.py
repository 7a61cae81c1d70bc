"""The perception probe: does a model read and write its catalog's SIDs as names of things?

Alignment gets a number of its own, before any recommendation metric, from the align format's two pair
questions (:mod:`recot.formats.align`), asked of items it trained on and of the held-out items whose SID never
stood next to their text in training:

- SID -> title: the greedy answer's first line against the title, exact (case and spacing aside) and as word F1;
- title -> SID: the SID the catalog-constrained beam search puts first, exact and on the first code (the
  coarsest semantic cluster), each next to its chance level (one over the SIDs, one over the first codes).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from recot.formats.align import PAIR_KINDS, sid_to_text_prompt, text_to_sid_prompt
from recot.formats.sid import sid_codes
from recot.trainer.data import export_catalog, load_export
from recot.trainer.evaluate import mean, rank_texts
from recot.trainer.trie import SidTrie

PROBE_FILE = "probe.json"
_WORD = re.compile(r"\w+")


def probe_items(export: str | Path) -> dict[str, list[str]]:
    """The export's align items by role: ``train`` (their pairs are training rows) and ``held_out`` (validation rows)."""
    loaded = load_export(export, "align")
    return {role: sorted({i for kind, i in zip(loaded[part]["kind"], loaded[part]["item_id"]) if kind == PAIR_KINDS[0]})
            for role, part in (("train", "train"), ("held_out", "validation")) if part in loaded}


def perception_probe(model, tokenizer, export: str | Path, items: int = 200, batch_size: int = 16,
                     max_new_tokens: int = 48, seed: int = 0, only: Sequence[str] | None = None) -> dict:
    """The probe on up to ``items`` seeded items of each role (or on the item ids ``only``, as role ``train``).
    The tokenizer must hold the SID vocabulary (the model after alignment, or a base with it added)."""
    catalog = export_catalog(export)
    frame = catalog.items.select("item_id", "title").with_columns(sid=catalog.sid_text())
    sid_of, title_of = dict(zip(frame["item_id"], frame["sid"])), dict(zip(frame["item_id"], frame["title"]))
    roles = {"train": list(only)} if only is not None else {
        role: random.Random(seed).sample(ids, min(items, len(ids))) for role, ids in probe_items(export).items()}
    trie = SidTrie.from_catalog(tokenizer, catalog)
    sids = [s for s in frame["sid"].to_list() if s]
    report: dict = {"chance": {"title_to_sid": 1 / max(len(sids), 1),
                               "title_to_sid_first_code": 1 / max(len({_first_code(s) for s in sids}), 1)}}
    for role, ids in roles.items():
        ids = [i for i in ids if sid_of.get(i) and title_of.get(i)]
        titles = [title_of[i] for i in ids]
        written = generate_lines(model, tokenizer, [sid_to_text_prompt(sid_of[i]) for i in ids], batch_size, max_new_tokens)
        ranked = rank_texts(model, tokenizer, [text_to_sid_prompt(t) for t in titles], trie, k=1, batch_size=batch_size).ranked
        picked = [r[0] if r else None for r in ranked]
        report[role] = {
            "items": len(ids),
            "sid_to_title_exact": mean([_words(w) == _words(t) for w, t in zip(written, titles)]),
            "sid_to_title_f1": mean([word_f1(w, t) for w, t in zip(written, titles)]),
            "title_to_sid_accuracy": mean([p == sid_of[i] for p, i in zip(picked, ids)]),
            "title_to_sid_first_code": mean([p is not None and _first_code(p) == _first_code(sid_of[i]) for p, i in zip(picked, ids)]),
        }
    return report


def generate_lines(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_new_tokens: int = 48) -> list[str]:
    """Each prompt's greedy continuation up to its first line break."""
    tokenizer.padding_side = "left"
    model.eval()
    lines = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        lines += [text.strip().split("\n")[0].strip() for text in decoded]
    return lines


def _first_code(sid: str) -> int | None:
    codes = sid_codes(sid)
    return codes[0] if codes else None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_f1(got: str, want: str) -> float:
    """F1 of the words of ``got`` against those of ``want`` (multiset overlap, lower-cased)."""
    a, b = Counter(_words(got)), Counter(_words(want))
    overlap = sum((a & b).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(a.values()), overlap / sum(b.values())
    return 2 * precision * recall / (precision + recall)
