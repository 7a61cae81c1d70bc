"""Learning check on real data: a small model trained from scratch against the sequential baselines.

On ../shared/data/amazon18-industrial: a random Qwen2 (hidden 128, 2 layers, histories of at most 5 items, a BPE trained on the
catalog titles, the SID vocabulary) is trained with recot's SFT (TRL SFTTrainer) on the training
split's non-CoT next-SID samples, then ranks SIDs for every test row by beam search constrained to the
catalog trie (``recot.trainer.evaluate``). Baselines on the same rows, learnt from the same training samples:
most popular, item-to-item transitions and SASRec. Prints Recall@10 with its bootstrap 95% interval and
NDCG@10 of each, and the SFT / SASRec ratio.

Then GRPO from the SFT checkpoint over all training prompts (``--grpo-steps``; each group the prompt's best
distinct SIDs by constrained beam search, rewarded by exact hit by default) and both models
on every valid and test row: the GRPO - SFT difference of each metric with its paired bootstrap 95% interval."""

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
HAND_OFF = WORK / "export"


def main(epochs: float, retrain: bool, grpo: dict) -> None:
    import datasets
    import torch

    from recot.curation.next_item import NEXT_ITEM, write_next_item
    from recot.data.catalog import CATALOG_FILE
    from recot.data.loaders import load_dataset
    from recot.formats.splits import SplitSpec
    from recot.trainer.data import export_rows
    from recot.trainer.evaluate import EvalConfig, evaluate
    from recot.trainer.sft import RecSFTConfig, chosen_epoch, train_sft
    from recot.trainer.sid_vocab import sid_vocabulary
    from recot.trainer.tiny_model import build_tiny_model

    torch.manual_seed(0)
    dataset = load_dataset(INDUSTRIAL)
    catalog = dataset.catalog
    WORK.mkdir(parents=True, exist_ok=True)
    spec = SplitSpec.choose(dataset.boundaries, "auto", 5, dataset.name)
    # the hand-off an export makes, of raw next-item samples: evaluation reads the split, catalog and rows training used
    HAND_OFF.mkdir(parents=True, exist_ok=True)
    spec.save(HAND_OFF)
    catalog.items.select("item_id", "title", "brand").with_columns(sid_text=catalog.sid_text()).write_parquet(HAND_OFF / CATALOG_FILE)
    write_next_item(spec.build(dataset.sequences()), catalog, HAND_OFF / NEXT_ITEM)
    train = export_rows(HAND_OFF, "train")
    base = build_tiny_model(WORK / "init", catalog.items["title"].to_list(), sid_vocabulary(catalog), vocab_size=4000)
    config = RecSFTConfig(output_dir=str(WORK / "sft"), model_path=str(base), num_train_epochs=epochs,
                          per_device_train_batch_size=32, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=50,
                          logging_steps=50, report_to="none", use_cpu=True, bf16=False, max_length=384, disable_tqdm=True)
    train_s, final_loss, epoch = None, None, None
    if retrain or not (WORK / "sft" / "model.safetensors").exists():
        started = time.perf_counter()
        # the length is chosen on the valid part's loss (early stopping), never on test
        valid = export_rows(HAND_OFF, "valid").select("prompt", "completion")
        trainer = train_sft(config, datasets.Dataset.from_polars(train.select("prompt", "completion")), datasets.Dataset.from_polars(valid))
        train_s, final_loss, epoch = time.perf_counter() - started, trainer.state.log_history[-1].get("train_loss"), chosen_epoch(trainer)

    def scored(model: Path, part: str, **settings) -> dict:
        """Every row of ``part``, ranked by ``model`` (bootstrap 95% intervals)."""
        return evaluate(EvalConfig(model=model, export=HAND_OFF, part=part, think=False, batch_size=32,
                                   engine="transformers", out=WORK / "eval" / f"{model.name}-{part}", **settings))

    started = time.perf_counter()
    report = scored(WORK / "sft", "test")  # with the sequential baselines learnt from the same training samples
    methods = {"sft": report["direct"], **{name: report[name] for name in ("most_popular", "transition", "sasrec")}}
    print(json.dumps({"train_rows": train.height, "test_rows": report["rows"], "max_epochs": epochs, "epoch_chosen": epoch, "train_s": train_s,
                      "eval_s": round(time.perf_counter() - started, 1), "final_loss": final_loss, **methods}, indent=1), flush=True)
    for name, metrics in methods.items():
        low, high = metrics["ci95"]["recall@10"]
        print(f"{name:>12}: Recall@10 {metrics['recall@10']:.4f} ({low:.4f}-{high:.4f}), NDCG@10 {metrics['ndcg@10']:.4f}", flush=True)
    print(f"Recall@10 ratio SFT / SASRec {methods['sft']['recall@10'] / max(methods['sasrec']['recall@10'], 1e-9):.2f}", flush=True)
    if grpo["steps"]:
        grpo_check(train, grpo)
        scored(WORK / "sft", "valid", baselines=[])  # its test ranks are the report above
        for part in ("valid", "test"):
            after = scored(WORK / "grpo", part, baselines=[], against=WORK / "eval" / f"sft-{part}")
            for metric in ("recall@1", "recall@10", "ndcg@10"):
                change = after["against"]["direct"][metric]
                low, high = change["ci95"]
                print(f"{part:>5} {metric:>9}: GRPO {after['direct'][metric]:.4f}, SFT {after['direct'][metric] - change['difference']:.4f}, "
                      f"difference {change['difference']:+.4f} (paired 95% {low:+.4f} to {high:+.4f})", flush=True)


