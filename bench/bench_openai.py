"""The OpenAI-compatible teacher path against a raw AsyncOpenAI loop at the same concurrency.

recot: ``OpenAITeacher.generate`` (adaptive limit, endpoint choice, retries) plus ``parse_response``
on every answer, as a job runs it. Baselines, same requests, same concurrency, interleaved rounds:
``raw aiohttp`` (AsyncOpenAI with DefaultAioHttpClient, a semaphore, gather) and ``raw httpx`` (the
openai client's default transport). Two servers:
  instant  a loopback server that answers at once (recot.testing.instant_server): the client is
           the bottleneck, as in front of a fleet of GPU servers; client CPU seconds per 1,000 requests
  vllm     a real vLLM OpenAI-compatible server (CPU build) with a tiny random model
Ratios are median requests/s of recot over those of the raw aiohttp loop (target: >= 0.9 instant, >= 0.97 vllm).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recot.formats.schemas import ItemRelation  # noqa: E402
from recot.synth.parse import parse_response  # noqa: E402
from recot.teachers.base import Request  # noqa: E402
from recot.teachers.openai_http import OpenAITeacher  # noqa: E402
from recot.testing.servers import instant_server, vllm_server  # noqa: E402

SCHEMA = ItemRelation.model_json_schema()


def make_requests(n: int, max_tokens: int) -> list[Request]:
    return [Request(f"k{i}", "r1_relation", [{"role": "user", "content": f"Item A {i}: drill. Item B: bits {i % 97}. Relation?"}],
                    SCHEMA, 0, i, 0.7, 1.0, max_tokens) for i in range(n)]


def run_recot(url: str, model: str, requests: list[Request], concurrency: int) -> int:
    teacher = OpenAITeacher(model, [url], concurrency=concurrency)
    return sum(parse_response(r, ItemRelation).status == "ok" for r in teacher.generate(requests))


def run_raw(url: str, model: str, requests: list[Request], concurrency: int, transport: str) -> int:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    async def main() -> int:
        client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=120,
                             http_client=DefaultAioHttpClient() if transport == "aiohttp" else None)
        gate = asyncio.Semaphore(concurrency)

        async def one(r: Request):
            async with gate:
                return await client.chat.completions.create(
                    model=model, messages=r.messages, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                    seed=r.seed, response_format={"type": "json_schema", "json_schema": {"name": r.task, "schema": r.schema, "strict": True}})

        replies = await asyncio.gather(*(one(r) for r in requests))
        await client.close()
        return len(replies)

    return asyncio.run(main())


def measure(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(label: str, url: str, model: str, n: int, concurrency: int, rounds: int, max_tokens: int) -> dict:
    requests = make_requests(n, max_tokens)
    runners = {
        "recot": lambda: run_recot(url, model, requests, concurrency),
        "raw aiohttp": lambda: run_raw(url, model, requests, concurrency, "aiohttp"),
        "raw httpx": lambda: run_raw(url, model, requests, concurrency, "httpx"),
    }
    run_raw(url, model, requests[:concurrency * 2], concurrency, "aiohttp")  # warm-up (server caches, grammars)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for round_ in range(rounds):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for name in order:
            runs[name].append(measure(runners[name]))
            print(f"  round {round_ + 1} {name:<12} {n / runs[name][-1][0]:8.1f} req/s", flush=True)
    best = {name: sorted(r)[len(r) // 2] for name, r in runs.items()}
    print(f"\n{label}: {n} requests, concurrency {concurrency}, median of {rounds} interleaved rounds")
    print(f"{'path':<12} {'req/s':>8} {'client CPU s / 1k req':>22}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<12} {n / wall:>8.1f} {cpu / n * 1000:>22.2f}")
    ratio = best["raw aiohttp"][0] / best["recot"][0]
    print(f"ratio recot / raw aiohttp: {ratio:.3f}   recot / raw httpx: {best['raw httpx'][0] / best['recot'][0]:.2f}")
    return {name: n / wall for name, (wall, _) in best.items()} | {"ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--vllm-requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--skip-instant", action="store_true")
    parser.add_argument("--vllm-rounds", type=int, default=5)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    # On 2 cores a server and the client otherwise fight for CPU and rates swing 3x from run to run:
    # servers get core 1, the client core 0 (the vLLM engine's threads bound to core 1 too).
    os.sched_setaffinity(0, {0})
    if not args.skip_instant:
        server = instant_server(logs / "instant.log")
        server.command = ["taskset", "-c", "1", *server.command]
        server.start(timeout_s=30)
        try:
            compare("instant loopback server", server.url, "ok", args.requests, args.concurrency, args.rounds, 64)
        finally:
            server.stop()
    if args.skip_vllm:
        return
    from recot.trainer.tiny_model import build_tiny_model

    model = build_tiny_model(logs / "tiny", [f"drill bits item {i}" for i in range(500)])
    server = vllm_server(model, logs / "vllm.log")
    server.command = ["taskset", "-c", "1", *server.command]
    server.env = {**(server.env or {}), "VLLM_CPU_OMP_THREADS_BIND": "1"}
    server.start()
    try:
        compare("vLLM server (CPU, tiny model)", server.url, "teacher", args.vllm_requests, 32, args.vllm_rounds, 32)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
