"""A curation store as Parquet shards under one folder, curated shard by shard, in this process or as Ray tasks.

One DuckDB file is one node's limit: the step that has to see every trace (dedup) meets it first. A sharded
store keeps each trace in the shard its id names (:func:`recot.curation.store.shard_of`), so a shard is
curated alone by the very code a one-node store runs, and only dedup looks across shards
(:mod:`recot.curation.sharded_dedup`). ``ROOT`` is a local folder, a shared filesystem or object storage
(:mod:`recot.curation.shard_fs`). Its layout:

- ``sharded.json``: the number of shards, fixed when the store is created;
- ``head.duckdb``: a one-node :class:`Store` without traces: the catalog, task declarations, meta (split, SID
  dialect, rules config) and set-aside counts; small, and read by every shard step;
- ``shards/00007/g000003/``: the current generation of shard 7, one Parquet file per table of
  :data:`SHARD_TABLES`, complete when its ``DONE`` file exists.

A step on a shard loads the head and the shard tables it reads into a store in memory, runs the one-node step on
it (``Store.ingest``, ``run_rules``, ...) and writes the tables it changed as the shard's next generation (the
others linked unchanged), then removes the old one. A step killed half way leaves the shard as it was, so the task
Ray retries redoes only that shard, and a rerun skips no work and repeats none. Readers (the funnel, export)
see the head with every shard's tables over it (:meth:`ShardedStore.view`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from upath import UPath

from recot.curation import rules
from recot.curation.rules import RulesConfig
from recot.curation.shard_fs import Where, attach, editing, local_copy, location, publish, published, remove, reuse
from recot.curation.store import SHARDED_MARKER as MARKER
from recot.curation.store import IngestReport, Store, check_traces_file, split_rows
from recot.errors import DataError
from recot.formats.student import sql_text

HEAD = "head.duckdb"
DONE = "DONE"
SHARD_TABLES = ("traces", "verdicts", "scores", "dup_clusters", "ingest_rejects")

# A shard step: (the shard as a one-node store, its index, the shard count, the step's arguments) -> a JSON-able result
Step = Callable[[Store, int, int, dict], Any]


def is_sharded(path: Where) -> bool:
    return (location(path) / MARKER).is_file()


@dataclass(frozen=True)
class ShardedStore:
    """The sharded store at ``root``; :meth:`create` makes one, :meth:`open` reads one."""

    root: UPath
    shards: int

    @classmethod
    def create(cls, where: Where, shards: int) -> ShardedStore:
        """A new empty store of ``shards`` shards, or the one already at ``where`` if it has as many."""
        root = location(where)
        if is_sharded(root):
            found = cls.open(root)
            if found.shards != shards:
                raise DataError(str(root), f"the store has {found.shards} shards, not {shards}",
                                f"drop --shards (or pass {found.shards}): a trace's shard follows from the count")
            return found
        if root.is_file() or (root.exists() and any(root.iterdir())):
            raise DataError(str(root), "a folder that is not a sharded curation store", "choose a new or empty folder for --store")
        if shards < 1:
            raise DataError("shards", f"{shards} shards", "a sharded store has at least one shard")
        root.mkdir(parents=True, exist_ok=True)
        with editing(root / HEAD) as head:
            Store(head).close()
        for index in range(shards):
            with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "empty.duckdb") as empty:
                _write_generation(empty, root / "shards" / f"{index:05d}" / "g000000")
        (root / MARKER).write_text(json.dumps({"shards": shards}))
        return cls(root, shards)

    @classmethod
    def open(cls, where: Where) -> ShardedStore:
        root = location(where)
        if not is_sharded(root):
            raise DataError(str(root), "no sharded curation store here", "create one: recot curate ingest TRACES --store DIR --shards N")
        return cls(root, int(json.loads((root / MARKER).read_text())["shards"]))

    @contextmanager
    def head(self) -> Iterator[Store]:
        """The head store, to record the catalog and what lies beside the traces (never open while shard steps run:
        they read it)."""
        with editing(self.root / HEAD) as path, Store(path) as head:
            yield head

    def generation(self, index: int) -> UPath:
        """The shard's newest complete generation (a newer one without ``DONE`` is a step that died)."""
        return self._newest(index, (self.root / "shards" / f"{index:05d}").glob(f"g*/{DONE}"))

    def generations(self) -> list[UPath]:
        """Every shard's :meth:`generation`, found in one listing (on object storage each listing is a request)."""
        by_shard: dict[str, list[UPath]] = {}
        for mark in (self.root / "shards").glob(f"*/g*/{DONE}"):
            by_shard.setdefault(mark.parent.parent.name, []).append(mark)
        return [self._newest(i, by_shard.get(f"{i:05d}", [])) for i in range(self.shards)]

    def _newest(self, index: int, marks: Iterable[UPath]) -> UPath:
        done = sorted((mark.parent for mark in marks), key=lambda g: g.name)
        if not done:
            raise DataError(str(self.root / "shards" / f"{index:05d}"), "the shard has no complete generation",
                            "the store is damaged: ingest into a new one")
        return done[-1]

    def files(self, table: str) -> list[str]:
        return [str(g / f"{table}.parquet") for g in self.generations()]

    @contextmanager
    def view(self) -> Iterator[Store]:
        """The whole store, read-only, as one :class:`Store` (a :class:`ShardedView`): a copy of the head whose shard
        tables are views over every shard's current files (the funnel, the report page and export read it as they read
        a one-node store; export takes its rows a shard at a time through :meth:`Store.slices`)."""
        with tempfile.TemporaryDirectory() as tmp:
            with local_copy(self.root / HEAD) as head:
                shutil.copy(head, Path(tmp) / HEAD)
            with ShardedView(Path(tmp) / HEAD, self) as store:
                yield store

    def run(self, step: Step, args: dict | None = None, ray: Any = None, reads: tuple[str, ...] = SHARD_TABLES,
            writes: tuple[str, ...] = ()) -> list[Any]:
        """``step`` on every shard (as a Ray task per shard when ``ray`` is the connected module), with the shard tables it
        ``reads`` loaded; when it ``writes`` some, they become the shard's next generation with the others as they were.
        The results in shard order."""
        calls = [(self.root, self.shards, index, step, args or {}, reads, writes) for index in range(self.shards)]
        return run_tasks(ray, run_step, calls)


