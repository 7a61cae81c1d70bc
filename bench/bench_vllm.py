"""The in-process vLLM teacher (the engine's step loop, kept full) against one batched ``LLM.chat`` (one engine).

recot: ``VLLMTeacher.generate``, which adds requests to the engine up to ``max_in_flight`` and hands each answer on as
it finishes, plus ``parse_response`` on every answer. Baseline: one ``LLM.chat`` call with the same conversations and
the same ``SamplingParams`` (what the teacher did before: nothing is seen until the slowest answer ends). Requests
ask for mixed lengths (a quarter long, the rest short), as real replies are. Interleaved rounds after a warm-up.

Printed per arm: completion tokens/s (ratio recot / baseline, target >= 1.0), seconds to the first answer in hand, and
answers in hand at half the arm's time (what a kill then would not lose).

    .venv/bin/python bench/bench_vllm.py                      # the tiny random model
    .venv/bin/python bench/bench_vllm.py --real --requests 32 # the embedded SmolLM2-135M-Instruct
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
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=96, help="the long requests' budget; the short ones get a sixth")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="the embedded SmolLM2-135M-Instruct instead of the tiny model")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.real:
        from recot.models import get_model

        model, engine = get_model("smollm2-135m-instruct"), {"max_model_len": 2048, "enforce_eager": True}
    else:
        from recot.trainer.tiny_model import build_tiny_model

        model = build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "tiny", [f"drill bits item {i}" for i in range(500)])
        engine = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True}
    teacher = VLLMTeacher(str(model), engine, max_in_flight=args.requests)
    requests = [Request(f"k{i}", "r1_relation", [{"role": "user", "content": f"Item A {i}: drill. Item B: bits {i % 97}. Relation?"}],
                        SCHEMA, 0, i, 1.0, 1.0, args.max_tokens if i % 4 == 0 else max(args.max_tokens // 6, 8))
                for i in range(args.requests)]
    params = [teacher.sampling_params(r) for r in requests]
    conversations = [r.messages for r in requests]

    def recot() -> tuple[int, list[float]]:
        start, arrivals, tokens = time.perf_counter(), [], 0
        for response in teacher.generate(requests):
            parse_response(response, ItemRelation)
            arrivals.append(time.perf_counter() - start)
            tokens += response.completion_tokens
        return tokens, arrivals

    def batched() -> tuple[int, list[float]]:
        start = time.perf_counter()
        outputs = teacher.llm.chat(conversations, params, use_tqdm=False)
        done = time.perf_counter() - start
        return sum(len(o.outputs[0].token_ids) for o in outputs), [done] * len(outputs)

    batched()  # warm-up: engine start, grammar compilation, prefix cache
    arms = {"recot step loop": recot, "one LLM.chat": batched}
    best: dict[str, tuple[float, float, int]] = {}
    for round_ in range(args.rounds):
        for name in (list(arms) if round_ % 2 == 0 else list(arms)[::-1]):
            tokens, arrivals = arms[name]()
            total = max(arrivals)
            figures = (tokens / total, min(arrivals), sum(t <= total / 2 for t in arrivals))
            if name not in best or figures[0] > best[name][0]:
                best[name] = figures
    print(f"\n{args.requests} requests ({'SmolLM2-135M-Instruct' if args.real else 'tiny random model'}), a quarter with "
          f"max_tokens {args.max_tokens}, best of {args.rounds} interleaved rounds")
    print(f"{'arm':<16} {'tokens/s':>9} {'first answer s':>15} {'in hand at half time':>21}")
    for name, (rate, first, half) in best.items():
        print(f"{name:<16} {rate:>9.1f} {first:>15.2f} {half:>21}")
    print(f"ratio recot / one LLM.chat (completion tokens/s): {best['recot step loop'][0] / best['one LLM.chat'][0]:.3f}")


if __name__ == "__main__":
    main()
