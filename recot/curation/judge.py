"""LLM-judge scores for traces, through the synthesis teachers, cached and resumable.

Each trace to judge becomes one request rendered from the ``judge`` template (the history with
SIDs and titles, and the trace's text). Answers go to a journal next to the store (the same
append-only SQLite cache as synthesis, so a rerun sends only what is missing), and each valid
answer becomes a ``judge`` score (1-5) plus ``judge_faithful`` (0/1) with its provenance:
teacher, model, template hash, request hash. Invalid answers are counted, never scored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from recot.curation.store import Store
from recot.errors import DataError
from recot.formats.schemas import ECOMMERCE_PERSONAS, JudgeScore
from recot.synth.answering import AnswerStats, answer
from recot.synth.journal import Journal
from recot.synth.parse import Parsed, parse_response
from recot.synth.prompts import PromptLibrary
from recot.synth.requests import ItemView, build_request
from recot.teachers import RulesTeacherConfig, Sampling, Teacher, TeacherConfig, TeacherInputs, make_teacher
from recot.teachers.base import Request, Response


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: TeacherConfig = Field(RulesTeacherConfig(), description="[teacher]: who judges, told apart by kind")
    sampling: Sampling = Field(Sampling(temperature=0.0, max_tokens=256), description="[sampling] of the judge")
    tasks: list[str] = Field(["r3_cot_blind", "r3_cot_slate", "r3_cot_hindsight"], description="the tasks whose answered traces are judged")
    templates: Path | None = Field(None, description="a folder whose judge.j2 replaces the bundled one")
    journal: Path | None = Field(None, description="default: next to the store, <store>.judge.sqlite")


def _traces(store: Store, tasks: list[str]) -> Iterator[tuple[str, list[str], str]]:
    marks = ", ".join("?" * len(tasks))
    cursor = store.con.execute(
        f"SELECT trace_id, history, text FROM traces WHERE status = 'ok' AND task IN ({marks}) ORDER BY trace_id", tasks)
    while rows := cursor.fetchmany(1000):
        yield from rows


def run_judge(store: Store, config: JudgeConfig = JudgeConfig(), teacher: Teacher | None = None) -> dict:
    """Judge every answered trace of ``config.tasks`` with the items the store holds; returns counts (scored,
    sent, cached, rejected by reason)."""
    import polars as pl

    catalog = store.catalog()
    if not len(catalog):
        raise DataError(store.path, "the store has no catalog: the judge would see no item titles",
                        "ingest with --dataset (recot curate ingest TRACES --dataset DATASET)")
    teacher = teacher or make_teacher(config.teacher, TeacherInputs(catalog, ECOMMERCE_PERSONAS,
                                                                     pl.LazyFrame(schema={"target": pl.Utf8})))
    identity = (teacher.kind, teacher.model)
    library, items = PromptLibrary(config.templates), ItemView(catalog)
    schema = JudgeScore.model_json_schema()
    journal = Journal(config.journal or store.path.with_suffix(".judge.sqlite"))
    plan: list[tuple[str, str]] = []

    def requests() -> Iterator[Request]:
        for trace_id, history, text in _traces(store, config.tasks):
            prompt = library.render("judge", history=[items[i] for i in history], trace=text)
            request = build_request(prompt, schema, identity, config.sampling, 0,
                                    {"id": trace_id, "history": history, "trace": text})
            plan.append((trace_id, request.key))
            yield request

    def parse(_: Request, response: Response) -> tuple[Parsed, str | None]:
        parsed = parse_response(response, JudgeScore)
        return parsed, getattr(parsed.output, "reason", None)

    try:
        stats = answer(teacher, journal, requests(), parse, AnswerStats())
        scores, rejected = _scores(journal, plan)
    finally:
        journal.close()
        teacher.close()
    store.replace_scores(("judge", "judge_faithful"), scores)
    return {"scored": len(scores) // 2, "sent": stats.sent, "cached": stats.cached, "shared": stats.shared,
            "unanswered": sum(stats.unanswered.values()), "rejected": dict(rejected)}


def _scores(journal: Journal, plan: list[tuple[str, str]]) -> tuple[list[dict], Counter]:
    """Score rows for every planned trace whose judge answer is valid; rejection reasons of the rest."""
    answers = journal.rows([key for _, key in plan], ("status", "reason", "output", "teacher", "model", "template_hash"))
    scores: list[dict] = []
    rejected: Counter = Counter()
    for trace_id, key in plan:
        if key not in answers:
            continue
        status, reason, output, teacher, model, template_hash = answers[key]
        if status != "ok":
            rejected[reason] += 1
            continue
        verdict = json.loads(output)
        provenance = json.dumps({"teacher": teacher, "model": model, "template_hash": template_hash, "request_hash": key})
        scores += [{"trace_id": trace_id, "name": "judge", "value": float(verdict["score"]), "provenance": provenance},
                   {"trace_id": trace_id, "name": "judge_faithful", "value": float(verdict["faithful"]), "provenance": provenance}]
    return scores, rejected
