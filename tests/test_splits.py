"""Splits: leave-last-out and temporal, with cut-offs that expose future information."""

from __future__ import annotations

import polars as pl

from recot.formats.splits import leave_last_out, temporal


def _seqs() -> pl.LazyFrame:
    return pl.LazyFrame({
        "user_id": ["u1", "u2"],
        "items": [["a", "b", "c", "d", "e"], ["x", "y", "z"]],
        "ts": [[1, 2, 3, 4, 5], [2, 6, 9]],
        "length": [5, 3],
    })


def test_leave_last_out_parts_and_histories():
    split = leave_last_out(_seqs(), max_history=2)
    rows = split.samples.sort("user_id", "target_ts").collect()
    u1 = rows.filter(pl.col("user_id") == "u1")
    assert u1["part"].to_list() == ["train", "train", "valid", "test"]
    assert u1["history"].to_list()[-1] == ["c", "d"] and u1["target"].to_list()[-1] == "e"
    # Every history event comes strictly before its target.
    assert rows.select((pl.col("history_ts").list.max() < pl.col("target_ts")).all()).item()
    cutoffs = dict(split.cutoffs().collect().iter_rows())
    assert cutoffs == {"u1": 4, "u2": 6}


def test_temporal_cutoff_and_future_events():
    split = temporal(_seqs(), valid_start=4, test_start=6)
    parts = split.samples.sort("user_id", "target_ts").collect()
    assert parts["part"].to_list() == ["train", "train", "valid", "valid", "test", "test"]
    assert split.cutoff == 4
    assert not split.part("train").filter(pl.col("target_ts") >= 4).collect().height
    events = pl.LazyFrame({"user_id": ["u1", "u1", "u2"], "ts": [3, 4, 9]})
    leaks = split.future_events(events).collect()
    assert leaks.select("user_id", "ts").rows() == [("u1", 4), ("u2", 9)]
