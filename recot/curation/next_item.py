"""Next-item rows of every part of a split in the student's prompt: what an export hands evaluation.

The export writes them (``next_item/{train,valid,test}.parquet``) next to its training formats, so evaluation,
the sequential baselines and the learning check read the held-out rows from the export instead of reopening
the dataset and choosing a split again. The prompt is :mod:`recot.formats.student`'s, the one the export's SQL
writes for training rows (a test holds the two to each other).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recot.data.catalog import Catalog
from recot.formats.splits import PARTS, Split
from recot.formats.student import ASK_DIRECT, ASK_THINK, history_line, prompt_expr

NEXT_ITEM = "next_item"  # the export's folder of these rows, read by recot.trainer.data

def next_item_rows(split: Split, catalog: Catalog, part: str, think: bool = False) -> pl.DataFrame:
    """One row per sample of ``part``: ``prompt`` (conversational), ``completion`` (the target SID),
    ``target_sid``, ``history_sids``, ``user_id``, ``target`` and ``history`` (item ids). Samples whose
    target has no SID are left out."""
    sids = catalog.items.select("item_id", "title", sid=catalog.sid_text())
    samples = split.part(part).collect().with_row_index("row")
    history = (samples.select("row", "history").explode("history").with_columns(pos=pl.int_range(1, pl.len() + 1).over("row"))
               .join(sids, left_on="history", right_on="item_id", how="left")
               .group_by("row", maintain_order=True)
               .agg(lines=history_line(pl.col("pos"), pl.col("sid"), pl.col("title")).str.join("\n"),
                    history_sids=pl.col("sid")))
    ask = ASK_THINK if think else ASK_DIRECT
    rows = (samples.join(history, on="row", how="left").join(sids.select("item_id", target_sid="sid"), left_on="target",
                                                              right_on="item_id", how="left")
            .filter(pl.col("target_sid").is_not_null()).sort("row"))
    text = prompt_expr(pl.col("lines"), ask)
    return rows.select(
        prompt=pl.concat_list(pl.struct(role=pl.lit("user"), content=text)),
        completion=pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col("target_sid"))),
        target_sid="target_sid", history_sids="history_sids", user_id="user_id", target="target", history="history")


def write_next_item(split: Split, catalog: Catalog, folder: Path) -> dict[str, int]:
    """Every part's rows, with the direct ``prompt`` and the reasoning ``think_prompt``, as ``folder/PART.parquet``;
    returns the rows per part."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in PARTS:
        rows = next_item_rows(split, catalog, part).with_columns(think_prompt=next_item_rows(split, catalog, part, think=True)["prompt"])
        rows.write_parquet(folder / f"{part}.parquet")
        counts[part] = rows.height
    return counts
