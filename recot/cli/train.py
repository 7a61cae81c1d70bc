"""``recot train pretrain|align|sft|grpo|recipe|ablation CONFIG`` and ``recot eval``: thin wrappers over the trainer's
Python API.

Training configs are TOML or YAML files whose keys are the fields of RecPretrainConfig / RecAlignConfig /
RecSFTConfig / RecGRPOConfig (TRL's SFTConfig / GRPOConfig plus recot's own) or of RecipeConfig / AblationConfig
(``recot config sft`` lists them).
"""

from __future__ import annotations

from pathlib import Path

import click

from recot.cli.common import emit, json_option, report_only_on_stdout
from recot.config import load_config

config_argument = click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.group()
def train() -> None:
    """Train on curated exports: pre-training, alignment, SFT, GRPO, the specialise-then-unify recipe, or the ablation grid."""


@train.command("pretrain")
@config_argument
@json_option
def pretrain(config: Path, as_json: bool) -> None:
    """Causal LM on the catalog's item text, the export's align item_text rows (RecPretrainConfig): a base that knows
    the catalog's language where no pretrained LLM can be had."""
    from recot.trainer.align import RecPretrainConfig, train_align
    from recot.trainer.sft import chosen_epoch

    with report_only_on_stdout():  # trainers print their logs: stdout is for the report
        trainer = train_align(load_config(RecPretrainConfig, config))
    emit({"output_dir": trainer.args.output_dir, "epoch": chosen_epoch(trainer), "best_eval_loss": trainer.state.best_metric,
          "rows_too_long": trainer.rows_too_long}, as_json, "pretrain")


@train.command("align")
@config_argument
@json_option
def align(config: Path, as_json: bool) -> None:
    """Itemic alignment on the export's align rows (RecAlignConfig): SID <-> text, relations, behaviour documents;
    writes the perception probe (probe.json) next to the checkpoint."""
    import json

    from recot.trainer.align import RecAlignConfig, train_align
    from recot.trainer.probe import PROBE_FILE
    from recot.trainer.sft import chosen_epoch

    with report_only_on_stdout():
        trainer = train_align(load_config(RecAlignConfig, config))
    probe = Path(str(trainer.args.output_dir)) / PROBE_FILE
    emit({"output_dir": trainer.args.output_dir, "epoch": chosen_epoch(trainer), "best_eval_loss": trainer.state.best_metric,
          "rows_too_long": trainer.rows_too_long, "probe": json.loads(probe.read_text()) if probe.exists() else None},
         as_json, "align")


@train.command("sft")
@config_argument
@json_option
def sft(config: Path, as_json: bool) -> None:
    """Supervised fine-tuning (RecSFTConfig: model_path, dataset_path, sid_catalog, LoRA, warm-up, TRL's SFTConfig)."""
    from recot.trainer.sft import RecSFTConfig, chosen_epoch, train_sft

    with report_only_on_stdout():
        trainer = train_sft(load_config(RecSFTConfig, config))
    emit({"output_dir": trainer.args.output_dir, "train_loss": trainer.state.log_history[-1].get("train_loss"),
          "epoch": chosen_epoch(trainer), "best_eval_loss": trainer.state.best_metric, "rows_too_long": trainer.rows_too_long},
         as_json, "sft")


@train.command("grpo")
@config_argument
@json_option
def grpo(config: Path, as_json: bool) -> None:
    """GRPO with two-stage constrained rollouts (RecGRPOConfig: model_path, dataset_path, sid_catalog, rewards, TRL's GRPOConfig)."""
    from recot.trainer.grpo import RecGRPOConfig, learning_signal, train_grpo

    with report_only_on_stdout():
        trainer = train_grpo(load_config(RecGRPOConfig, config))
    emit({"output_dir": trainer.args.output_dir, "steps": trainer.state.global_step} | learning_signal(trainer), as_json, "grpo")


@train.command("recipe")
@config_argument
@json_option
def recipe(config: Path, as_json: bool) -> None:
    """GRPO experts per domain, then one model by rejection-sampling fine-tuning or distillation (RecipeConfig)."""
    from recot.runs.recipe import RecipeConfig, run_recipe

    with report_only_on_stdout():
        report = run_recipe(load_config(RecipeConfig, config))
    emit(report, as_json, "recipe")


@train.command("ablation")
@config_argument
@json_option
def ablation(config: Path, as_json: bool) -> None:
    """The grid: {no alignment, alignment} x CoT ratios x {SFT, GRPO with reasoning}, every cell from the same base,
    evaluated with and without reasoning against the reference cell and probed; the table and plot go to OUT (AblationConfig)."""
    from recot.runs.ablation import AblationConfig, run_ablation

    settings = load_config(AblationConfig, config)
    with report_only_on_stdout():
        table = run_ablation(settings)
    emit({"table": str(settings.out / "ablation.md"), "plot": str(settings.out / "ablation.png"), "rows": table}, as_json, "ablation")


@click.command("eval")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="EvalConfig file (TOML/YAML).")
@click.option("--model", type=click.Path(exists=True, path_type=Path))
@click.option("--export", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The recot export the model was trained on (its held-out rows, catalog and split).")
@click.option("--part", type=click.Choice(["valid", "test"]))
@click.option("--k", type=int)
@click.option("--limit", type=int, help="Evaluate a seeded random sample of this many rows.")
@click.option("--think/--no-think", default=None, help="Also evaluate with reasoning.")
@click.option("--engine", type=click.Choice(["auto", "transformers", "vllm"]),
              help="What decodes (auto: vLLM when installed and a GPU is present).")
@click.option("--out", type=click.Path(path_type=Path))
@click.option("--against", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The out folder of an earlier evaluation of the same rows: add the paired difference from it.")
@json_option
def eval_cmd(config: Path | None, as_json: bool, **overrides) -> None:
    """Constrained beam search on an export's held-out rows: Recall/NDCG@K, validity, think vs no-think, Pass@K, CoT cost and grounding."""
    from recot.trainer.evaluate import EvalConfig, evaluate

    settings = load_config(EvalConfig, config, overrides)
    with report_only_on_stdout():
        report = evaluate(settings)
    emit(report, as_json, f"eval -> {settings.out}")