def run_tasks(ray: Any, function: Callable[..., Any], calls: list[tuple], max_retries: int = 3) -> list[Any]:
    """``function(*call)`` for every call, in this process (``ray`` None) or as Ray tasks of one CPU, each retried up to
    ``max_retries`` times if its worker dies; the results in order."""
    if ray is None:
        return [function(*call) for call in calls]
    task = ray.remote(function).options(num_cpus=1, max_retries=max_retries, retry_exceptions=False)
    return ray.get([task.remote(*call) for call in calls])


def run_step(root: UPath, shards: int, index: int, step: Step, args: dict, reads: tuple[str, ...] = SHARD_TABLES,
             writes: tuple[str, ...] = ()) -> Any:
    """One shard through ``step``: the tables it ``reads`` loaded into an in-memory copy of the head and the step run; the tables it
    ``writes`` written back, with the rest linked unchanged, as the next generation; then the older ones removed."""
    store = ShardedStore(root, shards)
    current = store.generation(index)
    with tempfile.TemporaryDirectory(prefix=f"recot-shard-{index}-") as tmp, Store(":memory:", spill_dir=Path(tmp)) as local:
        attach(local.con, root)
        with local_copy(root / HEAD) as head:
            _copy_head(local, head)
        for table in reads:
            local.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet({sql_text(str(current / f'{table}.parquet'))})")
        result = step(local, index, shards, args)
        if not writes:
            return result
        new = current.with_name(f"g{int(current.name[1:]) + 1:06d}")
        _write_generation(local, new, writes, current)
    for old in current.parent.glob("g*"):
        if old.name != new.name:
            remove(old)
    return result


def _copy_head(local: Store, head: Path) -> None:
    """Every table of the head (catalog, tasks, meta, ...) into ``local``, read-only: shard steps on many workers read it
    at once."""
    local.con.execute(f"ATTACH {sql_text(str(head))} AS head (READ_ONLY)")
    try:
        for (table,) in local.con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'head'").fetchall():
            local.con.execute(f"DELETE FROM main.{table}")
            local.con.execute(f"INSERT INTO main.{table} SELECT * FROM head.main.{table}")
    finally:
        local.con.execute("DETACH head")


