"""Loaders: the MiniOneRec layout and generic parquet / CSV / JSONL tables with a column mapping.

Interactions stay lazy (polars LazyFrame) so a file with tens of millions of events is scanned,
validated and aggregated by polars' engine, never turned into Python objects.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from recot.config import load_config
from recot.data.behaviours import INTERACTION_SCHEMA, PERIOD_SPAN, interactions_from_windows, sequences
from recot.data.catalog import ITEM_SCHEMA, Catalog, validate_items
from recot.data.rejects import REJECT_SCHEMA, empty_rejects, rejects_from, settle
from recot.errors import DataError
from recot.formats.sid import DEFAULT_DIALECT, SidDialect, parse_sid_values
from recot.io import read_json_object, row_location, scan_table

ITEM_REQUIRED = ("item_id", "title")
INTERACTION_REQUIRED = ("user_id", "item_id", "ts")


class TableSource(BaseModel):
    """A table file and how its columns map onto recot's names (``{recot_name: file_column}``)."""

    model_config = ConfigDict(extra="forbid")
    path: Path
    columns: dict[str, str] = {}
    categories_separator: str = "|"


class DatasetConfig(BaseModel):
    """A dataset described by a TOML/YAML file: items, interactions, optional temporal boundaries."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    items: TableSource
    interactions: TableSource
    valid_start: int | None = None
    test_start: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A catalog plus its interactions, with what was rejected on the way in."""

    name: str
    catalog: Catalog
    interactions: pl.LazyFrame  # INTERACTION_SCHEMA columns
    rejects: pl.DataFrame = field(default_factory=empty_rejects)
    clock: Literal["epoch_seconds", "logical"] = "epoch_seconds"
    boundaries: dict[str, int] = field(default_factory=dict)  # e.g. valid_start, test_start on ``ts``

    def sequences(self) -> pl.LazyFrame:
        return sequences(self.interactions)

    def item_domains(self) -> dict[str, str]:
        """Each item's domain: the one its events carry most often (ties: the first by name). Empty without a domain column."""
        domains = (self.interactions.filter(pl.col("domain").is_not_null()).group_by("item_id")
                   .agg(pl.col("domain").mode().sort().first()).collect())
        return dict(zip(domains["item_id"].to_list(), domains["domain"].to_list()))


def load_dataset(path: str | Path, lenient: bool = False) -> Dataset:
    """Load a MiniOneRec folder or a dataset config file (.toml, .yaml, .yml)."""
    path = Path(path)
    if path.is_dir():
        return load_minionerec(path, lenient)
    if path.suffix in {".toml", ".yaml", ".yml"}:
        config = load_config(DatasetConfig, path)  # resolves the file's relative paths from its folder, once
        return load_from_config(config.model_copy(update={"name": config.name or path.stem}), lenient=lenient)
    raise DataError(path, "not a dataset", "pass a MiniOneRec folder (items.json, sids.json, *.csv) or a dataset config file")


def load_from_config(config: DatasetConfig, base_dir: Path | None = None, lenient: bool = False) -> Dataset:
    """A dataset from its config; ``base_dir`` resolves relative table paths (None: they are resolved already, as
    :func:`recot.config.load_config` does for a config file)."""
    base = base_dir or Path()
    items_src = config.items.model_copy(update={"path": base / config.items.path})
    events_src = config.interactions.model_copy(update={"path": base / config.interactions.path})
    catalog, item_rejects = load_items(items_src, lenient)
    interactions, event_rejects = scan_interactions(events_src, catalog.items["item_id"], lenient)
    bounds = {k: v for k, v in (("valid_start", config.valid_start), ("test_start", config.test_start)) if v is not None}
    return Dataset(config.name or "dataset", catalog, interactions,
                   pl.concat([item_rejects, event_rejects]), "epoch_seconds", bounds)


def _mapped(lf: pl.LazyFrame, source: TableSource, known: dict[str, pl.DataType], required: tuple[str, ...],
            fix: str | None = None) -> pl.LazyFrame:
    """Rename source columns to recot names, failing with the file's own columns if one is missing; ``fix`` replaces
    the advice to map the column in a dataset config (a MiniOneRec file has no config)."""
    available = [c for c in lf.collect_schema().names() if c != "_row"]  # _row is recot's line number, not the file's
    unknown = set(source.columns) - set(known)
    if unknown:
        raise DataError(source.path, f"column mapping names unknown fields {sorted(unknown)}",
                        f"map only recot fields: {', '.join(known)}")
    rename = {source.columns.get(name, name): name for name in known if source.columns.get(name, name) in available}
    missing = [name for name in required if name not in rename.values()]
    if missing:
        name = missing[0]
        wanted = source.columns.get(name, name)
        raise DataError(
            source.path,
            f"missing column {wanted!r}" + (f" (recot's {name!r})" if wanted != name else "") + f"; the file has {available[:12]}",
            fix or f"rename the column, or map it in the dataset config: columns = {{ {name} = \"<your column>\" }}",
        )
    return lf.select("_row", *[pl.col(src).alias(dst) for src, dst in rename.items()])


