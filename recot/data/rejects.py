"""The table of rejected records that lenient mode keeps.

Every loader checks its input in bulk and produces *rejects*: one row per bad record with the
file, where in it, the record id, a reason code and a human detail. In strict mode (the default)
any reject raises :class:`recot.errors.DataError` naming the first ones and the fix; with
``lenient=True`` the rejects are returned next to the good data so nothing is lost silently.
"""

from __future__ import annotations

import polars as pl

from recot.errors import DataError

REJECT_SCHEMA = {
    "file": pl.Utf8,
    "location": pl.Utf8,
    "record": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
}


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_SCHEMA)


def rejects_from(bad: pl.DataFrame, file: str, details: dict[str, str]) -> pl.DataFrame:
    """Rejects from flagged rows carrying ``_loc``, ``_record`` and a ``_reason`` code.

    ``details`` maps each reason code to the sentence a user reads; a ``_detail`` column, where
    present and set, says it per row instead (e.g. the parser's own message).
    """
    mapped = pl.col("_reason").replace_strict(details, default=pl.col("_reason"), return_dtype=pl.Utf8)
    return bad.select(
        file=pl.lit(str(file)),
        location=pl.col("_loc").cast(pl.Utf8),
        record=pl.col("_record").cast(pl.Utf8).fill_null(""),
        reason=pl.col("_reason"),
        detail=pl.coalesce(pl.col("_detail"), mapped) if "_detail" in bad.columns else mapped,
    )


def settle(rejects: pl.DataFrame, lenient: bool, fix: str, examples: int = 3) -> pl.DataFrame:
    """Raise on the rejects unless lenient; return them otherwise.

    The error names every kind of problem found (its file, its count and up to ``examples`` rows each),
    so a user fixing a file sees all of them in one pass rather than one kind per run.
    """
    if lenient or rejects.is_empty():
        return rejects
    kinds = rejects.group_by("reason", "file", maintain_order=True).agg(pl.len().alias("n"), pl.all().head(examples))
    blocks = []
    for kind in kinds.iter_rows(named=True):
        lines = [f"{loc}{'' if f'record {rec!r}' in loc else f' (record {rec!r})'}: {detail}"  # a location may name the record
                 for loc, rec, detail in zip(kind["location"], kind["record"], kind["detail"])]
        where = "" if kind["file"] == rejects["file"][0] else f" in {kind['file']}"
        count = f" ({kind['n']} bad records in all)" if kind["n"] > 1 else ""
        blocks.append(f"{kind['reason']}{where}{count}:\n    " + "\n    ".join(lines))
    total = f"\n  {rejects.height} bad records of {len(blocks)} kinds in all" if len(blocks) > 1 else ""
    raise DataError(
        rejects["file"][0],
        "\n  ".join(blocks) + total,
        f"{fix}; or pass --lenient (lenient=True) to skip such records and get a report of them",
    )
