"""SFT and GRPO throughput of a 0.5B-class model on a GPU (tokens/s and MFU).

    .venv/bin/python bench/bench_gpu_train.py prepare      # here: tokenizer, data, wheels into bench/.data/gpu
    python bench/bench_gpu_train.py run [--smoke]          # on the GPU machine

The model is Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, vocab 151,936, tied
embeddings) with random weights, bf16, SDPA attention. Data: the bundled sample's next-item rows
(prompts with titles and SIDs) through recot's SFT and RecGRPOTrainer (two-stage constrained
rollouts). MFU = 6 * parameters * trained tokens/s / 989 TFLOP/s (H100 SXM dense bf16); the
lm_head matmul is in the parameter count (tied), attention's own FLOPs are not.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "bench" / ".data" / "gpu"
PEAK_FLOPS = 989e12
# CUDA SDPA gave NaN logits when sampling from left-padded batches (fully masked pad rows); eager masks with a finite minimum
ATTENTION = os.environ.get("RECOT_GPU_ATTENTION", "eager")


def prepare() -> None:
    from recot.curation.next_item import next_item_rows
    from recot.data.loaders import load_dataset
    from recot.synth.job import choose_split
    from recot.trainer.sid_vocab import sid_vocabulary
    from recot.trainer.tiny_model import build_tiny_model

    sample = load_dataset(ROOT / "examples" / "amazon18-industrial-sample")
    split = choose_split(sample, "auto", 10)
    build_tiny_model(WORK / "tokenizer", sample.catalog.items["title"].to_list(), sid_vocabulary(sample.catalog), vocab_size=8000)
    next_item_rows(split, sample.catalog, "train").select("prompt", "completion").write_parquet(WORK / "sft.parquet")
    next_item_rows(split, sample.catalog, "train", think=True).select("prompt", "target_sid").write_parquet(WORK / "grpo.parquet")
    (WORK / "sids.json").write_text(json.dumps(sample.catalog.sid_text().drop_nulls().to_list()))


class Meter:
    """Trained tokens and seconds between the first and the last log (start-up excluded)."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class OnLog(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "num_tokens" in logs:
                    meter.points.append((time.perf_counter(), float(logs["num_tokens"])))

        return OnLog()

    def tokens_per_s(self) -> float:
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0)


def _model(path: Path, tokenizer_dir: Path, smoke: bool) -> int:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, vocab_size=len(tokenizer)) \
        if smoke else dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, vocab_size=151_936)
    config = Qwen2Config(num_key_value_heads=2 if not smoke else 1, tie_word_embeddings=True, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run(smoke: bool, phases: tuple[str, ...] = ("sft", "grpo")) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.trainer.grpo import RecGRPOConfig, RecGRPOTrainer
    from recot.trainer.sft import RecSFTConfig, train_sft
    from recot.trainer.trie import SidTrie

    gpu = torch.cuda.is_available()
    out = Path(os.environ.get("OUT", "/tmp/recot-gpu"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path("/tmp/recot-gpu-model")
    params = _model(model_dir, WORK / "tokenizer", smoke)
    common = dict(report_to="none", bf16=gpu, use_cpu=not gpu, save_strategy="no", logging_steps=5, disable_tqdm=True)
    result: dict = {"device": torch.cuda.get_device_name() if gpu else "cpu", "parameters": params, "torch": torch.__version__}

    sft_rows = datasets.Dataset.from_parquet(str(WORK / "sft.parquet"))
    for batch in ((8,) if smoke else (16, 64)) if "sft" in phases else ():
        meter = Meter()
        config = RecSFTConfig(output_dir="/tmp/recot-gpu-sft", model_path=str(model_dir), max_steps=10 if smoke else 60,
                              per_device_train_batch_size=batch, learning_rate=1e-4, max_length=512, gradient_checkpointing=False,
                              **common)
        started = time.perf_counter()
        trainer = train_sft(config, sft_rows, callbacks=[meter.callback()])
        tokens_s = meter.tokens_per_s()
        result[f"sft_batch{batch}"] = {"tokens_per_s": round(tokens_s), "mfu": round(6 * params * tokens_s / PEAK_FLOPS, 4),
                                       "seconds": round(time.perf_counter() - started, 1),
                                       "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if gpu else None,
                                       "final_loss": trainer.state.log_history[-1].get("train_loss")}
        del trainer
        (out / "gpu_train.json").write_text(json.dumps(result, indent=1))
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if "grpo" not in phases:
        return

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if gpu else torch.float32, attn_implementation=ATTENTION)
    trie = SidTrie.from_sids(tokenizer, json.loads((WORK / "sids.json").read_text()))
    meter = Meter()
    config = RecGRPOConfig(output_dir="/tmp/recot-gpu-grpo", max_steps=4 if smoke else 12, per_device_train_batch_size=64 if not smoke else 8,
                           num_generations=8 if not smoke else 4, num_candidates=4, max_reasoning_tokens=64 if not smoke else 8,
                           max_completion_length=96, learning_rate=1e-6, beta=0.0, **{**common, "logging_steps": 1})
    trainer = RecGRPOTrainer(model=model, args=config, trie=trie, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_parquet(str(WORK / "grpo.parquet")), callbacks=[meter.callback()])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    steps = config.max_steps
    tokens_s = meter.tokens_per_s()
    result["grpo"] = {"rollouts_per_step": config.per_device_train_batch_size, "num_candidates": config.num_candidates,
                      "seconds_per_step": round(seconds / steps, 2), "rollouts_per_s": round(steps * config.per_device_train_batch_size / seconds, 1),
                      "tokens_per_s": round(tokens_s), "mfu_of_trained_tokens": round(6 * params * tokens_s / PEAK_FLOPS, 4),
                      "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if gpu else None}
    (out / "gpu_train.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        prepare()
    else:
        run("--smoke" in sys.argv, tuple(a for a in sys.argv[2:] if not a.startswith("--")) or ("sft", "grpo"))
