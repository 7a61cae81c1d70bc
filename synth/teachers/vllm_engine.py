"""The in-process vLLM teacher: offline batches through ``LLM.chat`` with structured outputs.

Requests are taken in batches of ``batch_size`` so answers reach the journal while the job runs;
within a batch vLLM schedules everything itself (continuous batching, prefix caching). Each request
carries its own seed, so ``n`` samples per prompt are ``n`` reproducible requests. An offline batch
has no per-request latency: ``latency_s`` is the batch's wall time divided by its size.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from recot.synth.teachers.base import Request, Response


class VLLMTeacher:
    kind = "vllm"

    def __init__(self, model: str, engine: dict[str, Any] | None = None, batch_size: int = 1024,
                 compact_json: bool = True) -> None:
        """``engine``: keyword arguments for ``vllm.LLM`` (dtype, max_model_len, tensor_parallel_size, ...).

        ``compact_json`` forbids free whitespace inside the JSON: fewer tokens, and a weak model
        cannot wander off into endless blanks.
        """
        self.model = model
        self.engine_args = {"model": model, **(engine or {})}
        self.batch_size = batch_size
        self.compact_json = compact_json
        self._llm = None

    @property
    def llm(self):
        if self._llm is None:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for --json reports
            import torch
            from vllm import LLM

            args = dict(self.engine_args)
            if not torch.cuda.is_available():
                # vllm-cpu 0.32 kills its engine on a seeded request in a partial (chunked) prefill.
                args.setdefault("enable_chunked_prefill", False)
            self._llm = LLM(**args)
        return self._llm

    def sampling_params(self, request: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens, seed=request.seed,
            structured_outputs=StructuredOutputsParams(json=request.schema, disable_any_whitespace=self.compact_json),
        )

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        stream = iter(requests)
        while batch := list(itertools.islice(stream, self.batch_size)):
            started = time.perf_counter()
            outputs = self.llm.chat([r.messages for r in batch], [self.sampling_params(r) for r in batch],
                                    use_tqdm=False)
            latency = (time.perf_counter() - started) / len(batch)
            for request, output in zip(batch, outputs, strict=True):
                choice = output.outputs[0]
                yield Response(request.key, choice.text, choice.finish_reason, None,
                               len(output.prompt_token_ids or ()), len(choice.token_ids), latency)

    def close(self) -> None:
        self._llm = None
