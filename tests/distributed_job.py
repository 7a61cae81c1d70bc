"""SFT or GRPO on the tiny model, run by tests/test_distributed.py once as one process and once under
``accelerate launch --multi_gpu --num_processes 2`` on the CPU (gloo): the same code a multi-GPU run executes.

SFT and then GRPO run from the same model into ``OUT/runs/KIND``; after each, every rank writes
``OUT/reports/KIND-RANK.json``: the training rows it saw (the token ids of each SFT row, the prompt text of each GRPO
rollout), the steps, the logged losses, and every write it made under ``OUT/runs`` during that run (seen through
Python's audit hooks: open for writing, mkdir, rename, remove, rmtree).

    python tests/distributed_job.py MODEL CATALOG ROWS_DIR OUT      # ROWS_DIR holds sft.parquet and grpo.parquet
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


def main(model: str, catalog: str, rows: str, out: str) -> None:
    """SFT, then GRPO, each from ``model``: one launch pays the processes' start-up once."""
    import datasets
    import polars as pl

    from recot.trainer.grpo import RecGRPOConfig, RecGRPOTrainer, train_grpo
    from recot.trainer.sft import RecSFTConfig, RecSFTTrainer, train_sft

    writes = watch_writes(Path(out) / "runs")
    seen: list = []

    def observed_step(self, model, inputs, num_items_in_batch=None):
        for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()):
            seen.append([i for i, m in zip(ids, mask) if m])
        return base_step(self, model, inputs, num_items_in_batch)

    def observed_rollouts(self, inputs):
        seen.extend(str(x["prompt"]) for x in inputs)
        return base_rollouts(self, inputs)

    base_step, base_rollouts = RecSFTTrainer.training_step, RecGRPOTrainer._generate_and_score_completions
    RecSFTTrainer.training_step = observed_step  # type: ignore[method-assign]
    RecGRPOTrainer._generate_and_score_completions = observed_rollouts  # type: ignore[method-assign]
    runs = {
        "sft": lambda common, data: train_sft(RecSFTConfig(**common, num_train_epochs=1, per_device_train_batch_size=4 // world(),
                                                           learning_rate=1e-3, max_length=1024, early_stopping_patience=0), data),
        "grpo": lambda common, data: train_grpo(RecGRPOConfig(**common, max_steps=2, per_device_train_batch_size=8 // world(),
                                                              num_generations=4, num_candidates=4, reasoning=False, rollout="beam",
                                                              beta=0.0, learning_rate=1e-3, shuffle_dataset=False), data),
    }
    for kind, run in runs.items():
        seen.clear()
        writes.clear()
        common = {"output_dir": str(Path(out) / "runs" / kind), "model_path": model, "sid_catalog": catalog, "report_to": "none",
                  "save_strategy": "no", "logging_steps": 1, "seed": 0, "data_seed": 0}
        trainer = run(common, datasets.Dataset.from_polars(pl.read_parquet(Path(rows) / f"{kind}.parquet")))
        report = {"world": world(), "seen": list(seen), "steps": trainer.state.global_step, "writes": list(writes),
                  "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]}
        reports = Path(out) / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        (reports / f"{kind}-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(report))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
