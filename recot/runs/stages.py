"""Pre-training, alignment, SFT, GRPO or any TRL-style config as one stage of a larger run (the pipeline, the ablation, the recipe): the run
decides the paths, the stage table the rest."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from recot.config import load_config

C = TypeVar("C")
TrainKind = Literal["pretrain", "align", "sft", "grpo"]
# a stage inside a run writes no checkpoints and reports nowhere unless its table asks
STAGE_DEFAULTS = {"report_to": "none", "save_strategy": "no"}


def stage_config(kind: type[C], settings: dict[str, Any], **fixed: Any) -> C:
    """``kind`` from a stage table: recot's stage defaults, then ``settings``, then what the run ``fixed`` (paths)."""
    return load_config(kind, overrides={**STAGE_DEFAULTS, **settings, **fixed})


def train_stage(kind: TrainKind, settings: dict[str, Any], model_path: str | Path, export: Path,
                output_dir: Path):
    """Train from ``model_path`` on the export at ``export`` (its rows and, but for pre-training, its catalog's SIDs) into a
    fresh ``output_dir``. Returns the trainer."""
    from recot.trainer.align import RecAlignConfig, RecPretrainConfig, train_align
    from recot.trainer.grpo import RecGRPOConfig, train_grpo
    from recot.trainer.sft import RecSFTConfig, train_sft

    fixed = {"model_path": str(model_path), "dataset_path": str(export), "output_dir": str(output_dir)}
    if kind != "pretrain":
        fixed["sid_catalog"] = str(export)
    kinds: dict[str, tuple[type, Callable[[Any], Any]]] = {
        "pretrain": (RecPretrainConfig, train_align), "align": (RecAlignConfig, train_align), "sft": (RecSFTConfig, train_sft),
        "grpo": (RecGRPOConfig, train_grpo)}
    config_kind, train = kinds[kind]
    config: Any = stage_config(config_kind, settings, **fixed)
    shutil.rmtree(output_dir, ignore_errors=True)  # after the settings load: a bad table deletes nothing
    return train(config)
