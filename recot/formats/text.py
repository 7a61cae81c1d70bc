"""Text as recot compares it: Unicode NFKC (full-width and decomposed forms become their plain twins) with
invisible characters removed: zero-width ones, emoji variation selectors (a title with one is the same item text as
without) and bidirectional controls (they reorder what a reader sees in prompts, exports and the review view).
Item text is stored this way at load; rules and dedup compare a trace's text this way, so two texts that read the
same are the same everywhere."""

from __future__ import annotations

import polars as pl

# zero-width space, joiners, word joiner, BOM, soft hyphen; variation selectors 15 and 16; bidi embeddings, overrides, isolates
INVISIBLE = "[\u200b\u200c\u200d\u2060\ufeff\u00ad\ufe0e\ufe0f\u202a-\u202e\u2066-\u2069]"


def plain_text(text: pl.Expr) -> pl.Expr:
    """``text`` in NFKC without invisible characters."""
    return text.str.normalize("NFKC").str.replace_all(INVISIBLE, "")
