"""The dtype a model computes in on this machine: bfloat16 where the hardware does it fast, float32 elsewhere.

On a CPU, bfloat16 is fast only with the AVX-512 BF16 or AMX instructions: without them vLLM-CPU falls back to
plain torch linear layers and runs several times slower than in float32 (measured on an AMD EPYC without AVX-512:
bf16 had not answered 40 requests after 9 minutes; float32 wrote 36 completion tokens/s). So the default follows
the CPU's flags, and a user's explicit dtype always wins.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return bool(BF16_FLAGS & cpu_flags())


def engine_dtype() -> str:
    """vLLM's ``dtype`` when none is given: the model's own on a GPU, bfloat16 on a CPU with fast bf16, else float32."""
    import torch

    if torch.cuda.is_available():
        return "auto"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"
