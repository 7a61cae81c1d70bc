"""The grid of bench_ablation.py with a larger model and vLLM decoding, on a GPU (issue 25, section 7).

    python bench/bench_grid_gpu.py [--smoke] [--base smollm2-135m-instruct]   # on the GPU machine, from the repository root

The same grid (pre-training on item text, {no alignment, alignment} x CoT ratios {0, 1} x {SFT, GRPO with
reasoning}, each cell evaluated with and without reasoning on the same test rows, paired intervals, the
perception probe) with a random Qwen2 of hidden 512 and 8 layers (about 30M parameters with its 8k BPE: no
hub is reachable there either), bf16, larger batches, GRPO rollouts and evaluation decoded by vLLM in the
training process (`rollout_engine = "vllm"`, `engine = "vllm"`). `--base` runs it on a pretrained base instead (a model
source such as `smollm2-135m-instruct`, or a folder): no stand-in pre-training, learning rate 5e-5. It needs the full Industrial set at
../shared/data (carry it, or pass --out to a folder that has it). The table is copied to $OUT when set.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    import torch
    from bench_ablation import main as grid

    if not torch.cuda.is_available():
        sys.exit("needs a GPU: run it on the device machine (bench_ablation.py is the CPU grid)")
    smoke = "--smoke" in sys.argv
    base = sys.argv[sys.argv.index("--base") + 1] if "--base" in sys.argv else None
    out = ROOT / "bench" / ".data" / ("grid-gpu" if base is None else f"grid-gpu-{Path(base).name}")
    model = ["--base", base, "--batch", "32"] if base else ["--hidden", "512", "--layers", "8", "--vocab", "8000", "--batch", "64"]
    grid([*model, "--engine", "vllm", "--out", str(out),
          "--samples", "300" if smoke else "3000", "--eval-rows", "50" if smoke else "1000",
          "--max-epochs", "1" if smoke else "8", "--align-epochs", "1" if smoke else "4", "--grpo-steps", "2" if smoke else "100"])
    if os.environ.get("OUT"):
        shutil.copy(out / "ablation" / "ablation.md", Path(os.environ["OUT"]) / "ablation.md")
        shutil.copy(out / "ablation" / "ablation.json", Path(os.environ["OUT"]) / "ablation.json")


if __name__ == "__main__":
    main()
