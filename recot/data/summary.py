"""What a dataset holds: counts, sequence lengths, missing text, SID shape and collisions, rejects."""

from __future__ import annotations

import polars as pl

from recot.data.loaders import Dataset


def summarize(ds: Dataset) -> dict:
    """A JSON-ready summary of a dataset, as ``recot data inspect`` prints it."""
    items = ds.catalog.items
    seqs = ds.sequences().select("length").collect()["length"]
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
        "interactions": int(seqs.sum()),
        "sequence_length": {"min": int(seqs.min() or 0), "mean": round(float(seqs.mean() or 0), 3), **quantiles,
                            "max": int(seqs.max() or 0)},
        "sids": {
            "levels": levels,
            "codebook_sizes": ds.catalog.codebook_sizes,
            "example": ds.catalog.sid_text()[0] if levels else None,
            **ds.catalog.collision_summary(),
        },
        "rejects": dict(ds.rejects.group_by("reason").len().sort("reason").iter_rows()),
    }
