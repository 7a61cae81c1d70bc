"""The student prompt: the one wording a trained recommender reads, used by every stage.

Teacher prompts (``prompts/*.j2``) carry instructions and JSON demands a student must not learn.
The student reads a numbered history (``k. SID title``, one line per item) and one question; R3
rows ask for the reasoning first (:data:`ASK_THINK`) or for the SID alone (:data:`ASK_DIRECT`).
Slate rows exported as a ranking task add the candidates (:data:`SLATE_HEAD`, ``- SID title`` lines)
and ask for one of them (:data:`ASK_PICK_THINK`, :data:`ASK_PICK_DIRECT`).
Export and usefulness build it in SQL (:func:`prompt_sql`), the trainer's next-item rows and
evaluation in polars (:func:`prompt_expr`, :func:`history_line`); both come from the same parts
here, and a test holds them to the same text.
"""

from __future__ import annotations

import re

import polars as pl

HISTORY_HEAD = "A user's purchases, oldest first:"
ASK_THINK = "Think through the persona, the interests and the transition, then answer with the next item's semantic ID."
ASK_DIRECT = "Answer with the next item's semantic ID."
# the data_source of every RL row recot exports for verl, and what recot.trainer.verl_reward scores
VERL_SOURCE = "recot/next_item"
SLATE_HEAD = "Candidates for the next purchase:"
ASK_PICK_THINK = ("Think through the persona, the interests and the transition, then answer with the semantic ID of the "
                  "candidate the user buys next.")
ASK_PICK_DIRECT = "Answer with the semantic ID of the candidate the user buys next."
ASK_INTERESTS = "Which 1 to 5 interests will this user pursue next? Cite the purchase numbers."


def sql_text(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def history_line(position: pl.Expr, sid: pl.Expr, title: pl.Expr) -> pl.Expr:
    """One history line, ``k. SID title`` (``?`` for an item without a SID; titles are one line from the catalog)."""
    return pl.format("{}. {} {}", position, sid.fill_null("?"), title.fill_null(""))


def prompt_expr(lines: pl.Expr, ask: str) -> pl.Expr:
    """The student prompt from a column of joined history lines."""
    return pl.concat_str([pl.lit(HISTORY_HEAD + "\n"), lines.fill_null(""), pl.lit("\n" + ask)])


def prompt_sql(lines: str, ask: str) -> str:
    """The student prompt as a SQL expression over the SQL expression ``lines`` and ``ask`` (SQL too)."""
    return f"{sql_text(HISTORY_HEAD)} || chr(10) || coalesce({lines}, '') || chr(10) || {ask}"


def with_slate_sql(lines: str, slate_lines: str) -> str:
    """SQL: history lines followed by the candidate block (``slate_lines``: ``- SID title`` lines, SQL too)."""
    return f"{lines} || chr(10) || {sql_text(SLATE_HEAD)} || chr(10) || {slate_lines}"


# The fields a declared task's student prompt may use (synth.tasks.Task.student), as SQL over export's rows.
STUDENT_FIELDS = {
    "history": f"{sql_text(HISTORY_HEAD)} || chr(10) || coalesce(lines, '')",
    "sid1": "coalesce(sid1, '?')", "title1": "coalesce(title1, '')",
    "sid2": "coalesce(sid2, '?')", "title2": "coalesce(title2, '')",
}


def student_sql(template: str) -> str:
    """SQL for a declared student prompt: its text with each ``{field}`` replaced by :data:`STUDENT_FIELDS`."""
    parts = re.split(r"\{(\w+)\}", template)
    return " || ".join(STUDENT_FIELDS[p] if i % 2 else sql_text(p) for i, p in enumerate(parts) if p or i % 2)