def load_items(source: TableSource, lenient: bool = False) -> tuple[Catalog, pl.DataFrame]:
    """A catalog from a parquet / CSV / JSONL file; SIDs may be text in any dialect or integer lists."""
    raw = _mapped(scan_table(source.path, lenient), source, ITEM_SCHEMA, ITEM_REQUIRED).collect()
    schema = raw.schema
    text_cols = [c for c in ("title", "description", "brand") if c in raw.columns]
    raw = raw.with_columns(pl.col(text_cols).cast(pl.Utf8))
    if "categories" in raw.columns and schema["categories"] == pl.Utf8:
        raw = raw.with_columns(pl.col("categories").str.split(source.categories_separator))
    if "attributes" in raw.columns and isinstance(schema["attributes"], pl.Struct):
        raw = raw.with_columns(pl.col("attributes").struct.json_encode())
    sid_rejects, dialect = empty_rejects(), DEFAULT_DIALECT
    if "sid" in raw.columns and schema["sid"] == pl.Utf8:
        raw, sid_rejects, dialect = _parse_sid_column(raw, source.path, row_location(source.path))
    frame = raw.with_columns(
        [pl.lit(None, dtype=dt).alias(c) for c, dt in ITEM_SCHEMA.items() if c not in raw.columns]
    ).with_columns([pl.col(c).cast(dt) for c, dt in ITEM_SCHEMA.items()])
    good, rejects, edits = validate_items(frame, str(source.path), row_location(source.path))
    rejects = settle(pl.concat([sid_rejects, rejects]), lenient, "fix or remove the listed item rows")
    if good.is_empty():
        raise DataError(source.path, "no usable items", "check the column mapping and the file's content")
    return Catalog(good, dialect, edits), rejects


def _parse_sid_column(raw: pl.DataFrame, path: Path, location: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame, SidDialect]:
    """Parse SID text per item; malformed ones become rejects and their rows leave the catalog."""
    parsed = parse_sid_values(raw["sid"].to_list())
    flagged = raw.with_columns(sid=parsed.codes, _detail=parsed.errors, _loc=location)
    bad = flagged.filter(pl.col("_detail").is_not_null()).with_columns(
        _record=pl.col("item_id"), _reason=pl.lit("malformed_sid"))
    good = flagged.filter(pl.col("_detail").is_null()).drop("_detail", "_loc")
    return good, rejects_from(bad, str(path), {}), parsed.dialect


def scan_interactions(source: TableSource, item_ids: pl.Series, lenient: bool = False) -> tuple[pl.LazyFrame, pl.DataFrame]:
    """Interactions as a lazy frame with :data:`INTERACTION_SCHEMA`, and the rejected rows.

    Timestamps may be integers (epoch seconds), datetimes or date-time text. Rows with a missing
    value, an unparseable time, text that is not UTF-8 or an item the catalog lacks are rejected.
    """
    lf = _mapped(scan_table(source.path, lenient), source, INTERACTION_SCHEMA, INTERACTION_REQUIRED)
    ts_type = lf.collect_schema()["ts"]
    ts = pl.col("ts")
    if ts_type.is_temporal():
        ts = ts.dt.epoch("s")
    elif ts_type == pl.Utf8:
        ts = pl.coalesce(ts.cast(pl.Int64, strict=False), ts.str.to_datetime(strict=False).dt.epoch("s"))
    names = lf.collect_schema().names()
    lf = lf.with_columns(
        pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8), ts=ts.cast(pl.Int64),
        pos=pl.col("_row").cast(pl.Int64),
        event=pl.col("event").cast(pl.Utf8) if "event" in names else pl.lit(None, dtype=pl.Utf8),
        domain=pl.col("domain").cast(pl.Utf8) if "domain" in names else pl.lit(None, dtype=pl.Utf8),
    )
    reason = (
        pl.when(pl.col("user_id").is_null() | pl.col("item_id").is_null()).then(pl.lit("missing_value"))
        .when(pl.col("ts").is_null()).then(pl.lit("bad_timestamp"))
        .when(pl.concat_str("user_id", "item_id").str.contains("\ufffd", literal=True)).then(pl.lit("non_utf8"))
        .when(~pl.col("item_id").is_in(item_ids.implode())).then(pl.lit("unknown_item"))
    )
    flagged = lf.with_columns(_reason=reason)
    bad = flagged.filter(pl.col("_reason").is_not_null()).select(
        _loc=row_location(source.path), _record=pl.format("user {} item {}", "user_id", "item_id"), _reason="_reason"
    ).collect()
    details = {
        "missing_value": "user_id or item_id is empty",
        "bad_timestamp": "the timestamp is missing or not a number / date-time",
        "non_utf8": "the ids hold bytes that are not UTF-8",
        "unknown_item": "the item id is not in the catalog",
    }
    rejects = settle(rejects_from(bad, str(source.path), details), lenient,
                     "fix the listed rows, or add the missing items to the catalog")
    good = flagged.filter(pl.col("_reason").is_null()).select(list(INTERACTION_SCHEMA))
    return good, rejects


