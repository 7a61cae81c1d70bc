"""``recot train sft|grpo|recipe CONFIG`` and ``recot eval``: thin wrappers over the trainer's Python API.

Training configs are TOML or YAML files whose keys are the fields of RecSFTConfig / RecGRPOConfig
(TRL's SFTConfig / GRPOConfig plus recot's own) or of RecipeConfig; ``--set key=value`` overrides.
"""

from __future__ import annotations

from pathlib import Path

import click

from synth.cli import emit, json_option
from synth.config import load_config, read_config_file
from synth.errors import DataError

config_argument = click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def _dataclass_config(cls, path: Path, data: dict | None = None):
    """A TRL-style dataclass config from a file (or from ``data`` already read from it)."""
    data = read_config_file(path) if data is None else data
    try:
        return cls(**data)
    except TypeError as exc:
        raise DataError(path, f"not a {cls.__name__} setting: {exc}", f"use the fields of {cls.__name__} (TRL's docs list them)") from None


@click.group()
def train() -> None:
    """Train on curated exports: SFT, GRPO, or the specialise-then-unify recipe."""


@train.command("sft")
@config_argument
@json_option
def sft(config: Path, as_json: bool) -> None:
    """Supervised fine-tuning (RecSFTConfig: model_path, dataset_path, sid_dataset, LoRA, warm-up, TRL's SFTConfig)."""
    from trainer.sft import RecSFTConfig, train_sft

    trainer = train_sft(_dataclass_config(RecSFTConfig, config))
    emit({"output_dir": trainer.args.output_dir, "train_loss": trainer.state.log_history[-1].get("train_loss")}, as_json, "sft")


@train.command("grpo")
@config_argument
@json_option
def grpo(config: Path, as_json: bool) -> None:
    """GRPO with two-stage constrained rollouts (RecGRPOConfig plus model_path, dataset_path, sid_dataset, rewards)."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synth.loaders import load_dataset
    from trainer.grpo import RecGRPOConfig, RecGRPOTrainer
    from trainer.rewards import REWARDS
    from trainer.trie import SidTrie

    data = read_config_file(config)
    paths = {key: data.pop(key, None) for key in ("model_path", "dataset_path", "sid_dataset", "rewards")}
    missing = [key for key in ("model_path", "dataset_path", "sid_dataset") if not paths[key]]
    if missing:
        raise DataError(config, f"missing {', '.join(missing)}", "name the model, the export folder and the dataset of the SIDs")
    args = _dataclass_config(RecGRPOConfig, config, data)
    tokenizer = AutoTokenizer.from_pretrained(paths["model_path"])
    trie = SidTrie.from_sids(tokenizer, load_dataset(Path(paths["sid_dataset"])).catalog.sid_text().drop_nulls().to_list())
    rewards = [REWARDS[name] for name in paths["rewards"]] if paths["rewards"] else None
    trainer = RecGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(paths["model_path"]), args=args, trie=trie,
                             processing_class=tokenizer, reward_funcs=rewards,
                             train_dataset=datasets.load_dataset(paths["dataset_path"], name="grpo")["train"])
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    emit({"output_dir": args.output_dir, "steps": trainer.state.global_step}, as_json, "grpo")


@train.command("recipe")
@config_argument
@json_option
def recipe(config: Path, as_json: bool) -> None:
    """GRPO experts per domain, then one model by rejection-sampling fine-tuning or distillation (RecipeConfig)."""
    from trainer.recipe import RecipeConfig, run_recipe

    emit(run_recipe(load_config(RecipeConfig, config)), as_json, "recipe")


@click.command("eval")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="EvalConfig file (TOML/YAML).")
@click.option("--model", type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--part", type=click.Choice(["valid", "test"]))
@click.option("--k", type=int)
@click.option("--limit", type=int, help="Evaluate a seeded random sample of this many rows.")
@click.option("--think/--no-think", default=None, help="Also evaluate with reasoning.")
@click.option("--out", type=click.Path(path_type=Path))
@json_option
def eval_cmd(config: Path | None, as_json: bool, **overrides) -> None:
    """Constrained beam search on a split: Recall/NDCG@K, validity, think vs no-think, Pass@K, CoT cost and grounding."""
    from trainer.evaluate import EvalConfig, evaluate

    settings = load_config(EvalConfig, config, overrides)
    report = evaluate(settings)
    emit(report, as_json, f"eval -> {settings.out}")
