"""SFT overhead: recot's ``train_sft`` (TRL's SFTTrainer) against a plain torch loop on the same model and batches.

    .venv/bin/python bench/bench_sft_overhead.py [--steps 60] [--batch 16] [--repeat 2]

Both sides train the same tiny model (hidden 128, 2 layers, a BPE on the sample's titles, the SID vocabulary) on
the bundled sample's next-item rows. The plain loop takes its batches from the recot trainer's own dataloader, so
padding, truncation, labels and order are identical and only the training loop differs: forward, loss, backward,
AdamW step, nothing else (a second plain loop takes the loss over the trained positions alone, as recot does on a
CPU, to show the Trainer's own share). Both are timed from step 5 to the last step (start-up excluded). Tokens are the batches'
attention-mask tokens, the same for both. Prints tokens/s of each and the overhead ratio plain/recot (1.0: none;
goal at most 1.3). Sides run interleaved, ``--repeat`` times each, best kept. ``SFT_EXTRA`` (JSON) adds
RecSFTConfig keys to the recot side, e.g. ``SFT_EXTRA='{"gradient_checkpointing": false}'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "examples" / "amazon18-industrial-sample"
SKIP = 5  # steps before timing starts


def prepare(work: Path):
    """The base model (with SID tokens) and the SFT rows."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.next_item import next_item_rows
    from recot.data.loaders import load_dataset
    from recot.formats.splits import SplitSpec
    from recot.trainer.sid_vocab import add_sid_vocabulary
    from recot.trainer.tiny_model import build_tiny_model

    sample = load_dataset(SAMPLE)
    build_tiny_model(work / "tiny", sample.catalog.items["title"].to_list())
    tokenizer, model = AutoTokenizer.from_pretrained(work / "tiny"), AutoModelForCausalLM.from_pretrained(work / "tiny")
    add_sid_vocabulary(model, tokenizer, sample.catalog)
    model.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    split = SplitSpec.choose(sample.boundaries, "auto", 10).build(sample.sequences())
    rows = next_item_rows(split, sample.catalog, "train", think=False).select("prompt", "completion")
    return datasets.Dataset.from_list(rows.to_dicts())


def config(work: Path, steps: int, batch: int):
    from recot.trainer.sft import RecSFTConfig

    return RecSFTConfig(model_path=str(work / "base"), output_dir=str(work / "out"), max_steps=steps,
                        per_device_train_batch_size=batch, learning_rate=1e-3, logging_steps=10, save_strategy="no",
                        report_to="none", max_length=512, disable_tqdm=True, seed=0, **json.loads(os.environ.get("SFT_EXTRA", "{}")))


def run_recot(work: Path, data, steps: int, batch: int) -> float:
    """Seconds of steps SKIP..steps under train_sft (the time between the logs of those steps)."""
    from transformers import TrainerCallback

    from recot.trainer.sft import train_sft

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    train_sft(config(work, steps, batch), train_dataset=data, callbacks=[Stamp()])
    return stamps[-1] - stamps[SKIP - 1]


def run_plain(work: Path, data, steps: int, batch: int, trained_only: bool = False) -> tuple[float, int]:
    """Seconds of steps SKIP..steps of a bare loop over the recot trainer's own batches, and their tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    settings = config(work, steps, batch)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    loader = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(settings.model_path), args=settings,
                        train_dataset=data, processing_class=tokenizer).get_train_dataloader()
    batches = []
    for item in loader:
        batches.append(item)
        if len(batches) == steps:
            break
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(settings.model_path)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    tokens, started = 0, 0.0
    for step, item in enumerate(batches, start=1):
        if trained_only:  # the loss over the trained positions alone, as recot's CPU loss computes it
            logits = model(**{k: v for k, v in item.items() if k in ("input_ids", "attention_mask", "position_ids")}).logits
            labels = item["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1][labels != -100].float(), labels[labels != -100])
        else:
            loss = model(**{k: v for k, v in item.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == SKIP:
            started = time.perf_counter()
        elif step > SKIP:
            tokens += int(item["attention_mask"].sum()) if "attention_mask" in item else item["input_ids"].numel()
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = prepare(work)
        recot_s, plain_s, trained_s, tokens = [], [], [], 0
        for _ in range(args.repeat):
            recot_s.append(run_recot(work, data, args.steps, args.batch))
            seconds, tokens = run_plain(work, data, args.steps, args.batch)
            plain_s.append(seconds)
            trained_s.append(run_plain(work, data, args.steps, args.batch, trained_only=True)[0])
    result = {"steps_timed": args.steps - SKIP, "batch": args.batch, "tokens": tokens,
              "recot_tokens_per_s": round(tokens / min(recot_s), 1), "plain_tokens_per_s": round(tokens / min(plain_s), 1),
              "overhead": round(min(recot_s) / min(plain_s), 3),
              "overhead_vs_plain_on_trained_positions": round(min(recot_s) / min(trained_s), 3),
              "recot_s": [round(s, 2) for s in recot_s], "plain_s": [round(s, 2) for s in plain_s],
              "plain_trained_positions_s": [round(s, 2) for s in trained_s]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
