"""Human review in Argilla: push curated traces, pull the responses back, turn them into decisions.

Push renders each selected trace for a reviewer in markdown with every SID in a code span, so SIDs show as
written (Argilla renders field text as HTML, plain or not, and a bare ``<a_12>`` is a tag it drops): the history as
numbered items with SID and title, the persona, every interest with the purchases it cites, the
transition, the answer item with its SID and title), asks four questions (quality 1-5, accept or reject,
which module is wrong, a correction, pre-filled with the trace's reasoning so a fix is an edit), and
attaches metadata to filter and sort by: task, domain, persona, the failed rules, EHR and cov_rate, the
LLM judge's score and delta_ll. The judge's score is metadata, not a suggestion: a suggestion pre-selects
the rating, and a reviewer who leaves it would submit the judge's score as their own. The record's external id is the trace id
and each pushed record's content hash is kept in the store, so pushing twice sends nothing and a
changed trace is updated in place; a batch counts as pushed only after the server accepted it.

Pull reads every response (reviewer, status submitted / discarded / draft, values) into
``reviews`` and applies a policy: ``majority`` (more accepts than rejects) or ``any_reject``. The
latest submitted correction, normalised (blank lines and trailing blanks, typed think markers), is put
in the CoT layout and held to the rules a teacher's trace is held to (:func:`recot.curation.rules.check_texts`):
one that passes replaces the trace's reasoning, with its reviewer; one that fails is kept with its reason
(``correction_error``) and leaves the trace pending, never exported as written. Export then drops rejected
traces and uses corrected reasoning.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recot.curation.argilla_api import Argilla, ReviewError
from recot.curation.report import KEPT_SQL
from recot.curation.rules import check_texts
from recot.curation.store import Store
from recot.curation.trace_columns import trace_columns
from recot.formats.cot import THINK_CLOSE, THINK_OPEN, answer_sql, reasoning_sql
from recot.io import frame_of

MODULES = ("persona", "interests", "transition", "answer")
GUIDELINES = """Each record is one chain of thought a teacher model wrote for a user's next purchase. Items are
shown as their semantic ID (`<a_12><b_3><c_77>`) and title; `#3` in the reasoning cites the third purchase.

1. Read the history, then judge the reasoning: is the persona supported by the items, are the interests
   grounded in the purchases they cite, does the transition follow, is the answer a plausible next item?