MINIONEREC_SPLITS = {"valid": 1, "test": 2}


def load_minionerec(root: Path, lenient: bool = False) -> Dataset:
    """The MiniOneRec layout: items.json, sids.json and window CSVs (valid.csv, test.csv).

    The CSVs' sliding windows are merged back into per-user sequences; events get a logical clock
    (no timestamps exist) whose period boundaries reproduce the benchmark's own valid/test split.
    """
    items_path, sids_path = root / "items.json", root / "sids.json"
    catalog, rejects = _minionerec_catalog(items_path, sids_path, lenient)
    windows, window_rejects = [], [rejects]
    for split, period in MINIONEREC_SPLITS.items():
        path = root / f"{split}.csv"
        if path.exists():
            frame, bad = _minionerec_windows(path, period, catalog, set(rejects["record"].to_list()), lenient)
            windows.append(frame)
            window_rejects.append(bad)
    if not windows:
        raise DataError(root, "no window files (valid.csv, test.csv)", "add the MiniOneRec CSV files to the folder")
    interactions, conflicts = interactions_from_windows(pl.concat(windows), str(root / "{valid,test}.csv"))
    conflicts = settle(conflicts, lenient, "check that each user's rows are consecutive windows of one sequence in every split "
                                           "file, or remove the listed users' rows from all of them")
    bounds = {f"{split}_start": period * PERIOD_SPAN for split, period in MINIONEREC_SPLITS.items()}
    return Dataset(root.name, catalog, interactions.lazy(), pl.concat([*window_rejects, conflicts]), "logical", bounds)


