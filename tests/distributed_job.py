"""SFT or GRPO on the tiny model, run by tests/test_distributed.py once as one process and once under
``accelerate launch --multi_gpu --num_processes 2`` on the CPU (gloo): the same code a multi-GPU run executes.

Each rank writes ``ranks/RANK.json`` beside (not inside) the model folder: the training rows it saw (the token ids of
each SFT row, the prompt text of each GRPO rollout), the steps, the train loss, and every write it made inside the
model folder (seen through Python's audit hooks: open for writing, mkdir, rename, remove, rmtree).

    python tests/distributed_job.py sft|grpo MODEL CATALOG ROWS OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree"}


def watch_writes(root: Path) -> list[str]:
    """Every write this process makes under ``root`` from now on."""
    writes: list[str] = []
    prefix = str(root.resolve())

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | Path) and str(args[0]).startswith(prefix):
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                writes.append(f"open {args[0]}")
        elif event in WRITE_EVENTS and args and isinstance(args[0], str | Path) and str(args[0]).startswith(prefix):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    return writes


def main(kind: str, model: str, catalog: str, rows_file: str, out: str) -> None:
    import datasets
    import polars as pl

    from recot.trainer.grpo import RecGRPOConfig, RecGRPOTrainer, train_grpo
    from recot.trainer.sft import RecSFTConfig, RecSFTTrainer, train_sft

    rank = int(os.environ.get("RANK", "0"))
    target = Path(out) / "model"
    writes = watch_writes(target)
    seen: list = []
    rows = datasets.Dataset.from_polars(pl.read_parquet(rows_file))
    common = {"output_dir": str(target), "model_path": model, "sid_catalog": catalog, "report_to": "none",
              "save_strategy": "no", "logging_steps": 1, "seed": 0, "data_seed": 0}
    if kind == "sft":
        def observed_step(self, model, inputs, num_items_in_batch=None):
            for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()):
                seen.append([i for i, m in zip(ids, mask) if m])
            return base_step(self, model, inputs, num_items_in_batch)

        base_step = RecSFTTrainer.training_step
        RecSFTTrainer.training_step = observed_step  # type: ignore[method-assign]
        trainer = train_sft(RecSFTConfig(**common, num_train_epochs=1, per_device_train_batch_size=4 // world(),
                                         learning_rate=1e-3, max_length=1024, early_stopping_patience=0), rows)
    else:
        def observed_rollouts(self, inputs):
            seen.extend(str(x["prompt"]) for x in inputs)
            return base_rollouts(self, inputs)

        base_rollouts = RecGRPOTrainer._generate_and_score_completions
        RecGRPOTrainer._generate_and_score_completions = observed_rollouts  # type: ignore[method-assign]
        trainer = train_grpo(RecGRPOConfig(**common, max_steps=2, per_device_train_batch_size=8 // world(), num_generations=4,
                                           num_candidates=4, reasoning=False, rollout="beam", beta=0.0, learning_rate=1e-3,
                                           shuffle_dataset=False), rows)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    report = {"rank": rank, "world": world(), "seen": seen, "steps": trainer.state.global_step, "losses": losses,
              "writes": writes}
    (Path(out) / "ranks").mkdir(parents=True, exist_ok=True)
    (Path(out) / "ranks" / f"{rank}.json").write_text(json.dumps(report))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


if __name__ == "__main__":
    main(*sys.argv[1:6])
