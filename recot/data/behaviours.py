"""Behaviour sequences: per-user, time-ordered item lists, from interaction tables or sliding windows."""

from __future__ import annotations

import polars as pl

from recot.data.rejects import rejects_from

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8(),
    "item_id": pl.Utf8(),
    "ts": pl.Int64(),
    "pos": pl.Int64(),  # tie-breaker for equal timestamps: the record's order in its source
    "event": pl.Utf8(),
    "domain": pl.Utf8(),
}
# Window files (MiniOneRec) carry no time: events get a logical clock of period * PERIOD_SPAN + position,
# which orders a user's events exactly and keeps the dataset's period boundaries global.
PERIOD_SPAN = 1_000_000


def sequences(interactions: pl.LazyFrame) -> pl.LazyFrame:
    """One row per user: ``items`` and ``ts`` lists, oldest first, and ``length``.

    Aggregates within groups rather than sorting the whole table, so it streams through polars'
    engine without a Python object per interaction.
    """
    order = ["ts", "pos"]
    return (
        interactions.group_by("user_id")
        .agg(items=pl.col("item_id").sort_by(order), ts=pl.col("ts").sort_by(order))
        .with_columns(length=pl.col("items").list.len().cast(pl.Int64))
        .sort("user_id")
    )


def interactions_from_windows(windows: pl.DataFrame, file: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rebuild each user's sequence from overlapping (history, next item) windows, without duplicates.

    ``windows`` has ``user_id``, ``history`` (list of ids, oldest first), ``item_id``, ``period``
    (1, 2, ... for the files' time periods, in order), ``_order`` (order within the period) and ``_loc``.
    Row r of a user predicts position ``p0 + r``, where ``p0`` is the longest history reaching back
    before the first target; each history item then has a fixed position, and every position must
    hold one item only. Users whose windows disagree are returned as rejects.
    """
    w = (
        windows.sort("user_id", "period", "_order")
        .with_columns(r=pl.int_range(pl.len()).over("user_id"), n_hist=pl.col("history").list.len())
        .with_columns(p0=(pl.col("n_hist") - pl.col("r")).max().over("user_id").clip(lower_bound=0))
    )
    targets = w.select("user_id", pos=pl.col("p0") + pl.col("r"), item_id="item_id", period="period", _loc="_loc")
    history = (
        w.with_columns(j=pl.int_ranges(pl.col("n_hist")))
        .explode("history", "j")
        .filter(pl.col("history").is_not_null())
        .select("user_id", pos=pl.col("p0") + pl.col("r") - pl.col("n_hist") + pl.col("j"), item_id="history",
                period=pl.lit(0, dtype=pl.Int64), _loc="_loc")
    )
    cells = (
        pl.concat([targets.with_columns(pl.col("period").cast(pl.Int64)), history])
        .group_by("user_id", "pos")
        .agg(n=pl.col("item_id").n_unique(), item_id=pl.col("item_id").first(), period=pl.col("period").max(),
             locs=pl.col("_loc").unique().sort())
    )
    bad_users = (
        cells.filter(pl.col("n") > 1)
        .group_by("user_id")
        .agg(_loc=pl.col("locs").list.explode(keep_nulls=False, empty_as_null=False).unique().sort().head(4))
        .with_columns(pl.col("_loc").list.join(", "))
    )
    rejects = rejects_from(
        bad_users.with_columns(_record=pl.col("user_id"), _reason=pl.lit("inconsistent_windows")),
        file, {"inconsistent_windows": "this user's windows disagree on which item came at some position"},
    )
    interactions = (
        cells.join(bad_users.select("user_id"), on="user_id", how="anti")
        .select(
            "user_id", "item_id",
            ts=pl.col("period") * PERIOD_SPAN + pl.col("pos"),
            pos=pl.col("pos").cast(pl.Int64),
            event=pl.lit(None, dtype=pl.Utf8), domain=pl.lit(None, dtype=pl.Utf8),
        )
        .sort("user_id", "pos")
    )
    return interactions, rejects
