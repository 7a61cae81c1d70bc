"""SID files: write a build's output, convert a SID file from one dialect to another."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from synth.catalog import Catalog
from synth.errors import DataError, empty_rejects, settle
from synth.io import atomic_path, read_json_object, row_location, scan_table
from synth.sid import SidDialect, SidError, parse_sid


def write_sid_build(out_dir: Path, catalog: Catalog, report: dict) -> None:
    """``sids.parquet`` (item_id, sid, codes), ``sids.json`` (MiniOneRec layout) and ``report.json``, atomically."""
    frame = catalog.items.select("item_id", sid=catalog.sid_text(), codes="sid")
    tokens = {
        item: [catalog.dialect.token(level, code) for level, code in enumerate(codes)]
        for item, codes in frame.select("item_id", "codes").iter_rows()
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        frame.write_parquet(tmp / "sids.parquet")
        (tmp / "sids.json").write_text(json.dumps(tokens), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


def _codes(value: str | list) -> tuple[int, ...]:
    """Codes of a SID given as text or as a list of its tokens (MiniOneRec's sids.json)."""
    if not isinstance(value, (str, list)):
        raise SidError(f"malformed SID {value!r}: expected text or a list of tokens")
    return parse_sid("".join(value) if isinstance(value, list) else value)[0]


def convert_sid_file(source: Path, target: Path, to: SidDialect, column: str = "sid", lenient: bool = False) -> tuple[int, pl.DataFrame]:
    """Rewrite every SID of ``source`` in dialect ``to``; returns (converted count, rejects).

    A ``.json`` file is a MiniOneRec mapping ``{item_id: [tokens]}`` (or ``{item_id: "sid"}``) and
    keeps its shape; a table keeps its columns with ``column`` rewritten.
    """
    if source.suffix == ".json":
        out, problems = {}, []
        for key, value in read_json_object(source).items():
            try:
                codes = _codes(value)
                out[key] = [to.token(lvl, c) for lvl, c in enumerate(codes)] if isinstance(value, list) else to.format(codes)
            except SidError as exc:
                problems.append({"file": str(source), "location": f"record {key!r}", "record": key,
                                 "reason": "malformed_sid", "detail": str(exc)})
        rejects = settle(pl.DataFrame(problems, schema=empty_rejects().schema), lenient, "fix the listed SIDs")
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(out), encoding="utf-8")
        return len(out), rejects
    frame = scan_table(source).collect()
    if column not in frame.columns:
        raise DataError(source, f"no column {column!r}; the file has {frame.columns}", "pass --column NAME")
    converted: list[str | None] = []
    errors: list[str | None] = []
    for text in frame[column].to_list():
        new, error = None, None
        try:
            new = to.format(_codes(text))
        except SidError as exc:
            error = str(exc)
        converted.append(new)
        errors.append(error)
    flagged = frame.with_columns(_new=pl.Series(converted, dtype=pl.Utf8), _err=pl.Series(errors, dtype=pl.Utf8))
    bad = flagged.filter(pl.col("_err").is_not_null()).select(
        file=pl.lit(str(source)), location=row_location(source), record=pl.col(column).cast(pl.Utf8).fill_null(""),
        reason=pl.lit("malformed_sid"), detail="_err")
    rejects = settle(bad, lenient, "fix the listed SIDs")
    good = flagged.filter(pl.col("_err").is_null()).with_columns(pl.col("_new").alias(column)).drop("_new", "_err", "_row")
    with atomic_path(target) as tmp:
        write_table(good, tmp)
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
