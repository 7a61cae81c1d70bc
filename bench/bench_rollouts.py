"""GRPO rollouts: the two-stage constrained rollout on vLLM against transformers generate, same model and prompts.

    .venv/bin/python bench/bench_rollouts.py [--prompts 64] [--generations 4] [--k 4] [--reasoning 32] [--hidden 256 --layers 4]

A random Qwen2-shaped model (a BPE on the bundled sample's titles, the SID vocabulary) and the sample's think
prompts. Each side rolls out ``prompts x generations`` rollouts as GRPO does: sampled reasoning (temperature 1,
``--reasoning`` tokens at most), then ``k`` SIDs by beam search over the catalog trie. Prints rollouts/s of
each and the ratio vllm/transformers, the share of valid SIDs on each side, and whether greedy rollouts
(temperature 0) agree between the two. vLLM's engine start is excluded; one warm-up round on each side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "examples" / "amazon18-industrial-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--reasoning", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from recot.curation.next_item import next_item_rows
    from recot.data.loaders import load_dataset
    from recot.formats.splits import SplitSpec
    from recot.trainer import vllm_decoding
    from recot.trainer.rollout import two_stage
    from recot.trainer.sid_vocab import add_sid_vocabulary
    from recot.trainer.tiny_model import build_tiny_model
    from recot.trainer.trie import SidTrie

    torch.manual_seed(0)
    sample = load_dataset(SAMPLE)
    with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "tiny", sample.catalog.items["title"].to_list(), hidden_size=args.hidden, layers=args.layers)
        tokenizer, model = AutoTokenizer.from_pretrained(work / "tiny"), AutoModelForCausalLM.from_pretrained(work / "tiny")
        add_sid_vocabulary(model, tokenizer, sample.catalog)
        model.save_pretrained(work / "base")
        tokenizer.save_pretrained(work / "base")
        valid = set(sample.catalog.sid_text().drop_nulls().to_list())
        trie = SidTrie.from_sids(tokenizer, valid)
        split = SplitSpec.choose(sample.boundaries, "auto", 10).build(sample.sequences())
        rows = next_item_rows(split, sample.catalog, "train", think=True).head(args.prompts)
        prompts = [list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
                   for p in rows["prompt"].to_list()]
        batch = [p for p in prompts for _ in range(args.generations)]
        sampling = GenerationConfig(do_sample=True, temperature=1.0)

        def hf(ids, sampled=True):
            return two_stage(model, tokenizer, ids, trie, args.k, True, args.reasoning, sampling if sampled else None)

        llm = vllm_decoding.constrained_engine(work / "base", dtype="float32", max_model_len=2048, enforce_eager=True)
        trie_file = vllm_decoding.save_trie(trie, work / "trie.json")

        def vllm(ids, sampled=True):
            return vllm_decoding.two_stage(llm, tokenizer, ids, trie_file, trie.depth, args.k, True, args.reasoning,
                                           1.0 if sampled else 0.0, seed=1)

        result = {}
        for name, rollout in (("transformers", hf), ("vllm", vllm)):
            rollout(batch[:8])  # warm-up
            start = time.perf_counter()
            out = rollout(batch)
            seconds = time.perf_counter() - start
            sids = [tokenizer.decode(b, skip_special_tokens=True) for row in out.beams for b in row]
            result[name] = {"rollouts_per_s": len(batch) / seconds, "seconds": seconds,
                            "valid_share": sum(s in valid for s in sids) / len(sids)}
        greedy = prompts[:16]
        result["greedy_agree"] = hf(greedy, sampled=False) == vllm(greedy, sampled=False)
        vllm_decoding.shutdown(llm)
    result["ratio"] = result["vllm"]["rollouts_per_s"] / result["transformers"]["rollouts_per_s"]
    print(json.dumps(result, indent=1))
    print(f"{len(batch)} rollouts (hidden {args.hidden}, {args.layers} layers, K={args.k}, reasoning <= {args.reasoning}): "
          f"transformers {result['transformers']['rollouts_per_s']:.1f}/s, vllm {result['vllm']['rollouts_per_s']:.1f}/s, "
          f"ratio {result['ratio']:.2f}x; valid SIDs {result['transformers']['valid_share']:.0%} / {result['vllm']['valid_share']:.0%}; "
          f"greedy rollouts equal: {result['greedy_agree']}")


if __name__ == "__main__":
    main()
