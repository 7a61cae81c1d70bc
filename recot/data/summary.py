"""What a dataset holds: counts, sequence lengths, missing text, SID shape and collisions, rejects."""

from __future__ import annotations

from typing import cast

import polars as pl

from recot.data.loaders import Dataset


def summarize(ds: Dataset) -> dict:
    """A JSON-ready summary of a dataset, as ``recot data inspect`` prints it."""
    items = ds.catalog.items
    seqs = ds.sequences().select(pl.col("length").cast(pl.Int64)).collect()["length"]
    low, high, total = (int(cast(int, v or 0)) for v in (seqs.min(), seqs.max(), seqs.sum()))
    quantiles = {f"p{int(q * 100)}": float(seqs.quantile(q, "nearest") or 0) for q in (0.25, 0.5, 0.75, 0.95)}
    missing = items.select(
        [(pl.col(c).is_null() | (pl.col(c).cast(pl.Utf8).str.strip_chars() == "")).sum().alias(c)
         for c in ("title", "description", "brand")]
    ).row(0, named=True)
    levels = ds.catalog.levels
    return {
        "dataset": ds.name,
        "clock": ds.clock,
        "boundaries": ds.boundaries,
        "items": items.height,
        "missing_text": missing,
        "users": seqs.len(),
        "interactions": total,
        "sequence_length": {"min": low, "mean": round(float(cast(float, seqs.mean() or 0)), 3), **quantiles, "max": high},
        "sids": {
            "levels": levels,
            "codebook_sizes": ds.catalog.codebook_sizes,
            "example": ds.catalog.sid_text()[0] if levels else None,
            **ds.catalog.collision_summary(),
        },
        "rejects": dict(ds.rejects.group_by("reason").len().sort("reason").iter_rows()),
        "text_edits": ds.catalog.text_edits,  # items whose text loading made safe: normalised, brackets neutralised, titles cut
    }
