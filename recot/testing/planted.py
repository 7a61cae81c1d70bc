"""Traces with planted duplicates, at any size: copies of a synthesis output under new request hashes.

Each copy of a trace gets a new trace id (so copies land in every shard of a sharded store) and one of three
texts: the original (an exact duplicate), the original with a few words added after ``<think>`` (a near
duplicate, word 3-gram Jaccard about 0.9 for a trace of 80 words), or with many (a trace of its own). The
files synthesis writes beside its traces are copied too, so the result ingests as the original does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl

from recot.data.catalog import CATALOG_FILE
from recot.formats.splits import SPLIT_FILE
from recot.formats.tasks import TASKS_FILE

NEAR_WORDS, OWN_WORDS = 4, 60


def planted_traces(source: Path, out: Path, copies: int, shares: tuple[float, float] = (0.2, 0.2), seed: int = 0) -> Path:
    """``out/traces.parquet``: the traces of ``source`` and ``copies`` copies of each, a ``shares[0]`` share of the copies
    exact duplicates and a ``shares[1]`` share near ones (the rest traces of their own); returns its path."""
    original = pl.read_parquet(source)
    rng = np.random.default_rng(seed)
    parts = [original]
    for copy in range(copies):
        draw = rng.random(original.height)
        kind = np.where(draw < shares[0], 0, np.where(draw < shares[0] + shares[1], NEAR_WORDS, OWN_WORDS))
        words = rng.integers(0, 1 << 30, size=(original.height, OWN_WORDS))
        added = pl.concat_str([pl.lit(" w") + pl.Series(words[:, i]).cast(pl.Utf8) for i in range(OWN_WORDS)])
        near = pl.concat_str([pl.lit(" w") + pl.Series(words[:, i]).cast(pl.Utf8) for i in range(NEAR_WORDS)])
        insert = pl.when(pl.Series(kind) == 0).then(pl.lit("")).when(pl.Series(kind) == NEAR_WORDS).then(near).otherwise(added)
        parts.append(original.with_columns(
            request_hash=pl.col("request_hash") + f"-copy{copy}",
            text=pl.when(pl.col("text").str.starts_with("<think>"))
                   .then(pl.lit("<think>") + insert + pl.col("text").str.slice(len("<think>")))
                   .otherwise(insert.str.strip_chars_start() + pl.lit(" ") + pl.col("text"))))
    out.mkdir(parents=True, exist_ok=True)
    for name in (SPLIT_FILE, TASKS_FILE, CATALOG_FILE):
        if (source.parent / name).exists():
            shutil.copy(source.parent / name, out / name)
    target = out / "traces.parquet"
    pl.concat(parts).write_parquet(target)
    return target
