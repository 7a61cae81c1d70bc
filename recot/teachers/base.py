"""What every teacher takes and gives back: plain requests and responses, and the sampling knobs.

A teacher turns a stream of :class:`Request` into a stream of :class:`Response` (in any order,
matched by ``key``). Everything else (cache, journal, parsing, progress) belongs to the runner, so a
new backend is one small class with a ``generate`` method.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from recot.errors import DataError

if TYPE_CHECKING:
    import polars as pl

    from recot.data.catalog import Catalog


class Sampling(BaseModel):
    """Sampling parameters, named as in vLLM's ``SamplingParams``. ``n`` samples per prompt get seeds
    ``seed, seed + 1, ...`` so that every sample is reproducible and cached on its own."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(768, ge=1, description="completion tokens at most (a longer answer is rejected as truncated)")
    n: int = Field(1, ge=1, description="samples per prompt, each its own request with seed + i")
    seed: int = Field(0, description="seed of sample 0")


@dataclass(frozen=True)
class Request:
    """One chat completion to make: the rendered messages, the JSON schema of the answer, and what it is about."""

    key: str  # content hash of everything that changes the answer: the cache key
    task: str
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    sample: int  # 0 .. n-1
    seed: int
    temperature: float
    top_p: float
    max_tokens: int
    subject: dict[str, Any] = field(default_factory=dict)  # user, part, history, target, items (plain JSON)
    template: dict[str, Any] = field(default_factory=dict)  # name, version, hash


@dataclass
class Response:
    """A teacher's answer to one request.

    ``error`` says why there is no answer: ``retryable`` ones (the endpoint stayed unreachable) are
    not recorded, so a rerun asks again; the others are recorded as rejected rows with ``reason``
    (``request_error``: the endpoint refused the request; ``bad_reply``: its replies were no chat
    completion; ``prompt_too_long``: the prompt does not fit the engine's context).

    A teacher that thinks returns its own reasoning apart from the answer: ``reasoning`` (vLLM's reasoning parsers,
    DeepSeek, OpenAI-style servers) and ``reasoning_tokens`` as the server reports them (None: not reported), counted
    within ``completion_tokens`` as they are billed. A reply whose text opens with a ``<think>...</think>`` block (a
    thinking model served without a reasoning parser) has that block moved to ``reasoning`` here, so every backend's
    answer is the text after it. The reasoning is provenance, never the trace.
    """

    key: str
    text: str | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    retryable: bool = False
    reason: str = "request_error"
    reasoning: str | None = None
    reasoning_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.reasoning is None and self.text is not None:
            self.text, self.reasoning = split_thinking(self.text)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_thinking(text: str) -> tuple[str, str | None]:
    """(answer, reasoning) of a reply that may open with a ``<think>`` block; an unclosed block is all reasoning (the
    reply stopped inside it). Only a leading block counts: a ``</think>`` inside the answer (a quoted title) stays."""
    body = text.lstrip()
    if not body.startswith(THINK_OPEN):
        return text, None
    reasoning, closed, answer = body[len(THINK_OPEN):].partition(THINK_CLOSE)
    return (answer.lstrip(), reasoning.strip()) if closed else ("", reasoning.strip())


class Teacher(Protocol):
    """A backend that answers requests. ``identity`` (kind and model) goes into cache keys and provenance."""

    kind: str
    model: str

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TeacherInputs:
    """What a job hands the factory of any teacher: the catalog, the personas its schemas offer, and the training
    part's samples (popularity, before the cut-off). A backend takes what it needs and ignores the rest."""

    catalog: Catalog
    personas: tuple[str, ...]
    train_targets: pl.LazyFrame


@dataclass(frozen=True)
class TeacherKind:
    """One teacher backend in the registry: ``config`` is a pydantic model whose ``kind`` field is a ``Literal`` of the
    backend's name (the ``[teacher]`` table is validated as it), ``build`` makes the teacher from a config and the
    job's :class:`TeacherInputs`, and ``tasks`` names the tasks it can answer (None: any task, given its prompt)."""

    config: type[BaseModel]
    build: Callable[[Any, TeacherInputs], Teacher]
    tasks: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return typing.get_args(self.config.model_fields["kind"].annotation)[0]


class UnsupportedTask(DataError):
    """A teacher was asked for a task it cannot answer; the fix names the teachers that can."""

    def __init__(self, teacher: str, task: str, able: list[str]) -> None:
        super().__init__("[teacher]", f"teacher {teacher!r} cannot answer task {task!r}",
                         f"choose a teacher that can: {', '.join(able) or 'none is registered'}")


def canonical_json(value: Any) -> str:
    """The one JSON text of a value that request keys hash: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def request_key(teacher_kind: str, model: str, messages: list[dict[str, str]], schema: dict[str, Any],
                template_hash: str, sampling: Sampling, sample: int, schema_json: str | None = None) -> str:
    """Content hash of what determines an answer: canonical JSON, never ``str()`` or pickles of objects.

    ``schema_json``, when given, must be ``canonical_json(schema)``: a job that asks many requests with
    one schema (or one schema up to a slate's SIDs) serialises it once. Sorted-key JSON is compositional,
    so the payload is written part by part and the text is byte-identical to dumping it whole."""
    parts = {
        "messages": canonical_json(messages), "model": canonical_json(model), "sample": canonical_json(sample),
        "sampling": canonical_json(sampling.model_dump(exclude={"n"}) | {"seed": sampling.seed + sample}),
        "schema": canonical_json(schema) if schema_json is None else schema_json,
        "teacher": canonical_json(teacher_kind), "template": canonical_json(template_hash),
    }
    text = "{" + ",".join(f'"{name}":{part}' for name, part in sorted(parts.items())) + "}"
    return hashlib.sha256(text.encode()).hexdigest()
