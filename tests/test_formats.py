"""Each shared format is defined once and, where a second language needs it, written again beside its definition:
these tests hold every twin to its definition on the same inputs (Python, DuckDB SQL, polars)."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from recot.formats.cot import answer_sql, reasoning_expr, reasoning_sql, split_think
from recot.formats.grounding import grounding, grounding_sql
from recot.formats.sid import codes_sql, sid_codes

TEXTS = [
    "<think>\nPersona: hobbyist. cites #1\nInterests:\n1. tape (from #1)\nTransition: x -> interest 1. y\n</think>\n<a_1><b_2><c_3>",
    "<a_1><b_2><c_3>",  # a direct answer: no think block
    "<think>never closed <a_1><b_2>",
    "no open</think> <a_4><b_5>",
    "<think>two</think> closes</think><a_1>",
    "<think></think>",
    "",
    "  <think> spaced </think>   <s_a_9><s_b_8>  ",
]


def _sql(expression: str, texts: list[str]) -> list:
    con = duckdb.connect()
    con.register("texts", pl.DataFrame({"i": range(len(texts)), "text": texts}).to_arrow())
    return [row[0] for row in con.execute(f"SELECT {expression} FROM texts ORDER BY i").fetchall()]


def test_the_think_block_reads_the_same_in_python_sql_and_polars():
    python = [split_think(t) for t in TEXTS]
    assert _sql(reasoning_sql("text"), TEXTS) == [r for r, _ in python]
    assert _sql(answer_sql("text"), TEXTS) == [a for _, a in python]
    polars = pl.DataFrame({"text": TEXTS}).select(r=reasoning_expr(pl.col("text")))["r"].to_list()
    assert polars == [r for r, _ in python]
    assert split_think(TEXTS[0])[1] == "<a_1><b_2><c_3>" and split_think(TEXTS[1]) == ("", "<a_1><b_2><c_3>")


CASES = [  # (reasoning, history SIDs)
    ("#1 and #3, then <a_1><b_1><c_1>", ["<a_1><b_1><c_1>", None, "<a_2><b_2><c_2>"]),
    ("mentions <a_9><b_9><c_9> only", ["<a_1><b_1><c_1>"]),
    ("nothing at all", ["<a_1><b_1><c_1>", "<a_2><b_2><c_2>"]),
    ("#7 is out of range, #2 is not", [None, "<a_5><b_5><c_5>"]),
    ("<a_1><b_1><c_1> <a_1><b_1><c_1> <a_3><b_3><c_3>", ["<a_1><b_1><c_1>"]),
    ("empty history #1", []),
]


def test_grounding_in_sql_is_grounding_in_python():
    con = duckdb.connect()
    con.register("rows", pl.DataFrame({"trace_id": [str(i) for i in range(len(CASES))], "reasoning": [r for r, _ in CASES],
                                       "history_sids": [h for _, h in CASES]}, schema_overrides={"history_sids": pl.List(pl.Utf8)}).to_arrow())
    got = {trace: (ehr, cov) for trace, ehr, cov in con.execute(grounding_sql("rows")).fetchall()}
    for i, (reasoning, history) in enumerate(CASES):
        assert got[str(i)] == pytest.approx(grounding(reasoning, history)), (reasoning, history)


def test_sid_codes_in_sql_are_sid_codes_in_python():
    sids = ["<a_12><b_3><c_77>", "<s_a_1><s_b_20>", "<|sid_begin|><a_4><b_5><|sid_end|>", "<item_a_0><item_b_999><item_c_1><item_d_2>"]
    assert [tuple(int(c) for c in codes) for codes in _sql(codes_sql("text"), sids)] == [sid_codes(s) for s in sids]
    assert sid_codes("not a sid") is None and sid_codes("<a_1> trailing") is None and sid_codes(None) is None