def _description_text(raw: object) -> str | None:
    """MiniOneRec descriptions are Python-list literals stored as strings; join their parts."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    if raw.startswith("["):
        try:
            parts = ast.literal_eval(raw)
            return " ".join(str(p) for p in parts) if isinstance(parts, list) else raw
        except (ValueError, SyntaxError):
            return raw
    return raw


def _minionerec_catalog(items_path: Path, sids_path: Path, lenient: bool) -> tuple[Catalog, pl.DataFrame]:
    (items, items_repeated, items_bad), (sids, sids_repeated, sids_bad) = read_json_object(items_path, lenient), read_json_object(sids_path, lenient)
    parsed = parse_sid_values([sids.get(item_id) for item_id in items])
    problems = [(path, key, "duplicate_id", f"the key {key!r} appears more than once in {path.name}; "
                 "which value holds is ambiguous") for path, keys in ((items_path, items_repeated), (sids_path, sids_repeated))
                for key in keys]
    problems += [(path, key, "non_utf8", f"the record holds bytes that are not UTF-8 in {path.name}")
                 for path, keys in ((items_path, items_bad), (sids_path, sids_bad)) for key in keys]
    ambiguous = set(items_repeated) | set(sids_repeated) | set(items_bad) | set(sids_bad)
    rows: list[dict] = []
    for (item_id, rec), codes, error in zip(items.items(), parsed.codes, parsed.errors):
        if item_id in ambiguous:
            continue
        if not isinstance(rec, dict):
            problems.append((items_path, item_id, "bad_record", "the item is not a JSON object"))
            continue
        if error is not None:
            problems.append((sids_path, item_id, "malformed_sid", error))
            continue
        categories = rec.get("categories") or []
        rows.append({
            "item_id": str(item_id), "title": rec.get("title"), "description": _description_text(rec.get("description")),
            "brand": rec.get("brand") or None,
            "categories": categories if isinstance(categories, list) else [str(categories)],
            "attributes": None, "sid": codes, "_row": len(rows),
        })
    problems += [(sids_path, i, "unknown_item", "the SID file names an item that items.json lacks")
                 for i in sids.keys() - items.keys()]
    bad = pl.DataFrame(
        [{"file": str(f), "location": f"record {i!r}", "record": str(i), "reason": r, "detail": d} for f, i, r, d in problems],
        schema=REJECT_SCHEMA,
    )
    frame = pl.DataFrame(rows, schema={**ITEM_SCHEMA, "_row": pl.Int64})
    good, rejects, edits = validate_items(frame, str(items_path), pl.format("record '{}'", pl.col("item_id")))
    # a SID's shape is sids.json's, whichever check found it wrong
    rejects = rejects.with_columns(file=pl.when(pl.col("reason") == "sid_level_mismatch").then(pl.lit(str(sids_path))).otherwise("file"))
    rejects = settle(pl.concat([bad, rejects]), lenient, "fix or remove the listed items")
    if len(parsed.dialects) > 1:
        raise DataError(sids_path, f"SIDs mix dialects {sorted(map(str, parsed.dialects))}",
                        "convert them to one dialect first (recot sid convert)")
    return Catalog(good, parsed.dialect, edits), rejects


def _minionerec_windows(path: Path, period: int, catalog: Catalog, dropped: set[str],
                        lenient: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One period's windows; ``dropped``: item ids rejected from the catalog (lenient mode), named as such."""
    source = TableSource(path=path)
    need: dict[str, pl.DataType] = {"user_id": pl.Utf8(), "history_item_id": pl.Utf8(), "item_id": pl.Utf8(), "item_sid": pl.Utf8()}
    raw = _mapped(scan_table(path, lenient), source, need, ("user_id", "history_item_id", "item_id", "item_sid"),
                  "a MiniOneRec CSV has the columns user_id, history_item_id, item_id and item_sid: restore the missing one").collect()
    known = catalog.items["item_id"].implode()
    sid_of = catalog.items.select("item_id", _cat_sid=catalog.sid_text())
    checked = (
        raw.with_columns(
            _loc=row_location(path),
            history=pl.col("history_item_id").str.extract_all(r"\d+"),
            _hist_ok=pl.col("history_item_id").str.contains(r"^\[\s*(\d+\s*,\s*)*\d*\s*\]$"),
        )
        .join(sid_of, on="item_id", how="left", maintain_order="left")
        .with_columns(
            _reason=pl.when(pl.col("user_id").is_null() | pl.col("item_id").is_null()).then(pl.lit("missing_value"))
            .when(~pl.col("_hist_ok").fill_null(False)).then(pl.lit("malformed_history"))
            .when(pl.concat_str("user_id", "history_item_id", "item_id").str.contains("\ufffd", literal=True))
            .then(pl.lit("non_utf8"))
            .when(~pl.col("item_id").is_in(known) | ~pl.col("history").list.eval(pl.element().is_in(known)).list.all())
            .then(pl.lit("unknown_item"))
            .when(pl.col("item_sid").is_not_null() & (pl.col("item_sid") != pl.col("_cat_sid")))
            .then(pl.lit("sid_mismatch"))
        )
    )
    details = {
        "missing_value": "user_id or item_id is empty",
        "malformed_history": "history_item_id is not a list of item ids like [12, 7, 30]",
        "non_utf8": "the row holds bytes that are not UTF-8",
        "unknown_item": "the row names an item id that items.json lacks",
        "sid_mismatch": "item_sid differs from the item's SID in sids.json",
    }
    # an unknown item is named: the target and every history id the catalog lacks, or rejected itself
    ids = pl.concat_list(pl.col("history"), pl.concat_list("item_id"))
    missing = ids.list.eval(pl.element().filter(~pl.element().is_in(known))).list.unique(maintain_order=True)
    rejected = pl.lit(sorted(dropped), dtype=pl.List(pl.Utf8))
    bad = checked.filter(pl.col("_reason").is_not_null()).with_columns(_missing=missing).with_columns(
        _record=pl.format("user {} item {}", "user_id", "item_id"),
        _detail=pl.when(pl.col("_reason") != "unknown_item").then(None)
        .when(pl.col("_missing").list.set_difference(rejected).list.len() == 0)
        .then(pl.format("item id(s) {} were rejected from the catalog (see their own rejects)", pl.col("_missing").list.join(", ")))
        .otherwise(pl.format("items.json lacks item id(s) {}", pl.col("_missing").list.set_difference(rejected).list.join(", "))))
    rejects = settle(rejects_from(bad, str(path), details), lenient,
                     "fix the listed rows, or remove each listed user's rows from every split file (train, valid and test "
                     "hold overlapping windows of one sequence: a row removed alone leaves the others disagreeing)")
    # a user's windows span the split files: a location names its file, for the checks that read them together
    good = checked.filter(pl.col("_reason").is_null()).select(
        "user_id", "history", "item_id", period=pl.lit(period), _order="_row", _loc=pl.lit(f"{path.name} ") + pl.col("_loc"))
    return good, rejects
