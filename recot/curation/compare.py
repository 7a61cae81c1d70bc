"""Teachers side by side: two or more synthesis outputs over the same planned requests, curated alike and compared.

The question before a big run is which teacher (or sampling setting) gives the most kept traces per token and per
dollar on the user's own data. Each output is curated into its own store under the same rules and dedup settings
(:func:`curate_output`), then :func:`compare` matches the traces across outputs by request subject (task, subject,
sample: the request hashes differ, since the teacher is part of them) and reports, per output and task, what was kept,
why the rest was not, the tokens, cost and wall time per kept trace and the judge's mean score where the stores hold
one, and, over the requests every output answered, where they disagree: kept by some and not others, or kept by all
with different answers (the output's ``answer`` field: the R3 tasks' SID; other tasks are compared by outcome).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recot.cost import Price
from recot.curation.dedup import DedupConfig, run_dedup
from recot.curation.report import OUTCOME_SQL, OUTCOMES
from recot.curation.rules import RulesConfig, run_rules
from recot.curation.store import Store
from recot.errors import DataError
from recot.io import frame_of

KEY = ("task", "subject_id", "sample")
# "kept by all": with the same answer, or of a task whose output has no ``answer`` field (compared by outcome alone)
AGREEMENT = ("kept by all", "kept by all, answers differ", "kept by some", "kept by none")

# One row per trace: where it stopped and why (the funnel's own definition), its answer, tokens and judge score
_TRACES_SQL = f"""
    WITH judged AS (SELECT trace_id, avg(value) AS judge FROM scores WHERE name = 'judge' GROUP BY trace_id)
    SELECT t.task, t.subject_id, t.sample, o.outcome, o.reasons,
           json_extract_string(t.output, '$.answer') AS answer, t.prompt_tokens, t.completion_tokens,
           coalesce(t.reasoning_tokens, 0) AS reasoning_tokens, j.judge, left(coalesce(t.text, t.raw, ''), 400) AS text
    FROM ({OUTCOME_SQL}) o JOIN traces t USING (trace_id) LEFT JOIN judged j USING (trace_id)"""


@dataclass(frozen=True)
class Arm:
    """One synthesis output in a comparison: its name on the page, its curated store, and its folder (``summary.json``
    there gives planned requests, wall time and price)."""

    name: str
    store: Path
    synth: Path


def curate_output(synth: Path, store: Path, rules: RulesConfig = RulesConfig(), dedup: DedupConfig = DedupConfig()) -> Path:
    """Curate the output in ``synth`` into ``store`` (ingest, rules, dedup) and return the store. A rerun adds no trace
    twice and recomputes the verdicts, so every output of a comparison is held to the same settings."""
    traces = synth / "traces.parquet"
    if not traces.is_file():
        raise DataError(synth, "no traces.parquet in this folder", "pass the output folder of a `recot synth run`")
    with Store(store) as db:
        db.ingest(traces)
        run_rules(db, rules)
        run_dedup(db, dedup)
    return store


def compare(arms: list[Arm], examples: int = 5) -> dict[str, Any]:
    """The comparison as plain JSON-ready data, over the requests every arm answered (``common``; how many each arm
    answered beyond them is ``only_in``): per arm its totals and per task figures, the agreement, and up to ``examples``
    disagreements per task with each arm's outcome, answer and text."""
    if len(arms) < 2:
        raise DataError("compare", f"{len(arms)} output given", "compare two or more synthesis outputs")
    if len({arm.name for arm in arms}) < len(arms):
        raise DataError("compare", f"two outputs share a name: {[arm.name for arm in arms]}", "give each output its own name")
    frames = []
    for arm in arms:
        with Store.existing(arm.store) as db:
            frames.append(frame_of(db.con.sql(_TRACES_SQL).to_arrow_table()).with_columns(arm=pl.lit(arm.name)))
    rows = pl.concat(frames)
    answered = rows.group_by(KEY).agg(arms=pl.col("arm").n_unique())
    common = answered.filter(pl.col("arms") == len(arms)).drop("arms")
    if common.is_empty():
        raise DataError("compare", f"the outputs {[a.name for a in arms]} answered no request in common",
                        "compare outputs planned alike: the same dataset, split, tasks, limit and seeds, another teacher")
    only = rows.join(common, on=list(KEY), how="anti").group_by("arm").len()
    shared = rows.join(common, on=list(KEY))
    return {"arms": [_arm(arm, shared.filter(pl.col("arm") == arm.name)) for arm in arms],
            "common": common.height, "only_in": dict(only.iter_rows()), **_agreement(shared, [a.name for a in arms], examples)}


