"""SFT or GRPO as one stage of a larger run (the pipeline, the ablation): the run decides the paths."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from recot.synth.config import load_config


def train_stage(kind: Literal["sft", "grpo"], settings: dict[str, Any], model_path: str | Path, dataset_path: Path,
                sid_dataset: Path, output_dir: Path):
    """Train from ``model_path`` on the export at ``dataset_path`` into a fresh ``output_dir``; ``settings`` are the
    stage table's (no checkpoints or reports unless it asks). Returns the trainer."""
    if kind == "sft":
        from recot.trainer.sft import RecSFTConfig as Config
        from recot.trainer.sft import train_sft as train
    else:
        from recot.trainer.grpo import RecGRPOConfig as Config
        from recot.trainer.grpo import train_grpo as train
    config = load_config(Config, overrides={"report_to": "none", "save_strategy": "no", **settings, "model_path": str(model_path),
                                            "dataset_path": str(dataset_path), "sid_dataset": str(sid_dataset),
                                            "output_dir": str(output_dir)})
    shutil.rmtree(output_dir, ignore_errors=True)  # after the settings load: a bad table deletes nothing
    return train(config)
