"""The filesystem a sharded store lives on: a local folder, a shared filesystem, or object storage (``s3://``, ``gs://``,
``az://``: any fsspec protocol whose package is installed, e.g. ``recot[s3]``).

Paths are fsspec's pathlib (``UPath``), the layer DuckDB, pyarrow, polars and Ray already read, so a shard step opens
its files by URL as it opens a local path; credentials and endpoints come from the protocol's usual settings (for S3 the
``AWS_*`` variables, which a local Ray cluster's workers inherit and a remote one gets through its ``runtime_env``).

Object storage has no rename, no hard link and no folder. The store's steps need three things of a write, given here
for both kinds of filesystem: an output appears whole or not at all (:func:`publish`: renamed into place on a local
disk; on object storage a file is one upload, and a folder is complete when its marker is there,
:func:`published`), a file reused unchanged costs no copy through this machine (:func:`reuse`: a hard link, or a
server-side copy), and a small file DuckDB must open itself (the store's head) is worked on as a local copy
(:func:`local_copy`, :func:`editing`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from recot.errors import DataError
from recot.formats.student import sql_text
from recot.io import atomic_path

COMPLETE = "_COMPLETE"  # the last file of a folder written to object storage
Where = str | os.PathLike | UPath  # a local path or a URL


def location(path: Where) -> UPath:
    """``path`` as a UPath: a local path made absolute (every Ray worker must read the same one), a URL as given, its
    filesystem without fsspec's listings cache (other workers add and remove files: a shard's newest generation must be
    listed as it is now, not as this process last saw it)."""
    try:
        found = UPath(path)
        if is_local(found):
            return found.resolve()
        fsspec.get_filesystem_class(found.protocol)  # its package: imported here, so a missing one is named here
    except (ImportError, ValueError) as exc:
        raise DataError(str(path), f"no filesystem for this location here ({exc})",
                        "install its fsspec package (recot[s3] for s3://, gcsfs for gs://, adlfs for az://), or use a "
                        "local folder") from None
    return UPath(str(found), **{**found.storage_options, "use_listings_cache": False})


def is_local(path: Where) -> bool:
    return not isinstance(path, UPath) or path.protocol in ("", "file", "local")


def attach(con: duckdb.DuckDBPyConnection, path: Where) -> duckdb.DuckDBPyConnection:
    """``con`` able to read and write files under ``path`` (its fsspec filesystem registered once; nothing to do for a
    local path)."""
    if not is_local(path):
        fs = location(path).fs
        name = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if name not in con.list_filesystems():
            con.register_filesystem(fs)
            # each query would fetch every file's footer again, a request apiece: the store's files are written once
            # and this connection is short-lived, so what it read once holds
            con.execute("SET parquet_metadata_cache = true")
            con.execute("SET validate_external_file_cache = 'NO_VALIDATION'")
    return con


def connect(path: Where) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in memory that reads and writes under ``path``; it spills beside a local ``path`` (that disk
    holds the work), else in the system's temporary folder."""
    con = attach(duckdb.connect(), path)
    spill = Path(str(path)) / "spill" if is_local(path) else Path(tempfile.gettempdir()) / "recot-spill"
    con.execute(f"SET temp_directory = {sql_text(str(spill))}")
    return con


def read_table(path: UPath | list[UPath], columns: list[str] | None = None) -> pa.Table:
    """Parquet file(s), one table: read by Arrow's own reader from a local disk, through fsspec from elsewhere."""
    paths = path if isinstance(path, list) else [path]
    return pa.concat_tables([pq.read_table(str(p), columns=columns) if is_local(p) else
                             pq.read_table(p.path, columns=columns, filesystem=p.fs) for p in paths])


@contextmanager
def publish(target: UPath) -> Iterator[Path]:
    """A local path to write ``target`` at (a file, or a folder made there); on success it becomes ``target`` whole, on
    failure nothing of it is left. A local ``target`` is renamed into place; on object storage the file is uploaded,
    or the folder's files and then its :data:`COMPLETE` marker."""
    if is_local(target):
        with atomic_path(Path(str(target))) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix="recot-publish-") as tmp:
        local = Path(tmp) / target.name
        yield local
        if not local.is_dir():
            target.fs.put_file(str(local), target.path)
            return
        remove(target)
        for file in sorted(f for f in local.rglob("*") if f.is_file()):
            target.fs.put_file(str(file), (target / file.relative_to(local).as_posix()).path)
        (target / COMPLETE).write_bytes(b"")


def published(target: UPath) -> bool:
    """Whether :func:`publish` finished ``target``: a folder uploaded half way is not."""
    if is_local(target):
        return target.exists()
    return target.is_file() or (target / COMPLETE).exists()


def remove(path: UPath) -> None:
    """``path`` and all under it, if it is there."""
    if is_local(path):
        shutil.rmtree(str(path), ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def reuse(source: UPath, target: UPath) -> None:
    """``target`` as a copy of ``source``, a file never changed in place: a hard link on a local disk, a server-side copy
    on object storage (no byte goes through this machine)."""
    if is_local(target):
        os.link(str(source), str(target))
    else:
        target.fs.copy(source.path, target.path)


@contextmanager
def local_copy(path: UPath) -> Iterator[Path]:
    """A local path holding ``path``'s bytes, for a reader that needs a real file (DuckDB attaching a database): the path
    itself when local, else a downloaded copy that is removed afterwards."""
    if is_local(path):
        yield Path(str(path))
        return
    with tempfile.TemporaryDirectory(prefix="recot-copy-") as tmp:
        local = Path(tmp) / path.name
        path.fs.get_file(path.path, str(local))
        yield local


@contextmanager
def editing(path: UPath) -> Iterator[Path]:
    """A local path to read and change the file at ``path`` (it need not exist yet): the file itself when local; on
    object storage a downloaded copy, uploaded back when the block ends without an error (one writer at a time: the
    driver)."""
    if is_local(path):
        yield Path(str(path))
        return
    with tempfile.TemporaryDirectory(prefix="recot-edit-") as tmp:
        local = Path(tmp) / path.name
        if path.exists():
            path.fs.get_file(path.path, str(local))
        yield local
        path.fs.put_file(str(local), path.path)
