"""Human review in Argilla: push curated traces, pull the responses back, turn them into decisions.

Push renders each selected trace for a reviewer (the history as numbered items with titles, the
persona, interests and transition sections, the answer item with its title), asks four questions
(quality 1-5, accept or reject, which module is wrong, a correction), attaches metadata for the
UI's filters and the LLM judge's score as a suggestion. The record's external id is the trace id
and each pushed record's content hash is kept in the store, so pushing twice sends nothing and a
changed trace is updated in place; a batch counts as pushed only after the server accepted it.

Pull reads every response (reviewer, status submitted / discarded / draft, values) into
``reviews`` and applies a policy: ``majority`` (more accepts than rejects) or ``any_reject``; the
latest submitted correction replaces the trace's reasoning, with its reviewer. Export then drops
rejected traces and uses corrected reasoning.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recot.curation.argilla_api import Argilla, ReviewError
from recot.curation.report import KEPT_SQL
from recot.curation.store import Store
from recot.curation.trace_columns import trace_columns
from recot.formats.cot import THINK_CLOSE, THINK_OPEN, answer_sql
from recot.io import frame_of

MODULES = ("persona", "interests", "transition", "answer")
GUIDELINES = """Each record is one chain of thought a teacher model wrote for a user's next purchase.
Read the history, then judge the reasoning: is the persona supported by the items, are the interests
grounded in the cited purchases, does the transition follow, is the answer a plausible next item?
Rate the quality 1-5, accept or reject, tick the modules that are wrong, and write a corrected
reasoning (the text between <think> and </think>) when a small fix would make it right."""

FIELDS = [("history", "Purchase history"), ("persona", "Persona"), ("interests", "Interests"),
          ("transition", "Transition"), ("answer", "Answer")]
QUESTIONS: list[dict[str, Any]] = [
    {"name": "quality", "title": "Quality of the reasoning", "required": True,
     "settings": {"type": "rating", "options": [{"value": v} for v in range(1, 6)]}},
    {"name": "verdict", "title": "Keep this trace for training?", "required": True,
     "settings": {"type": "label_selection", "options": [{"value": v, "text": v} for v in ("accept", "reject")]}},
    {"name": "wrong_modules", "title": "Which module is wrong?", "required": False,
     "settings": {"type": "multi_label_selection", "options": [{"value": m, "text": m} for m in MODULES]}},
    {"name": "correction", "title": "Corrected reasoning (optional)", "required": False,
     "settings": {"type": "text", "use_markdown": False}},
]
METADATA = {"task": "terms", "domain": "terms", "persona": "terms", "judge": "float", "delta_ll": "float",
            "cluster_size": "integer", "template_version": "integer"}


class ReviewConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the Argilla dataset name")
    workspace: str = Field("argilla", description="the Argilla workspace")
    url: str | None = Field(None, description="default: $RECOT_ARGILLA_URL, then http://127.0.0.1:6900")
    where: str = Field("task IN (SELECT task FROM tasks WHERE cot)", description="SQL filter over the kept traces (columns of traces)")
    reviews_per_record: int = Field(1, ge=1, description="submitted responses a record needs (task distribution)")
    batch_size: int = Field(500, ge=1, le=500, description="records per bulk request (Argilla's limit is 500)")
    policy: Literal["majority", "any_reject"] = Field(
        "majority", description="majority: more accepts than rejects; any_reject: one reject rejects")


def _settings_sql(config: ReviewConfig) -> str:
    """One row per selected trace: the rendered fields and the metadata (reads ``trace_columns``)."""
    return f"""
        WITH sel AS (SELECT * FROM ({KEPT_SQL}) WHERE {config.where}),
        sc AS (SELECT trace_id, max(value) FILTER (WHERE name = 'judge') AS judge,
                      max(value) FILTER (WHERE name = 'delta_ll') AS delta_ll FROM scores GROUP BY trace_id),
        titles AS (SELECT sid_text, min(title) AS title FROM catalog GROUP BY sid_text)  -- a SID may name several items
        SELECT s.trace_id, coalesce(h.lines, '(no history)') AS history,
               coalesce(nullif(regexp_extract(s.text, 'Persona: ([^\\n]*)', 1), ''), '-') AS persona,
               coalesce(nullif(trim(regexp_extract(s.text, 'Interests:\\n(.*?)\\nTransition:', 1)), ''), '-') AS interests,
               coalesce(nullif(regexp_extract(s.text, 'Transition: ([^\\n]*)', 1), ''), '-') AS transition,
               coalesce(json_extract_string(s.output, '$.answer'), '-') || ' ' || coalesce(ac.title, '(not in the catalog)') AS answer,
               s.task, coalesce(tc.domain, '-') AS domain, json_extract_string(s.output, '$.persona.prototype') AS persona_name,
               sc.judge, sc.delta_ll, coalesce(d.size, 1) AS cluster_size, s.template_version
        FROM sel s LEFT JOIN trace_columns h USING (trace_id) LEFT JOIN sc USING (trace_id) LEFT JOIN dup_clusters d USING (trace_id)
             LEFT JOIN catalog tc ON tc.item_id = s.target
             LEFT JOIN titles ac ON ac.sid_text = json_extract_string(s.output, '$.answer')
        ORDER BY s.trace_id"""


def _items(rows: pl.DataFrame, quality_id: str) -> list[dict]:
    items = []
    for row in rows.iter_rows(named=True):
        metadata = {"task": row["task"], "domain": row["domain"], "persona": row["persona_name"] or "-",
                    "judge": row["judge"], "delta_ll": row["delta_ll"], "cluster_size": row["cluster_size"],
                    "template_version": row["template_version"]}
        item = {"external_id": row["trace_id"], "fields": {name: row[name] for name, _ in FIELDS},
                "metadata": {k: v for k, v in metadata.items() if v is not None}}
        if row["judge"] is not None:
            item["suggestions"] = [{"question_id": quality_id, "value": int(min(5, max(1, round(row["judge"])))),
                                    "agent": "recot-judge"}]
        items.append(item)
    return items


def _content_hash(item: dict) -> str:
    body = {k: v for k, v in item.items() if k != "suggestions"} | {"suggested": [s["value"] for s in item.get("suggestions", [])]}
    return hashlib.md5(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _finish_draft(api: Argilla, dataset_id: str) -> None:
    """Add whichever fields, questions and metadata properties a draft dataset lacks, then publish it."""
    base = f"/datasets/{dataset_id}"
    have = {f["name"] for f in api.call("GET", f"{base}/fields")["items"]}
    for name, title in FIELDS:
        if name not in have:
            api.call("POST", f"{base}/fields",
                     json={"name": name, "title": title, "required": True, "settings": {"type": "text", "use_markdown": True}})
    have = {q["name"] for q in api.call("GET", f"{base}/questions")["items"]}
    for question in QUESTIONS:
        if question["name"] not in have:
            api.call("POST", f"{base}/questions", json=question)
    have = {m["name"] for m in api.call("GET", f"/me{base}/metadata-properties")["items"]}
    for name, kind in METADATA.items():
        if name not in have:
            api.call("POST", f"{base}/metadata-properties",
                     json={"name": name, "title": name, "settings": {"type": kind}, "visible_for_annotators": True})
    api.call("PUT", f"{base}/publish")


def _ensure_dataset(api: Argilla, config: ReviewConfig) -> tuple[str, dict[str, str]]:
    """The dataset's id and its question ids; created and published on first push, checked afterwards."""
    workspace = api.workspace_id(config.workspace)
    found = api.find_dataset(config.dataset, workspace)
    if found is None:
        found = api.call("POST", "/datasets", json={
            "name": config.dataset, "workspace_id": workspace, "guidelines": GUIDELINES, "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": config.reviews_per_record}})
    if found.get("status") == "draft":  # new, or left half set up by a push that was cut off: finish it
        _finish_draft(api, found["id"])
    fields = {(f["name"], f["settings"]["type"]) for f in api.call("GET", f"/datasets/{found['id']}/fields")["items"]}
    questions = api.call("GET", f"/datasets/{found['id']}/questions")["items"]
    want_fields = {(name, "text") for name, _ in FIELDS}
    want_questions = {(q["name"], q["settings"]["type"]) for q in QUESTIONS}
    have_questions = {(q["name"], q["settings"]["type"]) for q in questions}
    if fields != want_fields or have_questions != want_questions:
        raise ReviewError(
            f"Argilla dataset {config.dataset!r} in workspace {config.workspace!r} has other settings than recot pushes "
            f"(fields {sorted(fields ^ want_fields)}, questions {sorted(have_questions ^ want_questions)} differ)",
            "push to a new dataset name, or delete that dataset in Argilla")
    return found["id"], {q["name"]: q["id"] for q in questions}


