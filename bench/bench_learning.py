"""Learning check on real data: a small model trained from scratch against the sequential baselines.

On ../shared/data/amazon18-industrial: a random Qwen2 (hidden 128, 2 layers, histories of at most 5 items, a BPE trained on the
catalog titles, the SID vocabulary) is trained with recot's SFT (TRL SFTTrainer) on the training
split's non-CoT next-SID samples, then ranks SIDs for every test row by beam search constrained to the
catalog trie (``recot.trainer.evaluate``). Baselines on the same rows, learnt from the same training samples:
most popular, item-to-item transitions and SASRec. Prints Recall@10 with its bootstrap 95% interval and
NDCG@10 of each, and the SFT / SASRec ratio; then runs a few GRPO steps from the checkpoint and prints the
rewards of its first and second half."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
WORK = ROOT / "bench" / ".data" / "learning"  # the SFT checkpoint is kept: a rerun evaluates it (--retrain trains again)


def main(epochs: float = 2.0, test_rows: int | None = None, grpo_steps: int = 30, retrain: bool = False) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.synth.loaders import load_dataset
    from recot.synth.splits import SplitSpec
    from recot.testing.tiny_model import build_tiny_model
    from recot.trainer.data import next_item_rows
    from recot.trainer.evaluate import EvalConfig, evaluate
    from recot.trainer.sft import RecSFTConfig, train_sft
    from recot.trainer.sid_vocab import sid_vocabulary
    from recot.trainer.trie import SidTrie

    torch.manual_seed(0)
    dataset = load_dataset(INDUSTRIAL)
    catalog = dataset.catalog
    WORK.mkdir(parents=True, exist_ok=True)
    spec = SplitSpec.choose(dataset.boundaries, "auto", 5, dataset.name)
    split, split_file = spec.build(dataset.sequences()), spec.save(WORK)  # evaluation reads the split training used
    train = next_item_rows(split, catalog, "train")
    base = build_tiny_model(WORK / "init", catalog.items["title"].to_list(), sid_vocabulary(catalog), vocab_size=4000)
    config = RecSFTConfig(output_dir=str(WORK / "sft"), model_path=str(base), num_train_epochs=epochs,
                          per_device_train_batch_size=32, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=50,
                          logging_steps=50, save_strategy="no", report_to="none", use_cpu=True, bf16=False, max_length=384, disable_tqdm=True)
    train_s, final_loss = None, None
    if retrain or not (WORK / "sft" / "model.safetensors").exists():
        started = time.perf_counter()
        trainer = train_sft(config, datasets.Dataset.from_polars(train.select("prompt", "completion")))
        train_s, final_loss = time.perf_counter() - started, trainer.state.log_history[-1].get("train_loss")
    started = time.perf_counter()
    # every test row, the sequential baselines learnt from the same training samples, bootstrap 95% intervals
    report = evaluate(EvalConfig(model=Path(config.output_dir), dataset=INDUSTRIAL, split=split_file, part="test", think=False,
                                 limit=test_rows, batch_size=32, engine="transformers", out=WORK / "eval"))
    eval_s = time.perf_counter() - started
    methods = {"sft": report["direct"], **{name: report[name] for name in ("most_popular", "transition", "sasrec")}}
    print(json.dumps({"train_rows": train.height, "test_rows": report["rows"], "epochs": epochs, "train_s": train_s,
                      "eval_s": round(eval_s, 1), "final_loss": final_loss, **methods}, indent=1), flush=True)
    for name, metrics in methods.items():
        low, high = metrics["ci95"]["recall@10"]
        print(f"{name:>12}: Recall@10 {metrics['recall@10']:.4f} ({low:.4f}-{high:.4f}), NDCG@10 {metrics['ndcg@10']:.4f}", flush=True)
    print(f"Recall@10 ratio SFT / SASRec {methods['sft']['recall@10'] / max(methods['sasrec']['recall@10'], 1e-9):.2f}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(config.output_dir)
    model = AutoModelForCausalLM.from_pretrained(config.output_dir)
    trie = SidTrie.from_sids(tokenizer, catalog.sid_text().to_list())
    grpo_check(model, tokenizer, trie, train, grpo_steps)


def grpo_check(model, tokenizer, trie, train, steps: int) -> None:
    """GRPO from the SFT checkpoint on 8 training prompts (SID only, no reasoning): do the rewards move?"""
    import datasets

    from recot.trainer.grpo import RecGRPOConfig, RecGRPOTrainer
    from recot.trainer.rewards import exact_hit, prefix_match, rank_reward

    config = RecGRPOConfig(output_dir=str(WORK / "grpo"), max_steps=steps, per_device_train_batch_size=16, num_generations=8,
                           num_candidates=4, reasoning=False, max_completion_length=8, learning_rate=1e-3, beta=0.0,
                           temperature=1.0, report_to="none", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1,
                           disable_tqdm=True, seed=0)
    # 8 fixed training prompts, each seen about 7 times: the mean reward should rise as the policy fits them
    rows = datasets.Dataset.from_polars(train.sample(8, seed=0).select("prompt", "target_sid"))
    trainer = RecGRPOTrainer(model=model, args=config, trie=trie, processing_class=tokenizer, train_dataset=rows,
                             reward_funcs=[exact_hit, prefix_match, rank_reward])
    started = time.perf_counter()
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    half = max(len(logged) // 2, 1)
    first, last = (sum(h["reward"] for h in part) / len(part) for part in (logged[:half], logged[half:]))
    print(json.dumps({"grpo_steps": len(logged), "seconds": round(time.perf_counter() - started, 1),
                      "reward_first_half": round(first, 4), "reward_second_half": round(last, 4),
                      "rewards": [round(h["reward"], 3) for h in logged],
                      "hit_rate": [round(h.get("rollout_hit_rate", 0), 3) for h in logged]}, indent=1), flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=2.0, help="SFT epochs")
    parser.add_argument("--retrain", action="store_true", help="train again even when a checkpoint is kept")
    args = parser.parse_args()
    main(epochs=args.epochs, retrain=args.retrain)
