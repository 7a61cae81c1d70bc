"""The curation funnel: how many traces each rule checked and failed, by reason, with example rows."""

from __future__ import annotations

from typing import Any

from recot.curation.rules import SLATE, SLATE_PICKS
from recot.curation.store import Store

# One row per reviewed trace, combining every review dataset's decision on it: a reject in any dataset holds;
# otherwise the latest submitted correction among the datasets that accepted the trace replaces its text (a
# pending trace, a split vote, keeps its original reasoning). Who corrected it, and where, stay in review_decisions.
REVIEWED_SQL = """SELECT trace_id, bool_or(decision = 'reject') AS rejected,
                         arg_max(corrected_text, corrected_at) FILTER (WHERE decision = 'accept' AND corrected_text IS NOT NULL)
                             AS corrected_text
                  FROM review_decisions GROUP BY trace_id"""
# kept: answered, no failed rule, not rejected in any review; an accepted correction replaces the text
KEPT_SQL = f"""SELECT t.* REPLACE (coalesce(d.corrected_text, t.text) AS text)
               FROM traces t LEFT JOIN ({REVIEWED_SQL}) d USING (trace_id) WHERE t.status = 'ok'
               AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.trace_id = t.trace_id AND NOT v.passed)
               AND NOT coalesce(d.rejected, FALSE)"""


def funnel(store: Store, examples: int = 2) -> dict[str, Any]:
    """Counts per task and rule, failures per reason with ``examples`` rows each, and what is kept."""
    con = store.con
    tasks = dict(con.execute("SELECT task, count(*) FROM traces GROUP BY task ORDER BY task").fetchall())
    kept = dict(con.execute(f"SELECT task, count(*) FROM ({KEPT_SQL}) GROUP BY task ORDER BY task").fetchall())
    rules = {rule: {"checked": checked, "failed": failed} for rule, checked, failed in con.execute(
        "SELECT rule, count(*), count(*) FILTER (WHERE NOT passed) FROM verdicts GROUP BY rule ORDER BY rule").fetchall()}
    reasons = con.execute("""
        SELECT v.rule, v.reason, count(*) OVER (PARTITION BY v.rule, v.reason) AS n, v.trace_id, t.task, v.detail,
               left(coalesce(t.text, t.raw, ''), 240) AS text
        FROM verdicts v JOIN traces t USING (trace_id) WHERE NOT v.passed
        QUALIFY row_number() OVER (PARTITION BY v.rule, v.reason ORDER BY v.trace_id) <= ?
        ORDER BY v.rule, n DESC, v.reason, v.trace_id""", [examples]).fetchall()
    for rule, reason, n, trace_id, task, detail, text in reasons:
        entry = rules[rule].setdefault("reasons", {}).setdefault(reason, {"count": n, "examples": []})
        entry["examples"].append({"trace_id": trace_id, "task": task, "detail": detail, "text": text})
    return {"traces": sum(tasks.values()), "by_task": tasks, "stages": stages(store), "rules": rules,
            "kept": sum(kept.values()), "kept_by_task": kept, "slate_accuracy": slate_accuracy(store),
            "ingest_rejects": store.scalar("SELECT count(*) FROM ingest_rejects"), "set_aside": set_aside(store)}


STAGES = ("traces", "parsed", "rules", "dedup", "review")
# where a trace stopped, in the order of the steps: the first that applies
OUTCOMES = ("synthesis", "rules", "dedup", "review", "kept")
# One row per trace: where it stopped and why (the synthesis reason, the failed rules' reasons, or 'duplicate'). The
# funnel's stages and the teacher comparison both count it, so the two cannot tell different stories.
OUTCOME_SQL = f"""
    WITH failed AS (SELECT trace_id, list(DISTINCT reason ORDER BY reason) FILTER (WHERE rule <> 'dedup') AS reasons,
                           bool_or(rule = 'dedup') AS duplicate
                    FROM verdicts WHERE NOT passed GROUP BY trace_id),
         kept AS (SELECT trace_id FROM ({KEPT_SQL}))
    SELECT t.trace_id, t.task,
           CASE WHEN t.status <> 'ok' THEN 'synthesis' WHEN len(coalesce(f.reasons, [])) > 0 THEN 'rules'
                WHEN f.duplicate THEN 'dedup' WHEN k.trace_id IS NULL THEN 'review' ELSE 'kept' END AS outcome,
           CASE WHEN t.status <> 'ok' THEN [coalesce(t.reason, 'unknown')] WHEN len(coalesce(f.reasons, [])) > 0 THEN f.reasons
                WHEN f.duplicate THEN ['duplicate'] ELSE [] END AS reasons
    FROM traces t LEFT JOIN failed f USING (trace_id) LEFT JOIN kept k USING (trace_id)"""


def stages(store: Store) -> dict[str, dict[str, int]]:
    """Per task, the traces left after each step: ingested, parsed (answered and valid), passing every rule, not a
    dropped duplicate, not rejected in review (the last is ``kept``): each count is the traces that got past a step."""
    past = ", ".join(f"count(*) FILTER (WHERE outcome IN {OUTCOMES[i + 1:]})" for i in range(len(OUTCOMES) - 1))
    rows = store.con.execute(f"SELECT task, count(*), {past} FROM ({OUTCOME_SQL}) GROUP BY task ORDER BY task").fetchall()
    return {task: dict(zip(STAGES, counts)) for task, *counts in rows}


def set_aside(store: Store) -> dict[str, Any]:
    """Rows the synthesis set aside before writing traces (bad dataset records in lenient mode, samples refused at the
    cut-off), per stage: counts by reason and the files that list them."""
    out: dict[str, Any] = {}
    for stage, listed_in, reason, n in store.con.execute(
            "SELECT stage, listed_in, reason, sum(n)::BIGINT FROM set_aside GROUP BY ALL ORDER BY ALL").fetchall():
        entry = out.setdefault(stage, {"rows": 0, "reasons": {}, "listed_in": []})
        entry["rows"] += n
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + n
        if listed_in not in entry["listed_in"]:
            entry["listed_in"].append(listed_in)
    return out


def slate_accuracy(store: Store) -> dict[str, float | int]:
    """How often the teacher's slate pick (or top k) holds the real next item, against chance (k / N) and
    against picking the most popular candidates (``popular_rank <= k``), over the slate answers the
    ``blind_hit`` rule checked. Empty when there are none."""
    answered, hits, chance, popular = store.con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE v.passed), avg({SLATE_PICKS} / len(t.items)), avg((t.popular_rank <= {SLATE_PICKS})::INT)
        FROM verdicts v JOIN traces t USING (trace_id) WHERE v.rule = 'blind_hit' AND t.task IN {SLATE}""").fetchall()[0]
    if not answered:
        return {}
    return {"answered": answered, "hits": hits, "accuracy": round(hits / answered, 4),
            "chance": round(chance, 4), "most_popular": round(popular, 4) if popular is not None else None}
