"""Text as recot compares it: Unicode NFKC (full-width and decomposed forms become their plain twins) with
zero-width characters removed. Item text is stored this way at load; rules and dedup compare a trace's text this
way, so two texts that read the same are the same everywhere."""

from __future__ import annotations

import polars as pl

ZERO_WIDTH = "[\u200b\u200c\u200d\u2060\ufeff\u00ad]"  # zero-width space, joiners, word joiner, BOM, soft hyphen


def plain_text(text: pl.Expr) -> pl.Expr:
    """``text`` in NFKC without zero-width characters."""
    return text.str.normalize("NFKC").str.replace_all(ZERO_WIDTH, "")
