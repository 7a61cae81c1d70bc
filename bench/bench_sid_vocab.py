"""SID vocabulary start-up at 100k items: recot's vectorised add_sid_vocabulary against the per-item loop it replaced.

Both add the same tokens to copies of one tiny model built here (a BPE trained on the titles) and initialise each
new token from the mean title embedding of the items whose SID holds it; the bench checks the two give the same
embeddings and prints the time ratio loop / vectorised (above 1: recot is faster).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recot.data.catalog import ITEM_SCHEMA, Catalog
from recot.trainer.sid_vocab import add_sid_vocabulary, sid_vocabulary
from recot.trainer.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def catalog_of(items: int, seed: int = 0) -> Catalog:
    """``items`` items with titles drawn from the bundled sample's words and 3-level codes of 256 per level."""
    rng = np.random.default_rng(seed)
    words = " ".join(json.loads((ROOT / "examples" / "amazon18-industrial-sample" / "items.json").read_text())[k]["title"]
                     for k in list(json.loads((ROOT / "examples" / "amazon18-industrial-sample" / "items.json").read_text()))[:400]).split()
    titles = [" ".join(rng.choice(words, size=rng.integers(4, 14))) for _ in range(items)]
    codes = rng.integers(0, 256, size=(items, 3)).tolist()
    frame = pl.DataFrame({"item_id": [str(i) for i in range(items)], "title": titles, "sid": codes},
                         schema={"item_id": pl.Utf8, "title": pl.Utf8, "sid": pl.List(pl.Int32)})
    frame = frame.with_columns(pl.lit(None, dtype).alias(name) for name, dtype in ITEM_SCHEMA.items() if name not in frame.columns)
    return Catalog(frame.select(list(ITEM_SCHEMA)))


def loop_baseline(model, tokenizer, catalog: Catalog, batch_size: int = 512) -> list[int]:
    """The per-item Python loop add_sid_vocabulary was until 2026-12-02 (kept here as the named baseline)."""
    vocabulary = sid_vocabulary(catalog)
    tokens = [t for t in vocabulary if t not in tokenizer.get_vocab()]
    old_size = len(tokenizer)
    tokenizer.add_tokens(tokens, special_tokens=False)
    model.resize_token_embeddings(len(tokenizer))
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        titles = catalog.items["title"].fill_null("").to_list()
        item_vectors = torch.zeros(len(titles), embeddings.shape[1], dtype=torch.float32)
        for start in range(0, len(titles), batch_size):
            batch = tokenizer(titles[start:start + batch_size], add_special_tokens=False)["input_ids"]
            for offset, ids in enumerate(batch):
                ids = [i for i in ids if i < old_size] or [tokenizer.pad_token_id or 0]
                item_vectors[start + offset] = embeddings[ids].float().mean(0)
        sums = torch.zeros(len(tokenizer), embeddings.shape[1])
        counts = torch.zeros(len(tokenizer))
        for vector, sid in zip(item_vectors, catalog.sid_text().to_list()):
            if sid is None:
                continue
            ids = tokenizer(sid, add_special_tokens=False)["input_ids"]
            sums[ids] += vector
            counts[ids] += 1
        fallback = item_vectors.mean(0)
        for token_id in tokenizer.convert_tokens_to_ids(tokens):
            embeddings[token_id] = (sums[token_id] / counts[token_id] if counts[token_id] else fallback).to(embeddings.dtype)
    return tokenizer.convert_tokens_to_ids(vocabulary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    catalog = catalog_of(args.items)
    with tempfile.TemporaryDirectory() as work:
        path = build_tiny_model(Path(work) / "m", catalog.items["title"].head(5000).to_list())
        seconds, weights = {}, {}
        for name, add in (("loop (before)", loop_baseline), ("recot", add_sid_vocabulary)):
            model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
            started = time.perf_counter()
            add(model, tokenizer, catalog)
            seconds[name] = time.perf_counter() - started
            weights[name] = copy.deepcopy(model.get_input_embeddings().weight.detach())
    same = torch.allclose(weights["loop (before)"], weights["recot"], atol=1e-5)
    print(json.dumps({"items": args.items, "seconds": {k: round(v, 2) for k, v in seconds.items()}, "same_embeddings": same,
                      "ratio_loop_over_recot": round(seconds["loop (before)"] / seconds["recot"], 1)}, indent=1))


if __name__ == "__main__":
    main()