def _arm(arm: Arm, rows: pl.DataFrame) -> dict[str, Any]:
    summary = _summary(arm.synth)
    price = Price(**summary["price"]) if summary.get("price") else None
    by_task = {}
    for (task,), part in rows.sort("task").group_by("task", maintain_order=True):
        by_task[task] = _figures(part, price) | {"reasons": dict(Counter(r for rs in part["reasons"] for r in rs).most_common())}
    totals = _figures(rows, price)
    seconds = summary.get("seconds")
    return {"name": arm.name, "synth": str(arm.synth), "store": str(arm.store), "teacher": summary.get("teacher"),
            "model": summary.get("model"), "planned": summary.get("planned"), "sent": summary.get("sent"), **totals,
            "seconds": seconds, "seconds_per_kept": _per(seconds, totals["kept"]), "by_task": by_task}


def _figures(rows: pl.DataFrame, price: Price | None) -> dict[str, Any]:
    """Counts by outcome, the kept share, tokens, cost at ``price`` and the judge's mean over ``rows``."""
    outcomes = Counter(rows["outcome"].to_list())
    kept = outcomes["kept"]
    prompt, completion = int(rows["prompt_tokens"].sum()), int(rows["completion_tokens"].sum())
    cost = price.cost(prompt, completion) if price else None
    judge = rows["judge"].drop_nulls()
    return {"traces": rows.height, **{f"stopped_at_{o}": outcomes[o] for o in OUTCOMES[:-1]}, "kept": kept,
            "kept_share": round(kept / rows.height, 4) if rows.height else None, "prompt_tokens": prompt,
            "completion_tokens": completion, "reasoning_tokens": int(rows["reasoning_tokens"].sum()),
            "completion_tokens_per_kept": _per(completion, kept), "cost": cost, "cost_per_kept": _per(cost, kept),
            "judge_mean": round(float(judge.mean()), 3) if judge.len() else None}  # type: ignore[arg-type]  # a float column's mean


def _agreement(rows: pl.DataFrame, names: list[str], examples: int) -> dict[str, Any]:
    """Per task, how the arms' outcomes relate on each request they all answered; the disagreements, a few per task."""
    keyed = (rows.group_by(KEY).agg(kept=(pl.col("outcome") == "kept").sum(),
                                    answers=pl.col("answer").filter(pl.col("outcome") == "kept").drop_nulls().n_unique())
             .with_columns(agreement=pl.when(pl.col("kept") == 0).then(pl.lit(AGREEMENT[3]))
                           .when(pl.col("kept") < len(names)).then(pl.lit(AGREEMENT[2]))
                           .when(pl.col("answers") > 1).then(pl.lit(AGREEMENT[1])).otherwise(pl.lit(AGREEMENT[0]))))
    agreement = {task: {a: 0 for a in AGREEMENT} for task in sorted(set(keyed["task"]))}
    for task, kind, n in keyed.group_by("task", "agreement").len().iter_rows():
        agreement[task][kind] = n
    split = (keyed.filter(pl.col("agreement").is_in(AGREEMENT[1:3])).sort(KEY)
             .filter(pl.int_range(pl.len()).over("task") < examples).select(*KEY, "agreement"))
    detail = rows.join(split, on=list(KEY)).sort([*KEY, "arm"])
    cases = []
    for key, part in detail.group_by(KEY, maintain_order=True):
        cases.append({**dict(zip(KEY, key)), "agreement": part["agreement"][0], "arms": {
            row["arm"]: {"outcome": row["outcome"], "reasons": row["reasons"], "answer": row["answer"], "text": row["text"]}
            for row in part.iter_rows(named=True)}})
    return {"agreement": agreement, "disagreements": cases}


def _per(total: float | None, kept: int) -> float | None:
    return round(total / kept, 6) if total is not None and kept else None


def _summary(synth: Path) -> dict[str, Any]:
    """The job's summary.json; an output without one (copied traces alone) is compared without plan, time or price."""
    path = synth / "summary.json"
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(path, f"cannot be read as JSON ({exc})", "keep the summary.json the synthesis wrote, or remove it") from None
    return found if isinstance(found, dict) else {}
