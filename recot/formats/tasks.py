"""The synthesis tasks, declared small: what to ask, what shape the answer has, how it reads as text.

A task names its template (the prompt library's task name, or a template file of its own), where
its subjects come from (catalog items, co-purchased item pairs, or a split's samples), its output
schema, how a validated answer becomes training text, and what curation and export need to know:
whether its text is a CoT trace (the CoT rules apply and export trains next-item generation with
it), whether its prompt shows the target, and, for the others, the student's prompt. Batching,
caching and retries belong to the runner, not to a task.

Users declare their own in a module of theirs and name them in a job as ``module:attribute``, or
register them under the ``recot.tasks`` entry-point group and name them by entry-point name::

    MY_TASK = Task("complements", "pairs", lambda personas: Complements, render, needs_target=True,
                   student="Which items go with {sid1} {title1}?", template=Path(__file__).with_name("complements.j2"))

A job writes the declarations of its tasks to ``OUT/tasks.json``; the curation store records them at
ingest, so every rule and the export follow what each task declares.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from recot.errors import DataError
from recot.formats.cot import render_cot
from recot.formats.schemas import InterestExpansion, ItemCaption, ItemRelation, cot_trace_model, slate_trace_model
from recot.formats.student import ASK_INTERESTS, STUDENT_FIELDS

TASKS_FILE = "tasks.json"
ENTRY_POINTS = "recot.tasks"
Source = Literal["items", "pairs", "samples"]


def _caption_text(out: ItemCaption) -> str:
    attrs = "; ".join(f"{a.name}: {a.value}" for a in out.attributes)
    qa = "\n".join(f"Q: {pair.question}\nA: {pair.answer}" for pair in out.qa)
    return "\n".join(part for part in (out.caption, attrs, qa) if part)


def _relation_text(out: ItemRelation) -> str:
    return f"{out.relation}: {out.rationale}"


def _interests_text(out: InterestExpansion) -> str:
    return "\n".join(f"{i}. {x.name} (from {', '.join(f'#{e}' for e in x.evidence)})"
                     for i, x in enumerate(out.interests, start=1))


@dataclass(frozen=True)
class Task:
    name: str  # the template's task name in the prompt library; the ``task`` column of its traces
    source: Source
    schema: Callable[[tuple[str, ...]], type[BaseModel]]  # output model for a persona list
    text: Callable[[Any], str]  # training text of a validated output (an instance of the task's schema)
    needs_target: bool = False  # the prompt shows a target (hindsight, co-purchase pairs): training part only
    slate: bool = False  # samples come with a candidate slate (synth.slates) and the answer must be one of them
    cot: bool = False  # the text is a CoT trace (synth.cot): CoT rules; export trains next-item generation with it
    student: str = ""  # a non-CoT task's student prompt, with fields among {history} {sid1} {title1} {sid2} {title2}
    template: Path | None = None  # a template file of its own (its header names this task), for tasks recot does not bundle

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"task name {self.name!r}: letters, digits, _ . - only, starting with a letter")
        unknown = set(re.findall(r"\{(\w+)\}", self.student)) - set(STUDENT_FIELDS)
        if unknown or (not self.cot and not self.student):
            raise ValueError(f"task {self.name}: a task without the CoT format needs a student prompt using only "
                             f"{sorted(STUDENT_FIELDS)} (unknown: {sorted(unknown)})")

    def declaration(self, personas: tuple[str, ...]) -> dict[str, Any]:
        """What curation and export need to know about the task: plain JSON, recorded in the store."""
        return {"task": self.name, "source": self.source, "cot": self.cot, "shows_target": self.needs_target,
                "slate": self.slate, "interests": "interests" in self.schema(personas).model_fields, "student": self.student}


TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("r0_caption", "items", lambda _: ItemCaption, _caption_text, student="What is the item {sid1}? Describe it."),
        Task("r1_relation", "pairs", lambda _: ItemRelation, _relation_text, needs_target=True,
             student="How does {sid2} {title2} relate to {sid1} {title1}?"),
        Task("r2_interests", "samples", lambda _: InterestExpansion, _interests_text, student="{history}\n" + ASK_INTERESTS),
        Task("r3_cot_blind", "samples", cot_trace_model, render_cot, cot=True),
        Task("r3_cot_slate", "samples", slate_trace_model, render_cot, slate=True, cot=True),
        Task("r3_cot_hindsight", "samples", cot_trace_model, render_cot, needs_target=True, cot=True),
    )
}


def get_task(name: str) -> Task:
    """A bundled task, a user's task named ``module:attribute``, or one registered under the ``recot.tasks`` entry points."""
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        module, attribute = name.split(":", 1)
        try:
            found = getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            raise DataError(name, f"cannot import module {module!r} ({exc})",
                            "install it, or run from the folder that holds it (or add that folder to PYTHONPATH)") from None
        except AttributeError:
            raise DataError(name, f"module {module!r} has no attribute {attribute!r}", "name the Task object it defines") from None
    else:
        registered = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
        if name not in registered:
            raise DataError(name, "unknown task", f"choose from {sorted(TASKS | registered)}, or name yours as module:attribute")
        found = registered[name].load()
    if not isinstance(found, Task):
        raise DataError(name, f"is a {type(found).__name__}, not a recot.formats.tasks.Task", "declare it with Task(...)")
    return found


def save_declarations(tasks: list[Task], personas: tuple[str, ...], folder: Path) -> Path:
    """Write the tasks' declarations next to a job's output, for the curation store."""
    path = folder / TASKS_FILE
    path.write_text(json.dumps([t.declaration(personas) for t in tasks], indent=2) + "\n")
    return path


def builtin_declarations() -> list[dict[str, Any]]:
    """The bundled tasks' declarations: a store knows them without a tasks.json (older outputs)."""
    from recot.formats.schemas import ECOMMERCE_PERSONAS

    return [t.declaration(ECOMMERCE_PERSONAS) for t in TASKS.values()]