def push(store: Store, config: ReviewConfig, api: Argilla | None = None) -> dict[str, int]:
    """Create or update the review dataset for the selection; returns selected, sent and unchanged counts."""
    api = api or Argilla(config.url)
    dataset_id, questions = _ensure_dataset(api, config)
    trace_columns(store, ("lines",))
    rows = frame_of(store.con.sql(_settings_sql(config)).to_arrow_table())
    items = _items(rows, questions["quality"])
    hashes = [_content_hash(item) for item in items]
    pushed = dict(store.con.execute("SELECT trace_id, content_hash FROM review_pushes WHERE dataset = ?",
                                    [config.dataset]).fetchall())
    todo = [(item, h) for item, h in zip(items, hashes) if pushed.get(item["external_id"]) != h]
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start:start + config.batch_size]
        api.call("PUT", f"/datasets/{dataset_id}/records/bulk", json={"items": [item for item, _ in batch]})
        done = pl.DataFrame({"dataset": config.dataset,  # noqa: F841 - DuckDB reads it by name
                             "trace_id": [item["external_id"] for item, _ in batch],
                             "content_hash": [h for _, h in batch]}).to_arrow()
        with store.transaction():  # recorded only once the server has accepted the batch
            store.con.execute("INSERT OR REPLACE INTO review_pushes SELECT dataset, trace_id, content_hash, now() FROM done")
    return {"selected": len(items), "sent": len(todo), "unchanged": len(items) - len(todo)}


