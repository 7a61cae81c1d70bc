"""Next-item samples of a dataset split as TRL conversational data, in the export's wording.

The curation export writes training rows from curated traces; evaluation (and the learning check,
which trains on raw next-item samples) needs the same student prompt for any split's samples. The
wording comes from :mod:`curation.export` and a test holds the two builders to the same text.
"""

from __future__ import annotations

import polars as pl

from curation.export import HISTORY_HEAD, R3_DIRECT, R3_THINK
from synth.catalog import Catalog
from synth.splits import Split


def next_item_rows(split: Split, catalog: Catalog, part: str, think: bool = False) -> pl.DataFrame:
    """One row per sample of ``part``: ``prompt`` (conversational), ``completion`` (the target SID),
    ``target_sid``, ``history_sids``, ``user_id``. Samples whose target has no SID are left out."""
    sids = catalog.items.select("item_id", "title", sid=catalog.sid_text())
    samples = split.part(part).collect().with_row_index("row")
    history = (samples.select("row", "history").explode("history").with_columns(pos=pl.int_range(1, pl.len() + 1).over("row"))
               .join(sids, left_on="history", right_on="item_id", how="left")
               .group_by("row", maintain_order=True)
               .agg(lines=pl.format("{}. {} {}", "pos", pl.col("sid").fill_null("?"), pl.col("title").fill_null("")).str.join("\n"),
                    history_sids=pl.col("sid")))
    ask = R3_THINK if think else R3_DIRECT
    rows = (samples.join(history, on="row", how="left").join(sids.select("item_id", target_sid="sid"), left_on="target",
                                                              right_on="item_id", how="left")
            .filter(pl.col("target_sid").is_not_null()).sort("row"))
    text = pl.concat_str([pl.lit(HISTORY_HEAD + "\n"), pl.col("lines").fill_null(""), pl.lit("\n" + ask)])
    return rows.select(
        prompt=pl.concat_list(pl.struct(role=pl.lit("user"), content=text)),
        completion=pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col("target_sid"))),
        target_sid="target_sid", history_sids="history_sids", user_id="user_id", target="target")
