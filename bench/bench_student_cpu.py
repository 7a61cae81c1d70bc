"""Training a real base on a CPU: float32 against bf16 autocast (float32 master weights), full fine-tuning against LoRA.

    .venv/bin/python bench/bench_student_cpu.py [--steps 12] [--batch 8] [--rows 400] [--valid 32] [--arms NAME ...]

The student is SmolLM2-135M-Instruct (``recot models get smollm2-135m-instruct``) with the bundled sample's SID
vocabulary, trained by ``train_sft`` on the sample's next-item rows (direct answers, the model's own chat template).
Every arm trains the same rows in the same order for ``--steps`` steps, then scores the same held-out rows (validation
loss on the answer tokens: the metric each arm can be compared on after equal steps). Timed from step 3 (start-up
excluded); tokens are the batches' attention-mask tokens. Prints tokens/s per arm, the ratio to the named baseline
(float32, full fine-tuning, measured in the same run) and whether this CPU has fast bf16 (what recot's default reads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import TrainerCallback  # noqa: E402  (offline first)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "examples" / "amazon18-industrial-sample"
SKIP = 3
BASELINE = "fp32 full (baseline)"
ARMS = {BASELINE: {"bf16": False}, "bf16 autocast full": {"bf16": True},
        "fp32 LoRA r=16": {"bf16": False, "lora_r": 16}}


def rows(limit: int, valid: int):
    import datasets

    from recot.curation.next_item import next_item_rows
    from recot.data.loaders import load_dataset
    from recot.formats.splits import SplitSpec

    sample = load_dataset(SAMPLE)
    split = SplitSpec.choose(sample.boundaries, "auto", 10).build(sample.sequences())
    table = next_item_rows(split, sample.catalog, "train", think=False).select("prompt", "completion").head(limit + valid)
    records = table.to_dicts()  # conversational already: the student prompt as a user turn, the SID as the answer
    return sample, datasets.Dataset.from_list(records[:limit]), datasets.Dataset.from_list(records[limit:])


class Timer(TrainerCallback):
    """The seconds from the start of step SKIP to the end of training."""

    def __init__(self) -> None:
        self.started = self.seconds = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == SKIP:
            self.started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started


def run(arm: dict, work: Path, base: str, catalog: Path, train, valid, steps: int, batch: int) -> dict:
    from recot.trainer.sft import RecSFTConfig, train_sft

    timer = Timer()
    config = RecSFTConfig(model_path=base, output_dir=str(work), sid_catalog=str(catalog), max_steps=steps,
                          per_device_train_batch_size=batch, per_device_eval_batch_size=batch, learning_rate=1e-4,
                          logging_steps=1, save_strategy="no", report_to="none", max_length=384, disable_tqdm=True, seed=0,
                          early_stopping_patience=0, **arm)
    trainer = train_sft(config, train, valid, callbacks=[timer])
    tokens = trainer.state.log_history[-2].get("num_tokens") or 0
    per_step = tokens / max(trainer.state.global_step, 1)
    return {"tokens_s": per_step * (steps - SKIP) / timer.seconds, "eval_loss": trainer.evaluate()["eval_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--valid", type=int, default=32, help="held-out rows scored after training")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to run (the baseline always runs)")
    args = parser.parse_args()
    from recot.models import get_model
    from recot.models.dtype import cpu_has_fast_bf16

    sample, train, valid = rows(args.rows, args.valid)
    base = str(get_model("smollm2-135m-instruct"))
    print(f"CPU has fast bf16 (avx512_bf16 or amx_bf16): {cpu_has_fast_bf16()}; {os.cpu_count()} cores; "
          f"{args.steps} steps of {args.batch} rows, timed from step {SKIP}")
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.parquet"
        sample.catalog.items.select("item_id", "title", "brand").with_columns(sid_text=sample.catalog.sid_text()).write_parquet(catalog)
        results = {name: run(arm, Path(tmp) / str(i), base, catalog, train, valid, args.steps, args.batch)
                   for i, (name, arm) in enumerate(ARMS.items()) if name in {*args.arms, BASELINE}}
    baseline = results[BASELINE]["tokens_s"]
    print("| arm | tokens/s | ratio to fp32 full | validation loss after the same steps |\n|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['tokens_s']:.0f} | {result['tokens_s'] / baseline:.2f}x | {result['eval_loss']:.3f} |")


if __name__ == "__main__":
    main()
