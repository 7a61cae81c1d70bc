"""SID files: write a build's output, convert a SID file from one dialect to another."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recot.data.catalog import Catalog
from recot.data.rejects import rejects_from, settle
from recot.errors import DataError
from recot.formats.sid import SidDialect, parse_sid_values
from recot.io import atomic_path, read_json_object, row_location, scan_table


def write_sid_build(out_dir: Path, catalog: Catalog, report: dict) -> None:
    """``sids.parquet`` (item_id, sid, codes), ``sids.json`` (MiniOneRec layout) and ``report.json``, atomically."""
    frame = catalog.items.select("item_id", sid=catalog.sid_text(), codes="sid")
    tokens = {
        item: catalog.dialect.token_list(codes)
        for item, codes in frame.select("item_id", "codes").iter_rows()
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        frame.write_parquet(tmp / "sids.parquet")
        (tmp / "sids.json").write_text(json.dumps(tokens), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


def convert_sid_file(source: Path, target: Path, to: SidDialect, column: str = "sid", lenient: bool = False,
                     levels: int | None = None) -> tuple[int, pl.DataFrame]:
    """Rewrite every SID of ``source`` in dialect ``to``; returns (converted count, rejects). ``levels`` is how many the
    example of the dialect shows: an example with fewer levels than the SIDs names only the dialect (prefix, markers),
    one with more promises levels the SIDs do not have and is refused (converting never adds or drops a code).

    A ``.json`` file is a MiniOneRec mapping ``{item_id: [tokens]}`` (or ``{item_id: "sid"}``) and
    keeps its shape; a table keeps its columns with ``column`` rewritten. An empty SID is rejected
    too: a conversion that silently kept it would hide a hole in the file.
    """
    if source.suffix == ".json":
        mapping, repeated, _ = read_json_object(source)  # strict: a conversion keeps every SID or fails
        if repeated:
            raise DataError(source, f"keys appear more than once: {repeated[:5]}", "keep one SID per item id")
        frame = pl.DataFrame({"_key": list(mapping), "_is_list": [isinstance(v, list) for v in mapping.values()],
                              "_row": range(len(mapping))})
        values, location, record = list(mapping.values()), pl.format("record '{}'", "_key"), pl.col("_key")
    else:
        frame = scan_table(source).collect()
        if column not in frame.columns:
            raise DataError(source, f"no column {column!r}; the file has {frame.columns}", "pass --column NAME")
        values, location, record = frame[column].to_list(), row_location(source), pl.col(column).cast(pl.Utf8)
    parsed = parse_sid_values(values, empty_is_error=True)
    flagged = frame.with_columns(_codes=parsed.codes, _detail=parsed.errors)
    bad = flagged.filter(pl.col("_detail").is_not_null()).with_columns(
        _loc=location, _record=record, _reason=pl.lit("malformed_sid"))
    rejects = settle(rejects_from(bad, str(source), {}), lenient, "fix the listed SIDs")
    good = flagged.filter(pl.col("_detail").is_null())
    found = sorted(set(good["_codes"].list.len().to_list()))
    if levels is not None and found and levels > max(found):
        raise DataError(source, f"its SIDs have {max(found)} levels, the example given has {levels}",
                        f"give an example SID with at most {max(found)} levels in the target dialect: converting changes how "
                        "codes are written, never how many there are")
    with atomic_path(target) as tmp:
        if source.suffix == ".json":
            out = {key: to.token_list(codes) if is_list else to.format(codes)
                   for key, is_list, codes in good.select("_key", "_is_list", "_codes").iter_rows()}
            tmp.write_text(json.dumps(out), encoding="utf-8")
        else:
            texts = pl.Series(column, [to.format(codes) for codes in good["_codes"]], dtype=pl.Utf8)
            write_table(good.with_columns(texts).drop("_codes", "_detail", "_row"), tmp)
    return good.height, rejects


def write_table(frame: pl.DataFrame, path: Path) -> None:
    """Write a frame in the format its file name says (parquet, csv, jsonl)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.write_parquet(path)
    elif suffix in {".csv", ".tsv"}:
        frame.write_csv(path, separator="\t" if suffix == ".tsv" else ",")
    elif suffix in {".jsonl", ".ndjson"}:
        frame.write_ndjson(path)
    else:
        raise DataError(path, f"unknown table format {suffix!r}", "use .parquet, .csv, .tsv or .jsonl")
