"""The in-process vLLM teacher against raw ``LLM.chat`` on the same prompts (one engine, CPU build).

recot: ``VLLMTeacher.generate`` (batches of ``batch_size`` through ``LLM.chat``, per-request seeds and
structured outputs) plus ``parse_response`` on every answer. Baseline: one ``LLM.chat`` call with the
same conversations and the same ``SamplingParams``. Interleaved rounds after a warm-up; the ratio is
baseline seconds over recot seconds (target: >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recot.formats.schemas import ItemRelation  # noqa: E402
from recot.synth.parse import parse_response  # noqa: E402
from recot.teachers.base import Request  # noqa: E402
from recot.teachers.vllm_engine import VLLMTeacher  # noqa: E402

SCHEMA = ItemRelation.model_json_schema()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from recot.trainer.tiny_model import build_tiny_model

    model = build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "tiny", [f"drill bits item {i}" for i in range(500)])
    teacher = VLLMTeacher(str(model), {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True}, batch_size=1024)
    requests = [Request(f"k{i}", "r1_relation", [{"role": "user", "content": f"Item A {i}: drill. Item B: bits {i % 97}. Relation?"}],
                        SCHEMA, 0, i, 0.7, 1.0, args.max_tokens) for i in range(args.requests)]
    params = [teacher.sampling_params(r) for r in requests]
    conversations = [r.messages for r in requests]

    def recot() -> None:
        for response in teacher.generate(requests):
            parse_response(response, ItemRelation)

    def raw() -> None:
        teacher.llm.chat(conversations, params, use_tqdm=False)

    raw()  # warm-up: engine start, grammar compilation, prefix cache
    best = {"recot": float("inf"), "raw LLM.chat": float("inf")}
    for round_ in range(args.rounds):
        for name, fn in ([("recot", recot), ("raw LLM.chat", raw)] if round_ % 2 == 0 else [("raw LLM.chat", raw), ("recot", recot)]):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"\n{args.requests} requests, max_tokens {args.max_tokens}, best of {args.rounds} interleaved rounds")
    for name, seconds in best.items():
        print(f"{name:<14} {args.requests / seconds:>8.1f} req/s")
    print(f"ratio recot / raw LLM.chat: {best['raw LLM.chat'] / best['recot']:.3f}")


if __name__ == "__main__":
    main()
