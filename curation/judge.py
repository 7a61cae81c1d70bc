"""LLM-judge scores for traces, through the synthesis teachers, cached and resumable.

Each trace to judge becomes one request rendered from the ``judge`` template (the history with
SIDs and titles, and the trace's text). Answers go to a journal next to the store (the same
append-only SQLite cache as synthesis, so a rerun sends only what is missing), and each valid
answer becomes a ``judge`` score (1-5) plus ``judge_faithful`` (0/1) with its provenance:
teacher, model, template hash, request hash. Invalid answers are counted, never scored.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curation.store import Store
from synth.catalog import Catalog
from synth.journal import Journal, answer_row
from synth.parse import parse_response
from synth.prompts import PromptLibrary
from synth.requests import ItemView
from synth.schemas import ECOMMERCE_PERSONAS, JudgeScore
from synth.teachers import Sampling, Teacher, TeacherConfig, make_teacher
from synth.teachers.base import Request, request_key


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: TeacherConfig = TeacherConfig()
    sampling: Sampling = Sampling(temperature=0.0, max_tokens=256)
    tasks: list[str] = ["r3_cot_blind", "r3_cot_hindsight"]
    templates: Path | None = None
    journal: Path | None = Field(None, description="default: next to the store, <store>.judge.sqlite")


def _traces(store: Store, tasks: list[str]) -> Iterator[tuple[str, list[str], str]]:
    marks = ", ".join("?" * len(tasks))
    cursor = store.con.execute(
        f"SELECT trace_id, history, text FROM traces WHERE status = 'ok' AND task IN ({marks}) ORDER BY trace_id", tasks)
    while rows := cursor.fetchmany(1000):
        yield from rows


def run_judge(store: Store, catalog: Catalog, config: JudgeConfig = JudgeConfig(), teacher: Teacher | None = None) -> dict:
    """Judge every answered trace of ``config.tasks``; returns counts (scored, sent, cached, rejected by reason)."""
    import polars as pl

    teacher = teacher or make_teacher(config.teacher, catalog, ECOMMERCE_PERSONAS,
                                      pl.LazyFrame(schema={"target": pl.Utf8}))
    identity = (teacher.kind, teacher.model)
    library, items = PromptLibrary(config.templates), ItemView(catalog)
    schema = JudgeScore.model_json_schema()
    journal = Journal(config.journal or store.path.with_suffix(".judge.sqlite"))
    plan: list[tuple[str, str]] = []
    counts: Counter = Counter()

    def pending() -> Iterator[Request]:
        reader = journal.reader()
        for chunk in iter(lambda: list(itertools.islice(traces, 512)), []):
            requests = []
            for trace_id, history, text in chunk:
                prompt = library.render("judge", history=[items[i] for i in history], trace=text)
                key = request_key(*identity, prompt.messages, schema, prompt.template_hash, config.sampling, 0)
                plan.append((trace_id, key))
                requests.append(Request(key, "judge", prompt.messages, schema, 0, config.sampling.seed,
                                        config.sampling.temperature, config.sampling.top_p, config.sampling.max_tokens,
                                        {"id": trace_id, "history": history, "trace": text},
                                        {"name": prompt.template, "version": prompt.template_version, "hash": prompt.template_hash}))
            done = journal.answered(reader, [r.key for r in requests])
            for request in requests:
                if request.key in done or request.key in sent:  # answered, or the same prompt is in flight
                    counts["cached"] += 1
                    continue
                sent[request.key] = request
                yield request
        reader.close()

    traces = _traces(store, config.tasks)
    sent: dict[str, Request] = {}
    buffer = []
    try:
        for response in teacher.generate(pending()):
            request = sent.pop(response.key)
            counts["sent"] += 1
            if response.retryable:
                counts["unanswered"] += 1
                continue
            parsed = parse_response(response, JudgeScore)
            buffer.append(answer_row(request, response, parsed, parsed.output and parsed.output.reason, identity))
            if len(buffer) >= 256:
                journal.append(buffer)
                buffer = []
        journal.append(buffer)
        scores, rejected = _scores(journal, plan)
    finally:
        journal.close()
        teacher.close()
    judged = pa.Table.from_pylist(scores, schema=pa.schema(
        [("trace_id", pa.string()), ("name", pa.string()), ("value", pa.float64()), ("provenance", pa.string())]))
    with store._transaction():
        store.con.execute("DELETE FROM scores WHERE name IN ('judge', 'judge_faithful')")
        store.con.execute("INSERT INTO scores SELECT * FROM judged")
    return {"scored": len(scores) // 2, "sent": counts["sent"], "cached": counts["cached"],
            "unanswered": counts["unanswered"], "rejected": dict(rejected)}


def _scores(journal: Journal, plan: list[tuple[str, str]]) -> tuple[list[dict], Counter]:
    """Score rows for every planned trace whose judge answer is valid; rejection reasons of the rest."""
    scores, rejected = [], Counter()
    for start in range(0, len(plan), 500):
        part = plan[start:start + 500]
        marks = ", ".join("?" * len(part))
        answers = {row[0]: row[1:] for row in journal.con.execute(
            f"SELECT key, status, reason, output, teacher, model, template_hash FROM answers WHERE key IN ({marks})",
            [key for _, key in part])}
        for trace_id, key in part:
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
