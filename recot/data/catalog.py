"""The item catalog: one row per item with its text, attributes and semantic ID codes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import polars as pl

from recot.data.rejects import rejects_from
from recot.formats.sid import DEFAULT_DIALECT, SidDialect, parse_sid_values
from recot.formats.text import INVISIBLE, plain_text

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8(),
    "title": pl.Utf8(),
    "description": pl.Utf8(),
    "brand": pl.Utf8(),
    "categories": pl.List(pl.Utf8()),
    "attributes": pl.Utf8(),  # a JSON object as text: free attributes differ from item to item
    "sid": pl.List(pl.Int32()),
}
TEXT_FIELDS = ("title", "brand")
# Item text reaches people, templates, rules and the model, so it is made safe once, at load (normalise_text):
# plain text (recot.formats.text: NFKC without zero-width characters), so twins compare equal in every rule;
# angle brackets become single guillemets, so no title can write a SID token or close the think block (only
# the catalog's own SIDs parse as SIDs); titles are cut to MAX_TITLE_CHARS, as prompts cut descriptions.
MAX_TITLE_CHARS = 300
_ITEM_TEXT = ("title", "description", "brand")
# The catalog slice an export hands to training and evaluation: item_id, sid_text, title, brand, domain.
CATALOG_FILE = "catalog.parquet"


@dataclass(frozen=True)
class Catalog:
    """Items as a polars frame with :data:`ITEM_SCHEMA` columns, plus the SID dialect they came in.

    SIDs are integer codes (``sid``, null for items without one); text forms are produced with
    ``dialect`` only when needed, so the same catalog serves any model vocabulary.
    """

    items: pl.DataFrame
    dialect: SidDialect = field(default=DEFAULT_DIALECT)
    text_edits: dict[str, int] = field(default_factory=dict)  # what loading changed in item text (normalise_text), per kind

    def __post_init__(self) -> None:
        missing = set(ITEM_SCHEMA) - set(self.items.columns)
        if missing:
            raise ValueError(f"catalog frame lacks columns {sorted(missing)}")

    @classmethod
    def from_sid_text(cls, frame: pl.DataFrame, dialect: SidDialect | None = None) -> Catalog:
        """A catalog from rows of ``item_id``, ``sid_text`` and any other item columns (the store's catalog table, an
        export's ``catalog.parquet``); the columns it lacks are empty, the dialect is the SIDs' own unless given."""
        parsed = parse_sid_values(frame["sid_text"].to_list())
        items = frame.with_columns(sid=parsed.codes)
        items = items.with_columns(pl.lit(None, dtype).alias(name) for name, dtype in ITEM_SCHEMA.items() if name not in items.columns)
        return cls(items.select(list(ITEM_SCHEMA)), dialect or parsed.dialect)

    def __len__(self) -> int:
        return self.items.height

    @property
    def levels(self) -> int | None:
        """Number of SID levels (None when no item has a SID)."""
        lengths = self.items["sid"].list.len().drop_nulls().unique()
        return int(cast(int, lengths.max())) if lengths.len() else None

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level, taken as the largest code seen plus one."""
        if self.levels is None:
            return []
        maxima = self.items.select([pl.col("sid").list.get(i, null_on_oob=True).max().alias(str(i))
                                    for i in range(self.levels)])
        return [int(v) + 1 for v in maxima.row(0)]

    def sid_grammar(self) -> tuple[str, int]:
        """One SID of this catalog as a bounded regular expression (its dialect, its levels, and no more digits per code
        than its largest code has: structured outputs hold an open answer to it), and the longest text it matches."""
        sizes = self.codebook_sizes
        if not sizes:
            return self.dialect.pattern(), 0
        digits = len(str(max(sizes) - 1))
        return self.dialect.pattern(self.levels, digits), len(self.dialect.format([10**digits - 1] * len(sizes)))

    def sid_text(self, dialect: SidDialect | None = None) -> pl.Series:
        """Each item's SID as text in ``dialect`` (the catalog's own by default)."""
        levels = self.levels
        if levels is None:
            return pl.Series("sid_text", [None] * len(self), dtype=pl.Utf8)
        dialect = dialect or self.dialect
        return self.items.select(dialect.format_column(pl.col("sid"), levels).alias("sid_text")).to_series()

    def collisions(self) -> pl.DataFrame:
        """SIDs shared by more than one item: ``sid_text``, ``item_ids``, ``n``."""
        return (
            self.items.with_columns(sid_text=self.sid_text())
            .filter(pl.col("sid").is_not_null())
            .group_by("sid_text")
            .agg(item_ids=pl.col("item_id").sort(), n=pl.len())
            .filter(pl.col("n") > 1)
            .sort(["n", "sid_text"], descending=[True, False])
        )

    def collision_summary(self) -> dict[str, float | int]:
        with_sid = int(self.items["sid"].is_not_null().sum())
        groups = self.collisions()
        items_in = int(groups["n"].sum()) if groups.height else 0
        distinct = with_sid - items_in + groups.height
        return {
            "items_with_sid": with_sid,
            "distinct_sids": distinct,
            "collision_groups": groups.height,
            "items_in_collisions": items_in,
            "collision_rate": (with_sid - distinct) / with_sid if with_sid else 0.0,
        }

    def lookup(self, sids: Iterable[str]) -> pl.DataFrame:
        """Validate SID strings against the catalog: ``text``, ``status`` (ok/malformed/unknown), ``item_ids``."""
        texts = list(sids)
        parsed = parse_sid_values(texts, empty_is_error=True)
        asked = pl.DataFrame({"text": pl.Series(texts, dtype=pl.Utf8), "codes": parsed.codes, "error": parsed.errors})
        known = self.items.group_by("sid").agg(item_ids=pl.col("item_id").sort()).rename({"sid": "codes"})
        return asked.join(known, on="codes", how="left", maintain_order="left").with_columns(
            status=pl.when(pl.col("error").is_not_null())
            .then(pl.lit("malformed"))
            .when(pl.col("item_ids").is_null())
            .then(pl.lit("unknown"))
            .otherwise(pl.lit("ok"))
        ).drop("codes")

    def with_sids(self, item_ids: Sequence[str], codes: np.ndarray, dialect: SidDialect | None = None) -> Catalog:
        """A copy whose SIDs are replaced by ``codes`` (one row per id in ``item_ids``)."""
        new = pl.DataFrame({"item_id": list(item_ids), "sid": codes.astype(np.int32).tolist()},
                           schema={"item_id": pl.Utf8, "sid": pl.List(pl.Int32)})
        items = self.items.drop("sid").join(new, on="item_id", how="left", maintain_order="left")
        return Catalog(items.select(list(ITEM_SCHEMA)), dialect or self.dialect, self.text_edits)

    def text(self, fields: Sequence[str] = TEXT_FIELDS, max_chars: int = 1000) -> pl.Series:
        """One text per item for embedding: the chosen fields joined, empty ones skipped."""
        parts = [pl.col(f).fill_null("").str.strip_chars() for f in fields]
        return self.items.select(
            pl.concat_list(parts).list.eval(pl.element().filter(pl.element() != "")).list.join(". ").str.slice(0, max_chars)
        ).to_series().alias("text")


def normalise_text(items: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Item text made safe for every stage (see MAX_TITLE_CHARS above); returns the items and how many of them had
    their text normalised (of which with invisible characters removed), their angle brackets neutralised, their title cut."""
    safe = {c: plain_text(pl.col(c)) for c in _ITEM_TEXT}
    bracketed = {c: e.str.replace_all("<", "\u2039", literal=True).str.replace_all(">", "\u203a", literal=True) for c, e in safe.items()}
    title = bracketed["title"]
    cut = pl.when(title.str.len_chars() > MAX_TITLE_CHARS).then(title.str.slice(0, MAX_TITLE_CHARS - 1) + "\u2026").otherwise(title)
    counted = items.select(
        normalised=pl.any_horizontal([safe[c].ne_missing(pl.col(c)) for c in _ITEM_TEXT]).sum(),
        invisible_removed=pl.any_horizontal([pl.col(c).str.contains(INVISIBLE).fill_null(False) for c in _ITEM_TEXT]).sum(),
        brackets_neutralised=pl.any_horizontal([bracketed[c].ne_missing(safe[c]) for c in _ITEM_TEXT]).sum(),
        titles_cut=(title.str.len_chars() > MAX_TITLE_CHARS).sum())
    edits = {name: int(value) for name, value in counted.row(0, named=True).items() if value}
    return items.with_columns(cut.alias("title"), bracketed["description"].alias("description"), bracketed["brand"].alias("brand")), edits


def validate_items(frame: pl.DataFrame, file: str, location: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Split raw item rows into good rows and rejects (missing id, duplicate id, bad SID length); good rows
    have their text made safe (:func:`normalise_text`, whose counts come third) and their titles and brands on one line.

    ``frame`` has the catalog columns plus ``_row``; ``location`` renders ``_row`` for messages.
    """
    levels = frame["sid"].list.len().drop_nulls().mode()
    expected = int(levels.sort()[0]) if levels.len() else None
    checked = frame.with_columns(
        _loc=location,
        _reason=pl.when(pl.col("item_id").is_null() | (pl.col("item_id").str.strip_chars() == ""))
        .then(pl.lit("missing_item_id"))
        .when(pl.col("item_id").is_duplicated())
        .then(pl.lit("duplicate_item_id"))
        .when(pl.concat_str("title", "description", "brand", ignore_nulls=True).str.contains("\ufffd", literal=True))
        .then(pl.lit("non_utf8"))
        .when(pl.col("sid").is_not_null() & (pl.col("sid").list.len() != (expected or 0)))
        .then(pl.lit("sid_level_mismatch")),
    )
    bad = checked.filter(pl.col("_reason").is_not_null())
    details = {
        "missing_item_id": "the item has no id",
        "duplicate_item_id": "this item id appears more than once in the catalog",
        "non_utf8": "the title, description or brand holds bytes that are not UTF-8",
        "sid_level_mismatch": f"the SID has a different number of levels than most items ({expected})",
    }
    rejects = rejects_from(bad.with_columns(_record=pl.col("item_id")), file, details)
    # titles and brands are one-line fields (numbered histories, the CoT, review fields): runs of white space,
    # newlines included, become one space here, once, for every stage
    good, edits = normalise_text(checked.filter(pl.col("_reason").is_null()).select(list(ITEM_SCHEMA)))
    good = good.with_columns(pl.col(*TEXT_FIELDS).str.replace_all(r"\s+", " ").str.strip_chars())
    return good, rejects, edits