def _value(values: dict | None, name: str) -> Any:
    return ((values or {}).get(name) or {}).get("value")


def pull(store: Store, config: ReviewConfig, api: Argilla | None = None) -> dict[str, Any]:
    """Read every response into ``reviews``, recompute ``review_decisions``; returns counts and agreement."""
    api = api or Argilla(config.url)
    found = api.find_dataset(config.dataset, api.workspace_id(config.workspace))
    if found is None:
        raise ReviewError(f"no Argilla dataset {config.dataset!r} in workspace {config.workspace!r}", "push it first: recot review push")
    users = {u["id"]: u["username"] for u in api.call("GET", "/users")["items"]}
    rows = [{"dataset": config.dataset, "trace_id": record["external_id"], "reviewer": users.get(r["user_id"], r["user_id"]),
             "status": r["status"], "quality": _value(r.get("values"), "quality"), "verdict": _value(r.get("values"), "verdict"),
             "wrong_modules": _value(r.get("values"), "wrong_modules"), "correction": _value(r.get("values"), "correction"),
             "updated_at": r["updated_at"]}
            for record in api.records(found["id"]) for r in record.get("responses") or []]
    frame = pl.DataFrame(rows, schema={  # noqa: F841 - DuckDB reads it by name
                                       "dataset": pl.Utf8, "trace_id": pl.Utf8, "reviewer": pl.Utf8, "status": pl.Utf8,
                                       "quality": pl.Int64, "verdict": pl.Utf8, "wrong_modules": pl.List(pl.Utf8),
                                       "correction": pl.Utf8, "updated_at": pl.Utf8}).to_arrow()
    with store.transaction():
        store.con.execute("DELETE FROM reviews WHERE dataset = ?", [config.dataset])
        store.con.execute("INSERT INTO reviews SELECT dataset, trace_id, reviewer, status, quality, verdict, wrong_modules, "
                          "correction, updated_at::TIMESTAMP FROM frame")
        _decide(store, config)
    statuses = dict(store.con.execute("SELECT status, count(*) FROM reviews WHERE dataset = ? GROUP BY ALL", [config.dataset]).fetchall())
    decisions = dict(store.con.execute("SELECT decision, count(*) FROM review_decisions WHERE dataset = ? GROUP BY ALL",
                                       [config.dataset]).fetchall())
    return {"responses": statuses, "decisions": decisions, "agreement": agreement(store, config.dataset)}


