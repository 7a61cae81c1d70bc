"""Teachers side by side as one self-contained HTML page, written from :func:`recot.curation.compare.compare`'s data.

Built as the funnel page is (:mod:`recot.curation.report_page`): inline SVG, no script or fetched resource, every
piece of trace text escaped, and every number the JSON's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recot.curation.compare import AGREEMENT
from recot.curation.report_page import STYLE, bar_chart, esc, table
from recot.io import atomic_path

PER_OUTPUT = (("planned", "planned"), ("sent", "sent"), ("traces", "traces"), ("kept", "kept"), ("kept_share", "kept share"),
              ("completion_tokens_per_kept", "completion tokens per kept"), ("cost_per_kept", "cost per kept"),
              ("seconds_per_kept", "wall seconds per kept"), ("judge_mean", "judge mean"))
PER_TASK = (("traces", "traces"), ("kept", "kept"), ("kept_share", "kept share"), ("completion_tokens", "completion tokens"),
            ("reasoning_tokens", "of them reasoning"), ("completion_tokens_per_kept", "completion tokens per kept"),
            ("cost_per_kept", "cost per kept"), ("judge_mean", "judge mean"))


def compare_page(data: dict[str, Any]) -> str:
    arms = data["arms"]
    names = [arm["name"] for arm in arms]
    tasks = sorted({task for arm in arms for task in arm["by_task"]})
    sections = [f"<h1>recot: teachers side by side</h1><p class=\"note\">written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. The same "
                "figures as <code>recot curate compare --json</code>. Each output was curated alike (the same rules and dedup); "
                f"{data['common']} requests were answered by every output.</p>"]
    overall = [[arm["name"], f"{arm['teacher']}:{arm['model']}", *(arm[key] for key, _ in PER_OUTPUT)] for arm in arms]
    sections.append("<h2>Per output</h2>" + table(["output", "teacher", *(label for _, label in PER_OUTPUT)], overall, "outputs")
                    + '<p class="note">Wall seconds are the last run\'s (answers a rerun found in its journal cost none: see '
                    "<i>sent</i>); cost is at each output's own [price].</p>")
    sections.append("<h2>Kept traces per task</h2>" + bar_chart(
        {task: {arm["name"]: arm["by_task"].get(task, {}).get("kept", 0) for arm in arms} for task in tasks}, names))
    per_task = [[task, arm["name"], *(arm["by_task"][task][key] for key, _ in PER_TASK)]
                for task in tasks for arm in arms if task in arm["by_task"]]
    sections.append(table(["task", "output", *(label for _, label in PER_TASK)], per_task, "tasks"))

    reasons = sorted({(task, reason) for arm in arms for task, figures in arm["by_task"].items() for reason in figures["reasons"]})
    sections.append("<h2>Why the rest was not kept</h2><p class=\"note\">A trace can fail several rules; each reason is "
                    "counted once per trace.</p>" + table(
                        ["task", "reason", *names],
                        [[task, reason, *(arm["by_task"].get(task, {}).get("reasons", {}).get(reason, 0) for arm in arms)]
                         for task, reason in reasons], "reasons"))

    sections.append("<h2>Where they agree</h2>" + table(
        ["task", *AGREEMENT], [[task, *(counts[a] for a in AGREEMENT)] for task, counts in data["agreement"].items()], "agreement"))
    if data["only_in"]:
        sections.append("<p class=\"note\">Answered by some outputs and not by every one, so left out of every figure here: "
                        + esc(json.dumps(data["only_in"])) + "</p>")
    items = []
    for case in data["disagreements"]:
        answers = "".join(f"<li><b>{esc(name)}</b>: {esc(arm['outcome'])} {esc(', '.join(arm['reasons']))} answer "
                          f"<code>{esc(arm['answer'])}</code><pre>{esc(arm['text'])}</pre></li>" for name, arm in case["arms"].items())
        items.append(f"<h3>{esc(case['task'])} {esc(case['subject_id'])} sample {esc(case['sample'])}: "
                     f"{esc(case['agreement'])}</h3><ul>{answers}</ul>")
    sections.append("<h2>Requests where they disagree (a few per task)</h2>" + ("".join(items) or "<p>none</p>"))
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>recot: teachers side by side</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")


def write_compare_page(data: dict[str, Any], out: Path) -> Path:
    """Write :func:`compare_page` to ``out`` (atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(compare_page(data), encoding="utf-8")
    return out
