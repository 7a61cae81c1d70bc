"""The source designs' grid on the full Industrial set: alignment x CoT ratio x (SFT, GRPO with reasoning) (issue 25).

Synthesises R3 hindsight and R1 relation traces for ``--samples`` training samples (rules teacher), curates
them (rules), builds a small random model (hidden 128, 2 layers, a BPE on the titles) and pre-trains it on
the catalog's item text (``recot train pretrain``: a stand-in for a pretrained LLM, none can be downloaded
here), then runs ``recot train ablation`` with the alignment axis: every cell from that base, SFT stopping
on validation loss, GRPO with reasoning, each model evaluated with and without reasoning on the same
``--eval-rows`` test rows against the reference cell (no alignment, ratio 0, SFT, direct) by a paired
bootstrap, and probed for perception. Most-popular on those rows is the baseline of the run. The rules
teacher's reasoning is a baseline, not an LLM's. The table lands in OUT/ablation/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"


def grpo_settings(args: argparse.Namespace) -> dict:
    """GRPO with reasoning: the reasoning budget is evaluation's, so the rollouts can finish their CoT; sampling is cool
    enough that a small model's reasoning stays in the CoT format (at temperature 1 a 2-layer policy writes noise that
    names items outside the history, every grounding reward is 0 and no group has a spread to learn from)."""
    return {"max_steps": args.grpo_steps, "per_device_train_batch_size": 2 * args.grpo_generations,
            "num_generations": args.grpo_generations, "num_candidates": 4, "temperature": args.grpo_temperature,
            "max_reasoning_tokens": args.reasoning_tokens, "max_completion_length": args.reasoning_tokens + 16,
            "learning_rate": args.grpo_lr, "logging_steps": 1,
            "rewards": ["exact_hit", "prefix_match", "format", "grounding"], "rollout_engine": args.engine}


def eval_settings(args: argparse.Namespace) -> dict:
    """Every cell's evaluation: the same seeded test rows, with and without reasoning."""
    return {"part": "test", "limit": args.eval_rows, "samples": 1, "max_reasoning_tokens": args.reasoning_tokens,
            "baselines": ["most_popular"], "bootstrap": 1000, "engine": args.engine}


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings bench_grpo_reasoning.py must share with the grid it continues."""
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--reasoning-tokens", type=int, default=256, help="think mode's budget (the rules teacher writes ~195)")
    parser.add_argument("--grpo-steps", type=int, default=20, help="GRPO steps with reasoning after each SFT (0: none)")
    parser.add_argument("--grpo-generations", type=int, default=4, help="GRPO's group: rollouts sampled per prompt")
    parser.add_argument("--grpo-temperature", type=float, default=0.3, help="the rollouts' sampling temperature")
    parser.add_argument("--grpo-lr", type=float, default=3e-5)
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                        help="what decodes evaluation and GRPO rollouts (vllm: on a GPU)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_arguments(parser)
    parser.add_argument("--samples", type=int, default=2000, help="training samples synthesised (hindsight and relation traces)")
    parser.add_argument("--max-epochs", type=float, default=3.0, help="SFT's most epochs (early stopping on validation loss)")
    parser.add_argument("--align-epochs", type=float, default=2.0, help="alignment's and pre-training's most epochs")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--no-align", action="store_true", help="leave the alignment axis out")
    parser.add_argument("--hidden", type=int, default=128, help="the model's width (head dimension: hidden / 2)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2000, help="the BPE's size before the SID tokens")
    parser.add_argument("--batch", type=int, default=16, help="SFT batch (align and pre-training use twice this)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / ".data" / "grid")
    parser.add_argument("--base", help="a pretrained base (a folder or a model source: smollm2-135m-instruct) instead of the "
                                       "tiny model pre-trained here; --hidden, --layers and --vocab then do not apply")
    parser.add_argument("--lr", type=float, help="learning rate of alignment and SFT (default: 2e-3 for the tiny model, "
                                                 "5e-5 for a pretrained --base)")
    args = parser.parse_args(argv)
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    from recot.curation.export import ExportConfig, export
    from recot.curation.rules import run_rules
    from recot.curation.store import Store
    from recot.data.loaders import load_dataset
    from recot.runs.ablation import AblationConfig, run_ablation
    from recot.runs.stages import train_stage
    from recot.synth.job import SynthConfig, run_synth
    from recot.trainer.sft import chosen_epoch
    from recot.trainer.tiny_model import build_tiny_model

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    run_synth(SynthConfig(dataset=INDUSTRIAL, out=args.out / "synth", tasks=["r3_cot_hindsight", "r1_relation"], limit=args.samples),
              progress=False)
    dataset = load_dataset(INDUSTRIAL)
    store_path = args.out / "curation.duckdb"
    store_path.unlink(missing_ok=True)
    with Store(store_path) as store:
        store.load_catalog(dataset.catalog)
        store.ingest(args.out / "synth" / "traces.parquet")
        run_rules(store)
        export(store, ExportConfig(name="item-text", out=args.out / "text-export", dataset=INDUSTRIAL, formats=["align"], overwrite=True))
    lr = args.lr or (5e-5 if args.base else 2e-3)
    lm = {"per_device_train_batch_size": 2 * args.batch, "learning_rate": lr, "max_length": 128, "num_train_epochs": args.align_epochs,
          "early_stopping_patience": 1, "lr_scheduler_type": "cosine"}
    if args.base:  # a real language model: no stand-in pre-training
        from recot.models import resolve

        base = Path(resolve(args.base))
    else:
        tiny, base = args.out / "tiny-model", args.out / "pretrained"
        if not (tiny / "config.json").exists():
            build_tiny_model(tiny, dataset.catalog.items["title"].to_list(), hidden_size=args.hidden, layers=args.layers,
                             vocab_size=args.vocab)
        began = time.perf_counter()
        pretrained = train_stage("pretrain", lm, tiny, args.out / "text-export", base)
        print(f"pre-training on item text: epoch {chosen_epoch(pretrained)}, {time.perf_counter() - began:.0f} s")
    # the grid's exports hold the R3 rows alone (relations would double SFT's rows); its align rows then have no relations
    config = AblationConfig(store=store_path, dataset=INDUSTRIAL, base_model=str(base), out=args.out / "ablation", ratios=args.ratios,
                            tasks=["r3_cot_hindsight"], probe_items=100,
                            align=None if args.no_align else {**lm, "probe_items": 100,  # item text: pre-training's
                                                              "kinds": ["sid_to_text", "text_to_sid", "relation", "behaviour"]},
                            sft={"num_train_epochs": args.max_epochs, "early_stopping_patience": 1, "per_device_train_batch_size": args.batch,
                                 "learning_rate": lr, "max_length": 512, "embedding_warmup_steps": 20},
                            grpo=grpo_settings(args) if args.grpo_steps else None, eval=eval_settings(args))
    table = run_ablation(config)
    print((args.out / "ablation" / "ablation.md").read_text())
    reference = next(r for r in table if r["align"] == "none" and r["stage"] == "sft")
    popular = json.loads((Path(reference["eval_out"]) / "report.json").read_text())["most_popular"]
    print(f"most popular on the same rows: Recall@10 {popular['recall@10']:.4f} {popular['ci95']['recall@10']}, "
          f"NDCG@10 {popular['ndcg@10']:.4f}")
    print(f"{len(table)} rows, {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
