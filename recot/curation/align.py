"""The export's ``align`` format: SID <-> text pairs, R1 relations, behaviour documents and item text
(the layout and the prompts are :mod:`recot.formats.align`'s).

Built in polars from the catalog the export hands off (its SIDs), the dataset's item text and events, and
the split the store recorded: a behaviour document holds only a user's events before their cut-off (the
first held-out event, :meth:`Split.cutoffs`), so no evaluation target reaches alignment training.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recot.data.catalog import Catalog
from recot.formats.align import KINDS, held_out, relation_prompt, sid_to_text_prompt, text_to_sid_prompt
from recot.formats.splits import Split
from recot.formats.student import HISTORY_HEAD, history_line

ALIGN = "align"
MAX_DESCRIPTION_CHARS = 400  # an item's description in its text: enough to say what it is, not a page
ROW_SCHEMA = pl.Schema({**{name: pl.Utf8() for name in ("kind", "prompt", "completion", "split", "item_id", "user_id")},
                        "items": pl.List(pl.Utf8())})


def item_text() -> pl.Expr:
    """An item's text, one fact per line: the title, then brand, categories and description where present."""
    facts = {"": pl.col("title"), "Brand: ": pl.col("brand"), "Categories: ": pl.col("categories").list.join(" > "),
             "Description: ": pl.col("description").str.slice(0, MAX_DESCRIPTION_CHARS)}
    lines = [pl.when(value.str.strip_chars().fill_null("") != "").then(pl.lit(label) + value.str.strip_chars())
             for label, value in facts.items()]
    return pl.concat_list(lines).list.drop_nulls().list.join("\n")


def align_rows(catalog: Catalog, sids: pl.DataFrame, events: pl.LazyFrame, split: Split, relations: pl.DataFrame,
               max_events: int = 50) -> pl.DataFrame:
    """Every align row (:data:`ROW_SCHEMA`). ``sids``: ``item_id``, ``sid_text`` (the export's catalog);
    ``events``: the dataset's sequences (``user_id``, ``items``, ``ts``); ``relations``: kept R1 rows
    (``sid1``, ``sid2``, ``completion``, ``split``). A behaviour document keeps a user's last ``max_events``."""
    items = (catalog.items.select("item_id", "title", "brand", "description", "categories")
             .join(sids.select("item_id", "sid_text"), on="item_id", how="left")
             .with_columns(text=item_text(), held_out=pl.Series(held_out(catalog.items["item_id"].to_list()))))
    with_sid = items.filter(pl.col("sid_text").is_not_null())
    pair_split = pl.when(pl.col("held_out")).then(pl.lit("validation")).otherwise(pl.lit("train"))
    pairs = [
        with_sid.select(kind=pl.lit("sid_to_text"), prompt=pl.Series([sid_to_text_prompt(s) for s in with_sid["sid_text"]]),
                        completion="text", split=pair_split, item_id="item_id"),
        with_sid.filter(pl.col("title").fill_null("") != "").select(
            kind=pl.lit("text_to_sid"), prompt=pl.col("title").map_elements(text_to_sid_prompt, return_dtype=pl.Utf8),
            completion="sid_text", split=pair_split, item_id="item_id"),
        items.filter(pl.col("text") != "").select(kind=pl.lit("item_text"), prompt=pl.lit(""), completion="text",
                                                   split=pair_split, item_id="item_id"),
    ]
    rows = [frame.with_columns(user_id=pl.lit(None, pl.Utf8), items=pl.concat_list("item_id")) for frame in pairs]
    rows.append(relations.select(kind=pl.lit("relation"), prompt=pl.Series([relation_prompt(a, b) for a, b in
                                                                            zip(relations["sid1"], relations["sid2"])], dtype=pl.Utf8),
                                 completion="completion", split="split", item_id=pl.lit(None, pl.Utf8),
                                 user_id=pl.lit(None, pl.Utf8), items=pl.lit([], pl.List(pl.Utf8))))
    rows.append(_behaviour(items, events, split, max_events))
    return pl.concat([r.select(list(ROW_SCHEMA)).cast(ROW_SCHEMA) for r in rows]).sort("kind", "split", "item_id", "user_id")


def _behaviour(items: pl.DataFrame, events: pl.LazyFrame, split: Split, max_events: int) -> pl.DataFrame:
    """One document per user with at least two training events: their last ``max_events`` events before the cut-off
    as the student prompt's history (``k. SID title``; a held-out item shows no SID)."""
    shown = items.select("item_id", "title", sid=pl.when(pl.col("held_out")).then(None).otherwise(pl.col("sid_text")))
    trained = (events.select("user_id", "items", "ts").explode("items", "ts").rename({"items": "item_id"})
               .join(split.cutoffs(), on="user_id", how="left")
               .filter(pl.col("cutoff_ts").is_null() | (pl.col("ts") < pl.col("cutoff_ts")))
               .group_by("user_id").agg(pl.col("item_id").tail(max_events))
               .filter(pl.col("item_id").list.len() >= 2).collect())
    lines = (trained.with_row_index("doc").explode("item_id").with_columns(pos=pl.int_range(1, pl.len() + 1).over("doc"))
             .join(shown, on="item_id", how="left", maintain_order="left")
             .group_by("doc", "user_id", maintain_order=True)
             .agg(items=pl.col("item_id"), lines=history_line(pl.col("pos"), pl.col("sid"), pl.col("title")).str.join("\n")))
    return lines.select(kind=pl.lit("behaviour"), prompt=pl.lit(""), completion=pl.lit(HISTORY_HEAD + "\n") + pl.col("lines"),
                        split=pl.lit("train"), item_id=pl.lit(None, pl.Utf8), user_id="user_id", items="items")


def write_align(rows: pl.DataFrame, folder: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """``folder/{train,validation}.parquet`` (a split without rows gets no file); returns the rows per split and
    per kind and split."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in ("train", "validation"):
        chosen = rows.filter(pl.col("split") == part).drop("split")
        counts[part] = chosen.height
        if chosen.height:
            chosen.write_parquet(folder / f"{part}.parquet")
    by_kind = {kind: {part: rows.filter((pl.col("kind") == kind) & (pl.col("split") == part)).height
                      for part in ("train", "validation")} for kind in KINDS}
    return counts, by_kind