2. Rate the quality 1-5 (nothing is pre-selected; the judge model's score is in the metadata), accept or
   reject, and tick the modules that are wrong.
3. The correction box holds the trace's reasoning (the text between `<think>` and `</think>`): edit it
   when a small fix would make it right, keeping its lines `Persona: ...`, `Interests:` with numbered
   interests citing `#k`, and `Transition: ...`. A correction is checked by the same rules as the
   teacher's trace; one that fails them is not used."""

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
METADATA = {"task": "terms", "domain": "terms", "persona": "terms", "failed_rules": "terms", "ehr": "float", "cov_rate": "float",
            "judge": "float", "delta_ll": "float", "cluster_size": "integer", "template_version": "integer"}


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
        sc AS (SELECT trace_id, max(value) FILTER (WHERE name = 'judge') AS judge, max(value) FILTER (WHERE name = 'delta_ll') AS delta_ll,
                      max(value) FILTER (WHERE name = 'ehr') AS ehr, max(value) FILTER (WHERE name = 'cov_rate') AS cov_rate
               FROM scores GROUP BY trace_id),
        failed AS (SELECT trace_id, list(DISTINCT rule ORDER BY rule) AS failed_rules FROM verdicts WHERE NOT passed GROUP BY trace_id),
        titles AS (SELECT sid_text, min(title) AS title FROM catalog GROUP BY sid_text)  -- a SID may name several items
        SELECT s.trace_id, coalesce(h.lines, '(no history)') AS history,
               coalesce(nullif(regexp_extract(s.text, 'Persona: ([^\\n]*)', 1), ''), '-') AS persona,
               coalesce(nullif(trim(regexp_extract(s.text, '(?s)Interests:\\n(.*?)\\nTransition:', 1)), ''), '-') AS interests,
               coalesce(nullif(regexp_extract(s.text, 'Transition: ([^\\n]*)', 1), ''), '-') AS transition,
               coalesce(json_extract_string(s.output, '$.answer'), '-') || ' ' || coalesce(ac.title, '(not in the catalog)') AS answer,
               s.task, coalesce(tc.domain, '-') AS domain, json_extract_string(s.output, '$.persona.prototype') AS persona_name,
               sc.judge, sc.delta_ll, sc.ehr, sc.cov_rate, coalesce(f.failed_rules, ['none']) AS failed_rules,
               coalesce(d.size, 1) AS cluster_size, s.template_version, {reasoning_sql("s.text")} AS reasoning
        FROM sel s LEFT JOIN trace_columns h USING (trace_id) LEFT JOIN sc USING (trace_id) LEFT JOIN dup_clusters d USING (trace_id)
             LEFT JOIN failed f USING (trace_id)
             LEFT JOIN catalog tc ON tc.item_id = s.target
             LEFT JOIN titles ac ON ac.sid_text = json_extract_string(s.output, '$.answer')
        ORDER BY s.trace_id"""


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def markdown_text(text: str, sid_pattern: str) -> str:
    """``text`` for an Argilla markdown field, shown as written: each SID in a code span (as HTML, ``<a_12><b_3>``
    would be a tag, and Argilla drops it even from plain-text fields), markdown's special characters escaped elsewhere,
    and each line its own line."""
    lines = []
    for line in text.split("\n"):
        parts, last = [], 0
        for found in re.finditer(sid_pattern, line):
            parts += [_MARKDOWN_SPECIAL.sub(r"\\\1", line[last:found.start()]), f"`{found.group(0)}`"]
            last = found.end()
        lines.append("".join(parts) + _MARKDOWN_SPECIAL.sub(r"\\\1", line[last:]) + "  ")  # two spaces: a line break
    return "\n".join(lines).rstrip()


def _items(rows: pl.DataFrame, correction_id: str, sid_pattern: str) -> list[dict]:
    """Argilla records: the fields, the metadata, and the trace's own reasoning as the correction's starting text."""
    items = []
    for row in rows.iter_rows(named=True):
        metadata = {name: row[name] for name in METADATA if name != "persona"} | {"persona": row["persona_name"] or "-"}
        item = {"external_id": row["trace_id"], "fields": {name: markdown_text(row[name], sid_pattern) for name, _ in FIELDS},
                "metadata": {k: v for k, v in metadata.items() if v is not None}}
        if row["reasoning"].strip():
            item["suggestions"] = [{"question_id": correction_id, "value": row["reasoning"].strip(), "agent": "recot-trace-reasoning"}]
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
        if name not in have:  # markdown, with every SID in a code span (markdown_text): shown as written
            api.call("POST", f"{base}/fields",
                     json={"name": name, "title": title, "required": True, "settings": {"type": "text", "use_markdown": True}})
    have = {q["name"] for q in api.call("GET", f"{base}/questions")["items"]}
    for question in QUESTIONS:
        if question["name"] not in have:
            api.call("POST", f"{base}/questions", json=question)
    _add_metadata_properties(api, dataset_id)
    try:
        api.call("PUT", f"{base}/publish")
    except ReviewError:
        if api.call("GET", base).get("status") != "ready":  # a retried publish whose first reply was lost: already done
            raise


def _add_metadata_properties(api: Argilla, dataset_id: str) -> None:
    """The metadata properties recot fills that the dataset lacks (a dataset made by an older recot gains the new ones)."""
    have = {m["name"] for m in api.call("GET", f"/me/datasets/{dataset_id}/metadata-properties")["items"]}
    for name, kind in METADATA.items():
        if name not in have:
            api.call("POST", f"/datasets/{dataset_id}/metadata-properties",
                     json={"name": name, "title": name, "settings": {"type": kind}, "visible_for_annotators": True})


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
    else:
        _add_metadata_properties(api, found["id"])
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
    items = _items(rows, questions["correction"], store.sid_pattern())
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
    users = api.usernames(found["workspace_id"])
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
    combines them, see :data:`recot.curation.report.REVIEWED_SQL`). Each latest correction is checked (:func:`_check_corrections`)."""
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
        SELECT ?, trace_id, {rule}, accepts, rejects, '{config.policy}', correction, reviewer, corrected_at
        FROM (SELECT p.trace_id, coalesce(v.accepts, 0) AS accepts, coalesce(v.rejects, 0) AS rejects,
                     f.correction, f.reviewer, f.corrected_at
              FROM review_pushes p LEFT JOIN votes v USING (trace_id) LEFT JOIN fixes f USING (trace_id)
              WHERE p.dataset = ?)""", [config.dataset, config.dataset, config.dataset, config.dataset])
    _check_corrections(store, config.dataset)


def normalise_correction(text: str) -> str:
    """A reviewer's reasoning as the CoT layout writes it: the think markers they typed removed, Windows line ends,
    trailing blanks, blank lines and the editor's final newline gone."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace(THINK_OPEN, "").replace(THINK_CLOSE, "")
    return "\n".join(line.rstrip() for line in text.strip().split("\n") if line.strip())


def _check_corrections(store: Store, dataset: str) -> None:
    """Turn each raw correction into a trace text (the think block and the trace's answer) and hold it to the rules:
    one that fails keeps its text and reason and leaves the trace pending; one equal to the trace's reasoning is no
    correction (the box starts with it)."""
    rows = store.con.execute(f"""
        SELECT d.trace_id, d.corrected_text, {reasoning_sql("t.text")},
               coalesce(json_extract_string(t.output, '$.answer'), {answer_sql("t.text")})
        FROM review_decisions d JOIN traces t USING (trace_id) WHERE d.dataset = ? AND d.corrected_text IS NOT NULL""",
                             [dataset]).fetchall()
    texts = {}
    for trace_id, raw, reasoning, answer in rows:
        fixed = normalise_correction(raw)
        texts[trace_id] = None if fixed == normalise_correction(reasoning) else f"{THINK_OPEN}\n{fixed}\n{THINK_CLOSE}\n{answer}"
    corrected = pl.DataFrame({"trace_id": list(texts), "text": list(texts.values())}, schema={"trace_id": pl.Utf8, "text": pl.Utf8})
    store.con.register("corrections", corrected.to_arrow())
    try:
        failures = check_texts(store, "SELECT * FROM corrections WHERE text IS NOT NULL")
        errors = pl.DataFrame([(t, f"{rule}: {reason}" + (f" ({detail})" if detail else "")) for t, rule, reason, detail in failures],
                              schema={"trace_id": pl.Utf8, "error": pl.Utf8}, orient="row")
        store.con.register("refused", errors.group_by("trace_id").agg(pl.col("error").str.join("; ")).to_arrow())
        store.con.execute("""
            UPDATE review_decisions d SET corrected_text = c.text, correction_error = r.error,
                   decision = CASE WHEN r.error IS NOT NULL AND d.decision = 'accept' THEN 'pending' ELSE d.decision END,
                   corrected_by = CASE WHEN c.text IS NULL THEN NULL ELSE d.corrected_by END,
                   corrected_at = CASE WHEN c.text IS NULL THEN NULL ELSE d.corrected_at END
            FROM corrections c LEFT JOIN refused r USING (trace_id)
            WHERE d.dataset = ? AND d.trace_id = c.trace_id""", [dataset])
    finally:
        store.con.unregister("corrections")
        store.con.unregister("refused")


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
