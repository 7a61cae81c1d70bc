"""The synthesis tasks, declared small: what to ask, what shape the answer has, how it reads as text.

A task names its template (the prompt library's task name), where its subjects come from (catalog
items, co-purchased item pairs, or a split's samples), its output schema, and how a validated
answer becomes training text. Batching, caching and retries belong to the runner, not to a task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from recot.synth.cot import render_cot
from recot.synth.schemas import InterestExpansion, ItemCaption, ItemRelation, cot_trace_model, slate_trace_model

Source = Literal["items", "pairs", "samples"]


def _caption_text(out: ItemCaption) -> str:
    attrs = "; ".join(f"{k}: {v}" for k, v in out.attributes.items())
    qa = "\n".join(f"Q: {pair.question}\nA: {pair.answer}" for pair in out.qa)
    return "\n".join(part for part in (out.caption, attrs, qa) if part)


def _relation_text(out: ItemRelation) -> str:
    return f"{out.relation}: {out.rationale}"


def _interests_text(out: InterestExpansion) -> str:
    return "\n".join(f"{i}. {x.name} (from {', '.join(f'#{e}' for e in x.evidence)})"
                     for i, x in enumerate(out.interests, start=1))


@dataclass(frozen=True)
class Task:
    name: str  # the template's task name in the prompt library
    source: Source
    schema: Callable[[tuple[str, ...]], type[BaseModel]]  # output model for a persona list
    text: Callable[[BaseModel], str]  # training text of a validated output
    needs_target: bool = False  # the prompt shows a target (hindsight, co-purchase pairs): training part only
    slate: bool = False  # samples come with a candidate slate (synth.slates) and the answer must be one of them


TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("r0_caption", "items", lambda _: ItemCaption, _caption_text),
        Task("r1_relation", "pairs", lambda _: ItemRelation, _relation_text, needs_target=True),
        Task("r2_interests", "samples", lambda _: InterestExpansion, _interests_text),
        Task("r3_cot_blind", "samples", cot_trace_model, render_cot),
        Task("r3_cot_slate", "samples", slate_trace_model, render_cot, slate=True),
        Task("r3_cot_hindsight", "samples", cot_trace_model, render_cot, needs_target=True),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]
