"""The funnel as one self-contained HTML page: where a job's traces went, what the rules said and why, what it cost.

The page is written from the same :func:`recot.curation.report.funnel` dictionary that ``recot curate report --json``
prints, so every count on it is the JSON's. Pictures are inline SVG drawn here from plain numbers: no plotting library
(the curation side installs without one), no script, font or style fetched from anywhere, so the file opens offline
and can be mailed. Every piece of trace or catalog text goes through :func:`html.escape`: a catalog may hold markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recot.curation.report import STAGES, funnel
from recot.curation.store import Store
from recot.io import atomic_path

STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td.l,th.l{text-align:left}pre{white-space:pre-wrap;background:#f6f6f6;padding:4px;margin:2px 0;max-width:900px}
h2{border-bottom:1px solid #ddd;margin-top:2em}.note{color:#666}svg text{font:11px sans-serif}"""
COLOURS = ("#4c78a8", "#72b7b2", "#54a24b", "#eeca3b", "#f58518", "#e45756")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def bar_chart(groups: dict[str, dict[str, int]], series: Sequence[str], width: int = 900) -> str:
    """Horizontal bars: one block per group (a task), one bar per series (a funnel stage), the count written beside."""
    top = max((v for counts in groups.values() for v in counts.values()), default=0) or 1
    row, label_w, y, parts = 14, 150, 4, []
    for group, counts in groups.items():
        parts.append(f'<text x="0" y="{y + 11}" font-weight="bold">{esc(group)}</text>')
        y += row + 2
        for i, name in enumerate(series):
            value = counts.get(name, 0)
            length = (width - label_w - 80) * value / top
            parts.append(f'<text x="10" y="{y + 11}">{esc(name)}</text>'
                         f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{row - 2}" fill="{COLOURS[i % len(COLOURS)]}"/>'
                         f'<text x="{label_w + length + 4:.1f}" y="{y + 11}">{value}</text>')
            y += row
        y += 8
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" role="img">{"".join(parts)}</svg>'


def histogram(values: Sequence[float], bins: int = 20, width: int = 420, height: int = 120, label: str = "") -> str:
    """Counts of ``values`` in ``bins`` equal bins between their least and greatest, with both ends written under."""
    if not values:
        return '<p class="note">no values</p>'
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / span * bins), bins - 1)] += 1
    top, step = max(counts), width / bins
    rects = "".join(f'<rect x="{i * step:.1f}" y="{height - 20 - (height - 30) * c / top:.1f}" width="{step - 1:.1f}" '
                    f'height="{(height - 30) * c / top:.1f}" fill="#4c78a8"><title>{c}</title></rect>' for i, c in enumerate(counts))
    axis = (f'<text x="0" y="{height - 6}">{low:.3g}</text><text x="{width}" y="{height - 6}" text-anchor="end">{high:.3g}</text>'
            f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{esc(label)} (n={len(values)}, most in a bin {top})</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{rects}{axis}</svg>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], key: str = "") -> str:
    """An HTML table; the first column left-aligned. ``key`` names it (``data-table``) for readers and tests."""
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{esc(v)}</td>' for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f'<table data-table="{esc(key)}"><tr>{head}</tr>{body}</table>'


def _distributions(store: Store) -> dict[str, dict[str, list[float]]]:
    """Per task: EHR and cov_rate of the reasoning (R3), the answer's length in characters, completion tokens and, of a
    thinking teacher, the tokens of its own reasoning."""
    out: dict[str, dict[str, list[float]]] = {}
    for task, name, value in store.con.execute("""
            SELECT t.task, s.name, s.value FROM scores s JOIN traces t USING (trace_id) WHERE s.name IN ('ehr', 'cov_rate')
            UNION ALL SELECT task, 'answer characters', length(text) FROM traces WHERE status = 'ok'
            UNION ALL SELECT task, 'completion tokens', completion_tokens FROM traces WHERE completion_tokens > 0
            UNION ALL SELECT task, 'reasoning tokens', reasoning_tokens FROM traces WHERE reasoning_tokens > 0
            ORDER BY ALL""").fetchall():
        out.setdefault(task, {}).setdefault(name, []).append(float(value))
    return out


def _provenance(store: Store) -> list[tuple]:
    return store.con.execute("""SELECT task, teacher, model, template, template_version, template_hash, count(*),
                                       sum(prompt_tokens)::BIGINT, sum(completion_tokens)::BIGINT,
                                       coalesce(sum(reasoning_tokens), 0)::BIGINT, count(reasoning)
                                FROM traces GROUP BY ALL ORDER BY ALL""").fetchall()


def _examples(store: Store, data: dict[str, Any]) -> dict[str, str]:
    """Each example trace's target item title (catalog text, shown with the example)."""
    ids = [e["trace_id"] for r in data["rules"].values() for reason in r.get("reasons", {}).values() for e in reason["examples"]]
    if not ids:
        return {}
    return dict(store.con.execute("""SELECT t.trace_id, c.title FROM traces t JOIN catalog c ON c.item_id = t.target
                                     WHERE t.trace_id IN (SELECT unnest(?))""", [ids]).fetchall())


