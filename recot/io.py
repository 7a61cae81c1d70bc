"""File helpers shared by the loaders and writers: format detection, UTF-8 checks, atomic writes."""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import polars as pl

from recot.errors import DataError

TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def table_format(path: Path) -> str:
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(path, f"unknown table format {path.suffix!r}", f"use one of {sorted(TABLE_FORMATS)}")
    return fmt


def require_nonempty(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found", "check the path (relative paths are resolved from the config file)")
    if path.is_file() and path.stat().st_size == 0:
        wanted = "a header and at least one record" if path.suffix.lower() in (".csv", ".tsv") else "at least one record"
        raise DataError(path, "the file is empty", f"point to a file with {wanted}")


def first_bad_utf8_line(path: Path, chunk_size: int = 1 << 24) -> int | None:
    """1-based line of the first invalid UTF-8 byte, streaming so a large file is never held whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return newlines + chunk[: exc.start].count(b"\n") + 1
            newlines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return newlines + 1
    return None


def scan_table(path: Path, lenient: bool = False) -> pl.LazyFrame:
    """A lazy scan of a parquet, CSV/TSV or JSONL file with a record index column ``_row``.

    Text files are checked for UTF-8 first; in lenient mode a CSV is read lossily and the
    caller rejects rows that carry U+FFFD (JSONL cannot be read lossily and always raises).
    """
    require_nonempty(path)
    fmt = table_format(path)
    if fmt == "parquet":
        return pl.scan_parquet(path).with_row_index("_row")
    bad = first_bad_utf8_line(path)
    if bad is not None and (not lenient or fmt == "jsonl"):
        raise DataError(
            path, "text is not valid UTF-8", "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            location=f"line {bad}",
        )
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=10_000).with_row_index("_row")
    return pl.scan_csv(
        path,
        separator="\t" if path.suffix.lower() == ".tsv" else ",",
        encoding="utf8-lossy" if bad is not None else "utf8",
        infer_schema=False,
    ).with_row_index("_row")


def row_location(path: Path) -> pl.Expr:
    """Human location of a record from ``_row``: a text line (header counted) or a parquet row."""
    fmt = table_format(path)
    if fmt == "parquet":
        return pl.format("row {}", pl.col("_row"))
    offset = 2 if fmt == "csv" else 1
    return pl.format("line {}", pl.col("_row") + offset)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``target`` (file or directory), on failure it vanishes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def read_json_object(path: Path, lenient: bool = False) -> tuple[dict, list[str], list[str]]:
    """A non-empty JSON object from a UTF-8 file (a byte-order mark is allowed), the keys its top level repeats (JSON
    parsers keep the last value silently; recot reports them), and the keys whose records hold bytes that are not UTF-8.
    Strict mode raises on the first such byte, naming its line and record; lenient mode returns them for the caller to
    set aside with their reason. Errors name the line."""
    require_nonempty(path)
    repeated: list[list[str]] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        counts = Counter(key for key, _ in items)
        repeated.append([key for key, count in counts.items() if count > 1])
        return dict(items)

    # utf-8-sig: a byte-order mark (as some Windows editors write) is read past, as most JSON readers do; a byte that is
    # not UTF-8 becomes a lone surrogate (U+DC80-U+DCFF), which only such bytes can produce, so its record can be found
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg}", "fix the JSON syntax", location=f"line {exc.lineno}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(path, "expected a non-empty JSON object keyed by item id", "write {\"<item id>\": {...}, ...}")
    first = _UNDECODED.search(text)
    undecodable = [key for key, value in data.items() if first and _UNDECODED.search(json.dumps([key, value], ensure_ascii=False))]
    if first and not lenient:
        record = f" (record {undecodable[0]!r})" if undecodable else ""
        raise DataError(path, f"text is not valid UTF-8{record}", "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), "
                        "or pass --lenient to set such records aside", location=f"line {text.count(chr(10), 0, first.start()) + 1}")
    return data, repeated[-1], undecodable  # the outermost object is the last one the parser closes


_UNDECODED = re.compile("[\udc80-\udcff]")


def frame_of(arrow: Any) -> pl.DataFrame:
    """A polars frame of an Arrow table or record batch (``pl.from_arrow`` is typed to return a Series too)."""
    return cast(pl.DataFrame, pl.from_arrow(arrow))