class ShardedView(Store):
    """A copy of a sharded store's head with each shard table a view over shard files: all of them, or one shard's
    while :meth:`slices` is on it. Each view is the head's empty table by name with the files, so a shard an older recot
    wrote, without a newer column, reads as NULL there."""

    def __init__(self, head: Path, sharded: ShardedStore) -> None:
        super().__init__(head)
        attach(self.con, sharded.root)
        self.sharded = sharded
        self.generations = sharded.generations()  # fixed while it reads: no step runs beside a reader
        self._over(range(sharded.shards))

    def slices(self) -> Iterator[int]:
        try:
            for index in range(self.sharded.shards):
                self._over([index])
                yield index
        finally:
            self._over(range(self.sharded.shards))

    def _over(self, indices: range | list[int]) -> None:
        head = self.scalar("SELECT current_database()")
        for table in SHARD_TABLES:
            files = ", ".join(sql_text(str(self.generations[i] / f"{table}.parquet")) for i in indices)
            self.con.execute(f"""CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM "{head}".main.{table}
                                 UNION ALL BY NAME SELECT * FROM read_parquet([{files}], union_by_name = true)""")


def _write_generation(store: Store, folder: UPath, tables: tuple[str, ...] = SHARD_TABLES, previous: UPath | None = None) -> None:
    """``tables`` of ``store`` as Parquet files in ``folder``, the other shard tables reused from ``previous``, then its
    ``DONE`` mark (a folder left by a killed step, without the mark, is replaced)."""
    remove(folder)
    folder.mkdir(parents=True, exist_ok=True)
    attach(store.con, folder)
    for table in SHARD_TABLES:
        target = folder / f"{table}.parquet"
        if table in tables or previous is None:
            store.con.execute(f"COPY {table} TO {sql_text(str(target))} (FORMAT parquet)")
        else:
            reuse(previous / target.name, target)  # a shard's files are never changed in place
    (folder / DONE).write_bytes(b"")


def ingest(store: ShardedStore, sources: list[Path], ray: Any = None) -> list[IngestReport]:
    """:meth:`Store.ingest` of every file into every shard: the head records what lies beside each file (catalog, split,
    tasks, set-aside rows) once; each file is read once, a task per few row groups, its rows written out per shard
    (:func:`split_rows`); then each shard takes its rows. The counts are summed per file."""
    sources = [Path(s).resolve() for s in sources]  # as every worker reads them
    for source in sources:
        check_traces_file(source)
    with store.head() as head:
        for source in sources:
            head.record_beside(source)
    incoming = store.root / "incoming"
    folders, calls = [], []
    for source in sources:
        stat = source.stat()
        folder = incoming / hashlib.md5(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        groups = pq.ParquetFile(source).metadata.num_row_groups
        step = max(1, math.ceil(groups / store.shards))
        calls += [(source, range(first, min(first + step, groups)), store.shards, folder) for first in range(0, groups, step)]
        folders.append(folder)
    run_tasks(ray, _split_once, calls)
    args = {"sources": [str(s) for s in sources], "folders": [str(f) for f in folders]}
    per_shard = store.run(_ingest_shard, args, ray, reads=("traces", "ingest_rejects"), writes=("traces", "ingest_rejects"))
    remove(incoming)
    return [IngestReport(str(source), *(sum(shard[i][name] for shard in per_shard) for name in ("rows", "new", "already_in_store", "rejected")))
            for i, source in enumerate(sources)]


def _split_once(source: Path, row_groups: range, shards: int, folder: UPath) -> None:
    """:func:`split_rows` of one chunk into ``folder/cNNNNN`` (skipped when it is there: a rerun of a killed ingest)."""
    target = folder / f"c{row_groups.start:05d}"
    if not published(target):
        with publish(target) as tmp:
            split_rows(source, row_groups, shards, tmp)


def _ingest_shard(local: Store, index: int, shards: int, args: dict) -> list[dict]:
    return [asdict(local.ingest(Path(source), parts=sorted(str(part) for part in location(folder).glob(f"c*/shard={index}/*.parquet"))))
            for source, folder in zip(args["sources"], args["folders"])]


def run_rules(store: ShardedStore, config: RulesConfig = RulesConfig(), ray: Any = None) -> dict[str, int]:
    """:func:`recot.curation.rules.run_rules` on every shard (a rule reads one trace, the catalog and the task
    declarations, so a shard's verdicts are the one-node verdicts of its traces); failures summed per rule."""
    per_shard = store.run(_rules_shard, {"config": config.model_dump_json()}, ray, reads=("traces", "verdicts", "scores"),
                          writes=("verdicts", "scores"))
    with store.head() as head:
        head.set_meta("rules_config", config.model_dump_json())
    return {name: sum(failed[name] for failed in per_shard) for name in per_shard[0]}


def _rules_shard(local: Store, index: int, shards: int, args: dict) -> dict[str, int]:
    return rules.run_rules(local, RulesConfig.model_validate_json(args["config"]))