def report_page(store: Store, examples: int = 3, synth_summary: dict | None = None, plan: dict | None = None,
                data: dict[str, Any] | None = None) -> str:
    """The page as a string. ``synth_summary``: the job's ``summary.json`` (planned requests, wall time, tokens, cost);
    ``plan``: the dry run's JSON (``recot synth run --dry-run --json``), shown beside what the job measured; ``data``:
    the store's :func:`funnel` when the caller has it already (else it is read here)."""
    data = data if data is not None else funnel(store, examples)
    titles = _examples(store, data)
    sections = [f"<h1>recot funnel</h1><p class=\"note\">{esc(store.path)}, written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
                "The same figures as <code>recot curate report --json</code>.</p>"]

    planned = (synth_summary or {}).get("planned")
    totals = [("planned requests", planned if planned is not None else "(no synthesis summary)"),
              ("traces", data["traces"]), ("kept", data["kept"]), ("ingest rejects", data["ingest_rejects"])]
    sections.append("<h2>Funnel</h2>" + table(["", "count"], totals, "totals"))
    sections.append(bar_chart(data["stages"], STAGES))
    sections.append(table(["task", *STAGES], [[task, *(counts[s] for s in STAGES)] for task, counts in data["stages"].items()],
                          "stages"))
    if synth_summary:
        unanswered = synth_summary.get("unanswered") or {}
        rejected = synth_summary.get("rejected") or {}
        sections.append("<p>Synthesis: " + esc(f"{synth_summary.get('ok')} of {planned} planned requests answered; "
                                               f"rejected {json.dumps(rejected)}; unanswered {json.dumps(unanswered)}") + "</p>")

    rows = []
    for rule, counts in data["rules"].items():
        rows.append([rule, "(all)", counts["checked"], counts["failed"]])
        rows.extend([rule, reason, "", entry["count"]] for reason, entry in counts.get("reasons", {}).items())
    sections.append("<h2>Rules</h2>" + table(["rule", "reason", "checked", "failed"], rows, "rules"))
    for rule, counts in data["rules"].items():
        for reason, entry in counts.get("reasons", {}).items():
            items = "".join(f"<li>{esc(e['task'])} <code>{esc(e['trace_id'])}</code> target title: {esc(titles.get(e['trace_id']))}"
                            f"<br>detail: {esc(e['detail'])}<pre>{esc(e['text'])}</pre></li>" for e in entry["examples"])
            sections.append(f"<h3>{esc(rule)}: {esc(reason)} ({entry['count']})</h3><ul>{items}</ul>")

    sections.append("<h2>Grounding and length, per task</h2>")
    for task, series in _distributions(store).items():
        sections.append(f"<h3>{esc(task)}</h3>" + "".join(histogram(values, label=name) for name, values in series.items()))

    sizes = [size for (size,) in store.con.execute(
        "SELECT size FROM dup_clusters WHERE keep AND size > 1 ORDER BY size").fetchall()]
    sections.append("<h2>Duplicate clusters</h2>" + histogram([float(s) for s in sizes], label="cluster size (kept trace's cluster)"))

    provenance = _provenance(store)
    sections.append("<h2>Teachers, templates, tokens</h2>" + table(
        ["task", "teacher", "model", "template", "version", "template hash", "traces", "prompt tokens", "completion tokens",
         "of them reasoning", "with the teacher's reasoning"],
        provenance, "provenance"))
    if synth_summary or plan:
        cost = [("prompt tokens", (plan or {}).get("prompt_tokens"), (synth_summary or {}).get("prompt_tokens")),
                ("completion tokens", (plan or {}).get("completion_tokens_max"), (synth_summary or {}).get("completion_tokens")),
                ("of them reasoning", "", (synth_summary or {}).get("reasoning_tokens")),
                ("cost", json.dumps((plan or {}).get("cost_at_most")), json.dumps((synth_summary or {}).get("cost"))),
                ("wall seconds", "", (synth_summary or {}).get("seconds")),
                ("config", json.dumps((plan or {}).get("model")), json.dumps((synth_summary or {}).get("model")))]
        sections.append("<h3>Before (dry run, at most) and after (measured)</h3>" + table(["", "before", "after"], cost, "cost"))
    if data["set_aside"]:
        sections.append("<h2>Set aside before synthesis</h2><pre>" + esc(json.dumps(data["set_aside"], indent=1)) + "</pre>")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>recot funnel</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")


def write_report_page(store: Store, out: Path, **options: Any) -> Path:
    """Write :func:`report_page` to ``out`` (atomically)."""
    with atomic_path(out) as tmp:
        tmp.write_text(report_page(store, **options), encoding="utf-8")
    return out
