"""The one text format of a chain-of-thought trace used for training.

Every R3 trace, whoever wrote it, is rendered from its structured output into::

    <think>
    Persona: <prototype>. <evidence>
    Interests:
    1. <name> (from #2, #5)
    2. ...
    Transition: <recent behaviour> -> interest 1. <reasoning>
    </think>
    <answer SID>

so every training sample has the same shape and curation rules can find each module by its label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel

from recot.formats.sid import ANY_SID_PATTERN

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# The whole trace text as render_cot writes it (Python re and DuckDB RE2 alike); the cot_format rule checks it.
COT_PATTERN = (rf"{THINK_OPEN}\nPersona: [^\n]+\nInterests:\n(?:\d+\. [^\n]+\n)+Transition: [^\n]+\n{THINK_CLOSE}\n[^\n]+")


def think_block_sql(text: str) -> str:
    """SQL: the think block of the trace text ``text`` (a SQL expression), markers included."""
    return f"split_part({text}, '{THINK_CLOSE}', 1) || '{THINK_CLOSE}'"


def reasoning_sql(text: str) -> str:
    """SQL: the reasoning inside the think block of ``text``, markers excluded."""
    return f"split_part(split_part({text}, '{THINK_CLOSE}', 1), '{THINK_OPEN}', 2)"


def render_cot(trace: BaseModel) -> str:
    """Training text of a validated :func:`synth.schemas.cot_trace_model` instance."""
    interests = "\n".join(
        f"{i}. {item.name} (from {', '.join(f'#{e}' for e in item.evidence)})"
        for i, item in enumerate(trace.interests, start=1)
    )
    return (
        f"{THINK_OPEN}\n"
        f"Persona: {trace.persona.prototype}. {trace.persona.evidence}\n"
        f"Interests:\n{interests}\n"
        f"Transition: {trace.transition.recent} -> interest {trace.transition.follows}. {trace.transition.reasoning}\n"
        f"{THINK_CLOSE}\n"
        f"{trace.answer}"
    )


def grounding(reasoning: str, history_sids: Sequence[str | None], sid_pattern: str = ANY_SID_PATTERN) -> tuple[float, float]:
    """(EHR, cov_rate) of a reasoning text against its history's SIDs (None for an item without one).

    EHR is the share of SIDs the reasoning mentions that are not in the history (0 when it mentions
    none); cov_rate the share of history positions it cites as ``#k`` or whose SID it mentions. This
    is the definition; the ``grounding`` curation rule computes the same in SQL for every trace."""
    mentioned = re.findall(sid_pattern, reasoning)
    cited = {int(k) for k in re.findall(r"#(\d+)", reasoning)}
    known = {s for s in history_sids if s}
    ehr = sum(s not in known for s in mentioned) / len(mentioned) if mentioned else 0.0
    covered = sum(1 for k, s in enumerate(history_sids, start=1) if k in cited or (s is not None and s in mentioned))
    return ehr, covered / max(len(history_sids), 1)
