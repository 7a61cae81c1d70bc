"""GRPO with reasoning from the grid's SFT models: does RL lift the think answer over the direct one? (issue 25)

Continues a grid that bench_ablation.py wrote (``--grid``, default its CPU run at ratio 1): for each arm's SFT model
at ``--ratio``, GRPO with reasoning (the grid's settings: bench_ablation.grpo_settings), then both modes evaluated on
the grid's rows (bench_ablation.eval_settings). Each GRPO model is compared on the same rows, by paired bootstrap
intervals, with its own SFT model in the same mode and with its own direct answer. What GRPO learned from is printed
too: the share of groups whose rewards had no spread (TRL's ``frac_reward_zero_std``; 1.0 means no gradient) and
the mean reward terms. Baseline: the arm's SFT model, measured by the grid on the same rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_ablation import ROOT, add_shared_arguments, eval_settings, grpo_settings


def signal(log_history: list[dict]) -> dict[str, float]:
    """Mean of each per-step training signal GRPO logged."""
    steps = [entry for entry in log_history if "frac_reward_zero_std" in entry]
    keys = ["frac_reward_zero_std", "grad_norm", "reward", "rewards/exact_hit/mean", "rewards/prefix_match/mean",
            "rewards/grounding_reward/mean", "completions/mean_length"]
    return {key: float(np.mean([float(e[key]) for e in steps if key in e])) for key in keys} | {"steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_arguments(parser)
    parser.add_argument("--grid", type=Path, default=ROOT / "bench" / ".data" / "grid-r1" / "ablation")
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--arms", nargs="+", default=["none", "align"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / ".data" / "grpo-reasoning")
    args = parser.parse_args()
    from recot.runs.stages import train_stage
    from recot.trainer.evaluate import EvalConfig, evaluate, paired_difference, per_row_metrics

    export = args.grid / f"cot-{args.ratio:g}" / "export"
    rows = []
    for arm in args.arms:
        sft = args.grid / f"cot-{args.ratio:g}" / arm
        before = json.loads((sft / "eval-sft" / "ranks.json").read_text())
        started = time.perf_counter()
        trainer = train_stage("grpo", grpo_settings(args), sft / "sft", export, args.out / arm / "grpo")
        trained = time.perf_counter() - started
        out = args.out / arm / "eval"
        settings = EvalConfig(**eval_settings(args), model=args.out / arm / "grpo", export=export, out=out, think=True)
        evaluate(settings)
        after = json.loads((out / "ranks.json").read_text())
        k = settings.k
        for mode in ("direct", "think"):
            base, new = (np.array(r[mode], dtype=np.int64) for r in (before, after))
            versus_sft = paired_difference(base, new, [k], settings.bootstrap)
            versus_direct = paired_difference(np.array(after["direct"], dtype=np.int64), new, [k], settings.bootstrap)
            rows.append({"arm": arm, "mode": mode, "sft_recall": float(per_row_metrics(base, [k])[f"recall@{k}"].mean()),
                         "grpo_recall": float(per_row_metrics(new, [k])[f"recall@{k}"].mean()), "vs_sft": versus_sft[f"recall@{k}"],
                         "vs_sft_ndcg": versus_sft[f"ndcg@{k}"], "vs_direct": versus_direct[f"recall@{k}"]})
        print(json.dumps({"arm": arm, "grpo_s": round(trained), "signal": signal(trainer.state.log_history)}))
    print(f"{'arm':<6} {'mode':<7} {'SFT R@K':>9} {'GRPO R@K':>10} {'GRPO - SFT (paired 95%)':>30} "
          f"{'NDCG GRPO - SFT':>30} {'think - direct':>30}")
    for r in rows:
        cell = [f"{d['difference']:+.4f} ({d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f})" for d in (r["vs_sft"], r["vs_sft_ndcg"], r["vs_direct"])]
        print(f"{r['arm']:<6} {r['mode']:<7} {r['sft_recall']:>9.4f} {r['grpo_recall']:>10.4f} {cell[0]:>30} {cell[1]:>30} {cell[2]:>30}")
    (args.out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