def grpo_check(train, grpo: dict) -> None:
    """GRPO from the SFT checkpoint over all training prompts, SID only, each group the prompt's best distinct SIDs."""
    import datasets

    from recot.trainer.grpo import RecGRPOConfig, train_grpo

    generations = grpo["generations"]
    config = RecGRPOConfig(output_dir=str(WORK / "grpo"), model_path=str(WORK / "sft"), sid_catalog=str(HAND_OFF),
                           max_steps=grpo["steps"], per_device_train_batch_size=64, gradient_accumulation_steps=grpo["prompts"] * generations // 64,
                           num_generations=generations, rollout="beam", reasoning=False, max_completion_length=8,
                           rewards=grpo["rewards"], no_hit_weight=grpo["no_hit_weight"], learning_rate=grpo["lr"], beta=grpo["beta"],
                           lr_scheduler_type="cosine", warmup_steps=max(grpo["steps"] // 10, 1), report_to="none", use_cpu=True,
                           bf16=False, save_strategy="no", logging_steps=max(grpo["steps"] // 10, 1), disable_tqdm=True, seed=0)
    started = time.perf_counter()
    trainer = train_grpo(config, datasets.Dataset.from_polars(train.select("prompt", "target_sid")))
    logged = [h for h in trainer.state.log_history if "reward" in h]
    print(json.dumps({"grpo_steps": trainer.state.global_step, "prompts": trainer.state.global_step * grpo["prompts"],
                      "seconds": round(time.perf_counter() - started, 1), "reward": [round(h["reward"], 3) for h in logged],
                      "hit_rate": [round(h["rollout_hit_rate"], 4) for h in logged]}), flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=10.0, help="SFT epochs at most (early stopping on the valid part's loss)")
    parser.add_argument("--retrain", action="store_true", help="train SFT again even when a checkpoint is kept")
    parser.add_argument("--grpo-steps", type=int, default=0, help="GRPO optimiser steps after SFT (0: none)")
    parser.add_argument("--grpo-prompts", type=int, default=16, help="prompts per optimiser step (a multiple of 64 / generations)")
    parser.add_argument("--grpo-generations", type=int, default=16, help="SIDs per prompt's group")
    parser.add_argument("--grpo-lr", type=float, default=3e-5, help="GRPO peak learning rate (cosine, a tenth warm-up)")
    parser.add_argument("--grpo-beta", type=float, default=0.0, help="KL coefficient to the SFT start")
    parser.add_argument("--grpo-rewards", default="exact_hit", help="comma-separated names from recot.trainer.rewards.REWARDS")
    parser.add_argument("--no-hit-weight", type=float, default=0.0, help="advantage scale of groups without the target")
    args = parser.parse_args()
    if args.grpo_prompts * args.grpo_generations % 64:
        parser.error(f"--grpo-prompts x --grpo-generations is {args.grpo_prompts * args.grpo_generations}: make it a multiple of "
                     "64, the completions of one micro-batch")
    main(args.epochs, args.retrain, {"steps": args.grpo_steps, "prompts": args.grpo_prompts, "generations": args.grpo_generations,
                                     "lr": args.grpo_lr, "beta": args.grpo_beta, "rewards": args.grpo_rewards.split(","),
                                     "no_hit_weight": args.no_hit_weight})
