"""Think vs no-think on the full Industrial set with the rules teacher's hindsight traces (issue 16 §4).

Synthesises R3 hindsight traces for ``--samples`` training samples (rules teacher), curates them
(rules), builds a small random model (hidden 128, 2 layers, a BPE on the titles), and runs
``recot train ablation`` at CoT ratios 0, 0.5 and 1: SFT from the same base, each evaluated with
and without reasoning on the same ``--eval-rows`` test rows, with most-popular on those rows as the
baseline of the run. The rules teacher's reasoning is a baseline, not an LLM's: the point is the
machinery and an honest first number. The table lands in OUT/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000, help="training samples synthesised (hindsight traces)")
    parser.add_argument("--eval-rows", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--reasoning-tokens", type=int, default=256, help="think mode's budget (the rules teacher writes ~195)")
    parser.add_argument("--grpo-steps", type=int, default=0, help="GRPO steps after each SFT (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / ".data" / "ablation")
    args = parser.parse_args()
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    from recot.curation.rules import run_rules
    from recot.curation.store import Store
    from recot.data.loaders import load_dataset
    from recot.runs.ablation import AblationConfig, run_ablation
    from recot.synth.job import SynthConfig, run_synth
    from recot.trainer.tiny_model import build_tiny_model

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    run_synth(SynthConfig(dataset=INDUSTRIAL, out=args.out / "synth", tasks=["r3_cot_hindsight"], limit=args.samples), progress=False)
    dataset = load_dataset(INDUSTRIAL)
    store_path = args.out / "curation.duckdb"
    store_path.unlink(missing_ok=True)
    with Store(store_path) as store:
        store.load_catalog(dataset.catalog)
        store.ingest(args.out / "synth" / "traces.parquet")
        run_rules(store)
    base = args.out / "base-model"
    if not (base / "config.json").exists():
        build_tiny_model(base, dataset.catalog.items["title"].to_list(), hidden_size=128, layers=2)
    grpo = ({"max_steps": args.grpo_steps, "per_device_train_batch_size": 8, "num_generations": 4, "num_candidates": 4,
             "max_completion_length": 64} if args.grpo_steps else None)
    config = AblationConfig(store=store_path, dataset=INDUSTRIAL, base_model=str(base), out=args.out / "ablation",
                            sft={"num_train_epochs": args.epochs, "per_device_train_batch_size": 16, "learning_rate": 2e-3,
                                 "max_length": 512, "embedding_warmup_steps": 20},
                            grpo=grpo, eval={"part": "test", "limit": args.eval_rows, "samples": 2, "max_reasoning_tokens": args.reasoning_tokens,
                                             "baselines": ["most_popular"], "bootstrap": 1000})
    table = run_ablation(config)
    print((args.out / "ablation" / "ablation.md").read_text())
    popular = json.loads((args.out / "ablation" / "cot-0" / "eval-sft" / "report.json").read_text())["most_popular"]
    print(f"most popular on the same rows: Recall@10 {popular['recall@10']:.4f} {popular['ci95']['recall@10']}, "
          f"NDCG@10 {popular['ndcg@10']:.4f}")
    print(f"{len(table)} rows, {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
