"""Next-item samples of a dataset split as TRL conversational data, in the export's wording.

The curation export writes training rows from curated traces; evaluation (and the learning check,
which trains on raw next-item samples) needs the same student prompt for any split's samples: both
build it from :mod:`recot.synth.student`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recot.synth.catalog import Catalog
from recot.synth.splits import Split
from recot.synth.student import ASK_DIRECT, ASK_THINK, history_line, prompt_expr


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


def load_export(path: str | Path, name: str):
    """The ``train`` (and ``validation``, when present) splits of format ``name`` of a recot export, as a
    ``datasets.DatasetDict`` read from exactly the files that export wrote.

    ``datasets.load_dataset(folder, name=...)`` caches by folder name, so a second export into the
    same folder (or one of the same name elsewhere) could be served the earlier rows; reading the
    parquet files into memory leaves no cache to go stale."""
    import datasets
    import pyarrow.parquet as pq

    from recot.synth.errors import DataError

    folder = Path(path) / name
    files = {part: folder / f"{part}.parquet" for part in ("train", "validation") if (folder / f"{part}.parquet").exists()}
    if "train" not in files:
        raise DataError(folder, f"no {name}/train.parquet here",
                        f"point at a folder written by `recot export` with the {name!r} format (and training rows)")
    return datasets.DatasetDict({part: datasets.Dataset(pq.read_table(file)) for part, file in files.items()})
