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

from typing import Any

import polars as pl

from recot.formats.sid import ANY_SID_PATTERN

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# The whole trace text as render_cot writes it (Python re and DuckDB RE2 alike); the cot_format rule checks it.
COT_PATTERN = (rf"{THINK_OPEN}\nPersona: [^\n]+\nInterests:\n(?:\d+\. [^\n]+\n)+Transition: [^\n]+\n{THINK_CLOSE}\n[^\n]+")


# A student's completion: an optional think block, then exactly one SID (the format reward checks it).
COMPLETION_PATTERN = rf"(?:{THINK_OPEN}\n?.+?\n?{THINK_CLOSE}\s*)?({ANY_SID_PATTERN})\s*"

def render_cot(trace: Any) -> str:
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


# The think block, in the three languages recot reads text in. One meaning: a text has a think block when it holds
# THINK_CLOSE, and the block ends at the first one; the reasoning is what follows THINK_OPEN inside the block (empty
# without one); the answer is what follows the block, or the whole text when it has none (a direct answer).
# tests/test_formats.py holds the Python, SQL and polars forms to each other.


BLANKS = " \n\r\t"  # what is stripped around an answer


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a trace or completion text: markers excluded, answer stripped of blanks."""
    if THINK_CLOSE not in text:
        return "", text.strip(BLANKS)
    block, _, answer = text.partition(THINK_CLOSE)
    _, opened, reasoning = block.partition(THINK_OPEN)
    return (reasoning if opened else ""), answer.strip(BLANKS)


def think_block_sql(text: str) -> str:
    """SQL: the think block of the trace text ``text`` (a SQL expression), markers included."""
    return f"split_part({text}, '{THINK_CLOSE}', 1) || '{THINK_CLOSE}'"


def reasoning_sql(text: str) -> str:
    """SQL: the reasoning inside the think block of ``text``, markers excluded (:func:`split_think`'s first part)."""
    return f"CASE WHEN contains({text}, '{THINK_CLOSE}') THEN split_part(split_part({text}, '{THINK_CLOSE}', 1), '{THINK_OPEN}', 2) ELSE '' END"


def answer_sql(text: str) -> str:
    """SQL: what follows the think block of ``text`` (:func:`split_think`'s second part)."""
    blanks = " || ".join(f"chr({ord(c)})" for c in BLANKS)
    return (f"trim(CASE WHEN contains({text}, '{THINK_CLOSE}') THEN substr({text}, strpos({text}, '{THINK_CLOSE}') + "
            f"{len(THINK_CLOSE)}) ELSE {text} END, {blanks})")


def reasoning_expr(text: pl.Expr) -> pl.Expr:
    """polars: the reasoning of each text (:func:`split_think`'s first part, null where ``text`` is null)."""
    block = text.str.split_exact(THINK_CLOSE, 1).struct.field("field_0")
    closed = text.str.contains(THINK_CLOSE, literal=True) & block.str.contains(THINK_OPEN, literal=True)
    return pl.when(closed).then(block.str.split_exact(THINK_OPEN, 1).struct.field("field_1")).when(text.is_not_null()).then(pl.lit(""))