def _decide(store: Store, config: ReviewConfig) -> None:
    """This dataset's decisions, one per pushed trace; other review datasets' decisions are left alone (export
    combines them, see :data:`recot.curation.report.REVIEWED_SQL`)."""
    rule = ("CASE WHEN accepts > rejects THEN 'accept' WHEN rejects > accepts THEN 'reject' ELSE 'pending' END"
            if config.policy == "majority" else
            "CASE WHEN rejects > 0 THEN 'reject' WHEN accepts > 0 THEN 'accept' ELSE 'pending' END")
    store.con.execute("DELETE FROM review_decisions WHERE dataset = ?", [config.dataset])
    store.con.execute(f"""
        INSERT INTO review_decisions (dataset, trace_id, decision, accepts, rejects, policy, corrected_text, corrected_by,
                                      corrected_at)
        WITH votes AS (SELECT trace_id, count(*) FILTER (WHERE verdict = 'accept') AS accepts,
                              count(*) FILTER (WHERE verdict = 'reject') AS rejects
                       FROM reviews WHERE dataset = ? AND status = 'submitted' GROUP BY trace_id),
        fixes AS (SELECT trace_id, arg_max(correction, updated_at) AS correction, arg_max(reviewer, updated_at) AS reviewer,
                         max(updated_at) AS corrected_at
                  FROM reviews WHERE dataset = ? AND status = 'submitted' AND nullif(trim(correction), '') IS NOT NULL
                  GROUP BY trace_id)
        SELECT ?, trace_id, {rule}, accepts, rejects, '{config.policy}',
               CASE WHEN correction IS NOT NULL THEN
                   '{THINK_OPEN}' || chr(10) || trim(replace(replace(correction, '{THINK_OPEN}', ''), '{THINK_CLOSE}', ''))
                   || chr(10) || '{THINK_CLOSE}'
                   || chr(10) || coalesce(json_extract_string(output, '$.answer'), {answer_sql('text')}) END,
               reviewer, corrected_at
        FROM (SELECT p.trace_id, t.output, t.text, coalesce(v.accepts, 0) AS accepts, coalesce(v.rejects, 0) AS rejects,
                     f.correction, f.reviewer, f.corrected_at
              FROM review_pushes p JOIN traces t USING (trace_id) LEFT JOIN votes v USING (trace_id) LEFT JOIN fixes f USING (trace_id)
              WHERE p.dataset = ?)""", [config.dataset, config.dataset, config.dataset, config.dataset])


def agreement(store: Store, dataset: str) -> dict[str, float | int | None]:
    """Pairwise agreement between reviewers who both submitted a record: verdict (with Cohen's kappa),
    exact and within-one quality, and the Jaccard overlap of the modules marked wrong."""
    pairs = store.con.execute("""
        WITH s AS (SELECT * FROM reviews WHERE dataset = ? AND status = 'submitted')
        SELECT count(*), avg((a.verdict = b.verdict)::INT), avg((a.quality = b.quality)::INT), avg((abs(a.quality - b.quality) <= 1)::INT),
               avg(CASE WHEN len(list_distinct(list_concat(coalesce(a.wrong_modules, []), coalesce(b.wrong_modules, [])))) = 0 THEN 1.0
                        ELSE len(list_intersect(coalesce(a.wrong_modules, []), coalesce(b.wrong_modules, [])))
                             / len(list_distinct(list_concat(coalesce(a.wrong_modules, []), coalesce(b.wrong_modules, []))))::DOUBLE END),
               avg((a.verdict = 'accept')::INT + (b.verdict = 'accept')::INT) / 2
        FROM s a JOIN s b ON a.trace_id = b.trace_id AND a.reviewer < b.reviewer""", [dataset]).fetchall()[0]
    n, verdict, quality, within_one, modules, accept_share = pairs
    expected = None if accept_share is None else accept_share ** 2 + (1 - accept_share) ** 2
    kappa = None if verdict is None or expected is None or expected == 1 else (verdict - expected) / (1 - expected)
    return {"pairs": n, "verdict": verdict, "verdict_kappa": kappa, "quality_exact": quality, "quality_within_one": within_one,
            "wrong_modules_jaccard": modules}
