"""The curation store: one DuckDB database per project holding traces and everything decided about them.

Tables: ``traces`` (synthesis output, one row per subject and sample, keyed by ``trace_id``),
``catalog`` (the SIDs and titles rules check against), ``verdicts`` (rule, pass or fail, reason
code, detail), ``scores`` (named numbers with provenance), ``dup_clusters`` (duplicate clusters and
which trace each keeps), ``ingest_rejects`` (rows that could not
enter, with why), and ``meta`` (the schema version). Ingest is incremental: a trace already in the
store is skipped, so ingesting the same files twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recot.curation.shard_fs import is_local, location
from recot.data.catalog import CATALOG_FILE, Catalog
from recot.errors import DataError
from recot.formats.sid import DEFAULT_DIALECT, SidDialect
from recot.formats.splits import SPLIT_FILE, SplitSpec
from recot.formats.student import sql_text
from recot.formats.tasks import TASKS, TASKS_FILE, builtin_declarations
from recot.formats.traces import TRACES_SCHEMA
from recot.io import frame_of

SCHEMA_VERSION = 7
SHARDED_MARKER = "sharded.json"  # in the folder of a sharded store (recot.curation.shards)
# Tables rewritten in bulk (verdicts, scores, dup_clusters) carry no key: an index costs 3.5 s per
# million inserted rows (x12 rules at 1M traces), and their writers delete before they insert.
_UNKEYED = ("verdicts", "scores", "dup_clusters")
# version -> SQL that brings a store of that version to the next one
MIGRATIONS = {
    1: "ALTER TABLE catalog ADD COLUMN domain VARCHAR",
    2: "; ".join(f"CREATE TABLE {t}_v3 AS SELECT * FROM {t}; DROP TABLE {t}; ALTER TABLE {t}_v3 RENAME TO {t}" for t in _UNKEYED),
    # decisions per (review dataset, trace): a version-3 decision belonged to the one dataset its trace was pushed to
    3: """CREATE TABLE review_decisions_v4 (
              dataset VARCHAR, trace_id VARCHAR, decision VARCHAR, accepts INTEGER, rejects INTEGER, policy VARCHAR,
              corrected_text VARCHAR, corrected_by VARCHAR, corrected_at TIMESTAMP, PRIMARY KEY (dataset, trace_id));
          INSERT INTO review_decisions_v4
              SELECT coalesce(p.dataset, '?'), d.trace_id, d.decision, d.accepts, d.rejects, d.policy, d.corrected_text,
                     d.corrected_by, NULL
              FROM review_decisions d LEFT JOIN (SELECT trace_id, min(dataset) AS dataset FROM review_pushes GROUP BY ALL) p
                   USING (trace_id);
          DROP TABLE review_decisions; ALTER TABLE review_decisions_v4 RENAME TO review_decisions""",
    4: "ALTER TABLE traces ADD COLUMN IF NOT EXISTS popular_rank INTEGER",  # slate tasks' most-popular baseline
    5: "ALTER TABLE review_decisions ADD COLUMN IF NOT EXISTS correction_error VARCHAR",  # a correction the rules refused
    6: """ALTER TABLE traces ADD COLUMN IF NOT EXISTS reasoning VARCHAR;
          ALTER TABLE traces ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT""",  # thinking teachers' own reasoning
}
PROVENANCE = ("request_hash", "task", "status", "template", "template_hash", "teacher", "model", "params", "created_at")
REQUIRED = (*PROVENANCE, "subject_id", "sample", "output", "text")
_TRACE_COLUMNS = [f.name for f in TRACES_SCHEMA]
SCORE_SCHEMA = pa.schema([("trace_id", pa.string()), ("name", pa.string()), ("value", pa.float64()), ("provenance", pa.string())])


def _duck_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_list(arrow_type):
        return _duck_type(arrow_type.value_type) + "[]"
    return {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "double": "DOUBLE"}[str(arrow_type)]


TABLES = f"""
CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS traces (
    trace_id VARCHAR PRIMARY KEY, source VARCHAR, ingested_at TIMESTAMP DEFAULT current_timestamp,
    {', '.join(f'"{f.name}" {_duck_type(f.type)}' for f in TRACES_SCHEMA)}
);
CREATE TABLE IF NOT EXISTS catalog (item_id VARCHAR PRIMARY KEY, sid_text VARCHAR, title VARCHAR, brand VARCHAR, domain VARCHAR);
CREATE TABLE IF NOT EXISTS verdicts (trace_id VARCHAR, rule VARCHAR, passed BOOLEAN, reason VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS scores (trace_id VARCHAR, name VARCHAR, value DOUBLE, provenance VARCHAR);
CREATE TABLE IF NOT EXISTS dup_clusters (trace_id VARCHAR, cluster_id VARCHAR, kind VARCHAR, size INTEGER, keep BOOLEAN);
CREATE TABLE IF NOT EXISTS review_pushes (dataset VARCHAR, trace_id VARCHAR, content_hash VARCHAR, pushed_at TIMESTAMP,
    PRIMARY KEY (dataset, trace_id));
CREATE TABLE IF NOT EXISTS reviews (
    dataset VARCHAR, trace_id VARCHAR, reviewer VARCHAR, status VARCHAR, quality INTEGER, verdict VARCHAR,
    wrong_modules VARCHAR[], correction VARCHAR, updated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS review_decisions (
    dataset VARCHAR, trace_id VARCHAR, decision VARCHAR, accepts INTEGER, rejects INTEGER, policy VARCHAR,
    corrected_text VARCHAR, corrected_by VARCHAR, corrected_at TIMESTAMP, correction_error VARCHAR, PRIMARY KEY (dataset, trace_id)
);
CREATE TABLE IF NOT EXISTS ingest_rejects (source VARCHAR, location VARCHAR, record VARCHAR, reason VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS set_aside (source VARCHAR, listed_in VARCHAR, stage VARCHAR, reason VARCHAR, n BIGINT);
CREATE TABLE IF NOT EXISTS tasks (task VARCHAR PRIMARY KEY, source VARCHAR, cot BOOLEAN, shows_target BOOLEAN, slate BOOLEAN,
    interests BOOLEAN, student VARCHAR);
"""
# What a synthesis writes beside its traces about the rows it set aside: lenient dataset rejects, refused samples
SET_ASIDE_FILES = ("dataset-rejects.csv", "refused.parquet")
# What rules and export ask of a task's declaration (recot.formats.tasks.Task.declaration)
TASK_COLUMNS = ("task", "source", "cot", "shows_target", "slate", "interests", "student")


@dataclass(frozen=True)
class IngestReport:
    source: str
    rows: int
    new: int
    already_in_store: int
    rejected: int


class Store:
    """A DuckDB curation store at ``path`` (created on first use).

    Memory stays flat in the number of traces: DuckDB works within ``memory_limit`` (default
    ``$RECOT_MEMORY_LIMIT``, else 4GB) and spills its joins and sorts to ``spill_dir`` (``PATH.tmp``
    beside the store), where recot's own steps also stream their chunks."""

    def __init__(self, path: str | Path, memory_limit: str | None = None, spill_dir: Path | None = None) -> None:
        """``path`` ``:memory:`` (with a ``spill_dir``): a store that lives in this process, as a shard's working copy does."""
        if not is_local(location(path)):
            raise DataError(str(path), "a one-node store is one DuckDB file on this machine's disk, not a URL",
                            "keep it on a local disk, or curate a sharded store there: recot curate ingest TRACES --store URL --shards N")
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.spill_dir = spill_dir or self.path.with_name(self.path.name + ".tmp")
        try:
            self.con = duckdb.connect(str(self.path))
            self.con.execute("SET memory_limit = ?", [memory_limit or os.environ.get("RECOT_MEMORY_LIMIT", "4GB")])
        except duckdb.Error as exc:
            raise DataError(self.path, f"cannot open the store: {exc}", "point --store at a DuckDB file recot created, and give "
                            "the memory limit as DuckDB writes it (4GB, 512MB)") from None
        self.con.execute("SET temp_directory = ?", [str(self.spill_dir)])
        self.con.execute("SET enable_progress_bar = false")  # recot reports its own progress
        found = self._version()
        if found is None:
            self.con.execute(TABLES)
            self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif found in MIGRATIONS or found == SCHEMA_VERSION:
            with self.transaction():
                # IF NOT EXISTS: first adds any table the file lacks (in this version's shape), so a migration
                # always finds the tables it rewrites
                self.con.execute(TABLES)
                for version in range(found, SCHEMA_VERSION):
                    self.con.execute(MIGRATIONS[version])
                self.con.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", [str(SCHEMA_VERSION)])
        else:
            raise DataError(self.path, f"store schema version {found}, this recot uses version {SCHEMA_VERSION}",
                            "curate into a new store (traces re-ingest from their parquet files), or use the recot that made it")
        self._declare(builtin_declarations(), replace=True)  # the bundled tasks as this recot declares them

    @classmethod
    def existing(cls, path: str | Path, memory_limit: str | None = None) -> Store:
        """The store at ``path``, which must exist: every step after ingest reads a store, and a mistyped path must not
        quietly become a new, empty one."""
        where = location(path)
        if (where / SHARDED_MARKER).is_file():
            raise DataError(path, "a sharded store: this step runs on a one-node store (ingest, rules, dedup, report and export "
                            "run on a sharded one)", "curate a one-node store for it: recot curate ingest TRACES --store FILE")
        if is_local(where) and not Path(path).is_file():  # a URL is named by the constructor
            raise DataError(path, "no curation store here", "check --store (the path `recot curate ingest` created), or "
                            "create one: recot curate ingest TRACES --store PATH")
        return cls(path, memory_limit)

    def _version(self) -> int | None:
        has_meta = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchall()[0][0]
        if not has_meta:
            return None
        rows = self.con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall()
        return int(rows[0][0]) if rows else None

    def scalar(self, sql: str, params: list | None = None):
        """The first value of a query's single row (read to the end, so the connection is free again)."""
        return self.con.execute(sql, params or []).fetchall()[0][0]

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill_dir / "recot", ignore_errors=True)
        with contextlib.suppress(OSError):  # left empty by the last step: nothing beside the store but the store
            self.spill_dir.rmdir()

    def stream(self, sql: str, batch_rows: int = 1 << 18) -> Iterator[pa.RecordBatch]:
        """A query's result ``batch_rows`` at a time, so a step over every trace holds one chunk in memory.
        The connection is busy until the last batch is read: write what the chunks make to :meth:`spill`."""
        reader = self.con.sql(sql).to_arrow_reader(batch_rows)
        yield from reader

    def spill(self, name: str) -> Path:
        """A file path for a step's spilled output (removed when the store closes)."""
        folder = self.spill_dir / "recot"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def load_catalog(self, catalog: Catalog, domain: str = "default", item_domains: dict[str, str] | None = None) -> int:
        """Replace ``domain``'s items in the catalog the rules check SIDs and titles against; ``item_domains``
        (a dataset's domain column, :meth:`Dataset.item_domains`) names each item's own domain instead. A trace's
        domain is its target's (or first item's): the export mixes CoT per domain from it."""
        own = pl.DataFrame({"item_id": list(item_domains or {}), "domain": list((item_domains or {}).values())},
                           schema={"item_id": pl.Utf8, "domain": pl.Utf8})
        frame = (catalog.items.select("item_id", "title", "brand").with_columns(sid_text=catalog.sid_text())
                 .join(own, on="item_id", how="left", maintain_order="left").with_columns(pl.col("domain").fill_null(domain)))
        arrow = frame.select("item_id", "sid_text", "title", "brand", "domain").to_arrow()  # noqa: F841 - DuckDB reads it by name
        replaced = sorted(set(frame["domain"].to_list()))
        grammar = {"prefix": catalog.dialect.prefix, "begin": catalog.dialect.begin, "end": catalog.dialect.end,
                   "levels": catalog.levels}
        recorded = self.meta("sid_dialect")
        others = self.scalar(f"SELECT count(*) FROM catalog WHERE domain NOT IN ({', '.join('?' * len(replaced))})", replaced)
        if recorded and json.loads(recorded) != grammar and others:
            raise DataError(self.path, f"the catalog of domain {domain!r} writes SIDs as {grammar}, the store's other "
                            f"domains as {json.loads(recorded)}", "convert the SIDs to one dialect first (recot sid convert)")
        with self.transaction():
            self.set_meta("sid_dialect", json.dumps(grammar))
            self.con.execute(f"DELETE FROM catalog WHERE domain IN ({', '.join('?' * len(replaced))}) OR domain IS NULL", replaced)
            self.con.execute("INSERT OR REPLACE INTO catalog SELECT * FROM arrow")
        return frame.height

    def meta(self, name: str) -> str | None:
        rows = self.con.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchall()
        return rows[0][0] if rows else None

    def set_meta(self, name: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [name, value])

    def sid_dialect(self) -> SidDialect:
        """The dialect of the store's catalog, recorded when it was loaded."""
        recorded = self.meta("sid_dialect")
        if not recorded:
            return DEFAULT_DIALECT
        grammar = json.loads(recorded)
        return SidDialect(grammar["prefix"], grammar["begin"], grammar["end"])

    def catalog(self) -> Catalog:
        """The catalog as loaded into the store (ids, titles, brands, SIDs in the recorded dialect): what
        judging shows, so it never reloads the dataset for what the store holds."""
        frame = frame_of(self.con.sql("SELECT item_id, title, brand, sid_text FROM catalog ORDER BY item_id").to_arrow_table())
        return Catalog.from_sid_text(frame, self.sid_dialect())

    def sid_pattern(self) -> str:
        """The regular expression of one SID in the dialect of the store's catalog (recorded when it was loaded),
        with any number of levels: a SID of the wrong length is found, then fails the catalog lookup."""
        return self.sid_dialect().pattern()

    def split_spec(self) -> SplitSpec | None:
        """The split the store's traces were synthesised on (recorded at ingest), or None for traces
        ingested without their ``split.json``."""
        recorded = self.meta("split")
        return SplitSpec.model_validate_json(recorded) if recorded else None

    def _record_split(self, source: Path) -> None:
        """Record the split written next to ``source``; traces of two different splits never share a store."""
        found = source.parent / SPLIT_FILE
        if not found.exists():
            return
        spec, recorded = SplitSpec.load(found), self.split_spec()
        if recorded is not None and recorded != spec:
            raise DataError(source, f"synthesised on split {spec.model_dump()}, but the store holds traces of split "
                            f"{recorded.model_dump()}", "curate traces of different splits in separate stores")
        self.set_meta("split", spec.model_dump_json())

    def _record_catalog(self, source: Path) -> None:
        """A store without a catalog takes the one synthesis wrote beside ``source`` (the records lenient loading kept);
        a catalog loaded from the dataset is left as it is."""
        found = source.parent / CATALOG_FILE
        if self.scalar("SELECT count(*) FROM catalog") or not found.exists():
            return
        frame = pl.read_parquet(found)
        self.load_catalog(Catalog.from_sid_text(frame), item_domains=dict(zip(frame["item_id"], frame["domain"])))

    def _declare(self, declarations: list[dict], replace: bool = False, source: Path | None = None) -> None:
        """Record task declarations; a user task declared differently before is refused (its traces would be
        curated by two sets of rules)."""
        for d in declarations:
            row = tuple(d[c] for c in TASK_COLUMNS)
            known = self.con.execute("SELECT * FROM tasks WHERE task = ?", [d["task"]]).fetchone()
            if known and known != row and not replace:
                if d["task"] in TASKS:
                    continue  # a bundled task as an older recot declared it: this recot's declaration holds
                raise DataError(source or d["task"], f"task {d['task']} is declared {dict(zip(TASK_COLUMNS, row))}, but the store "
                                f"holds it as {dict(zip(TASK_COLUMNS, known))}", "give the changed task a new name")
            self.con.execute(f"INSERT OR REPLACE INTO tasks VALUES ({', '.join('?' * len(TASK_COLUMNS))})", row)

    def _record_tasks(self, source: Path) -> None:
        """Record the declarations written next to ``source`` (recot.formats.tasks.save_declarations)."""
        found = source.parent / TASKS_FILE
        if found.exists():
            self._declare(json.loads(found.read_text()), source=found)
        undeclared = self.con.execute(
            "SELECT DISTINCT task FROM read_parquet(?) WHERE task NOT IN (SELECT task FROM tasks)", [str(source)]).fetchall()
        if undeclared:
            raise DataError(source, f"tasks {[t for (t,) in undeclared]} are not declared: without {TASKS_FILE} beside the file the "
                            "store cannot tell which rules apply", f"keep the {TASKS_FILE} that `recot synth run` wrote next to it")

    def ingest(self, source: Path, parts: list[str] | None = None) -> IngestReport:
        """Add a synthesis output parquet; rows without provenance go to ``ingest_rejects``. The split it was
        synthesised on (``split.json`` beside it) is recorded for export and evaluation. ``parts``: the rows of
        ``source`` that belong to this shard of a sharded store, as :func:`split_rows` wrote them (its head recorded
        what lies beside the file)."""
        check_traces_file(source)
        missing_provenance = " OR ".join(f'"{c}" IS NULL' for c in PROVENANCE)
        whole = _incoming(f"read_parquet({sql_text(str(source))}, file_row_number = true)")
        if parts is None:
            incoming = whole
            self._record_catalog(source)
        elif parts:
            incoming = f"SELECT * EXCLUDE (shard) FROM read_parquet([{', '.join(sql_text(str(p)) for p in parts)}])"
        else:  # none of the file's rows is this shard's
            incoming = f"{whole} LIMIT 0"
        with self.transaction():
            if parts is None:
                self._record_others(source)
            # a view: the file is read by each statement for the columns it needs, never copied whole
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW incoming AS {incoming}")
            rows = self.scalar("SELECT count(*) FROM incoming")
            self.con.execute(f"""
                INSERT INTO ingest_rejects
                SELECT ?, location, coalesce(request_hash, '?') || ' ' || coalesce(subject_id, '?'), 'no_provenance',
                       'a provenance column is empty; only rows written by recot synth run can be curated'
                FROM incoming WHERE {missing_provenance}""", [str(source)])
            rejected = self.scalar(f"SELECT count(*) FROM incoming WHERE {missing_provenance}")
            columns = ", ".join(f'"{c}"' for c in _TRACE_COLUMNS)
            present = set(pq.read_schema(source).names)  # files of an older recot lack the newer optional columns
            values = ", ".join(f'i."{c}"' if c in present else "NULL" for c in _TRACE_COLUMNS)
            # a file that repeats a trace enters it once; the window that picks one holds every row in memory,
            # so it runs only when a cheap count finds repeats (7 of 18 s at 1M traces)
            repeats = self.scalar(f"SELECT count(*) - count(DISTINCT trace_id) FROM incoming WHERE NOT ({missing_provenance})")
            once = "QUALIFY row_number() OVER (PARTITION BY i.trace_id) = 1" if repeats else ""
            new = self.con.execute(f"""
                INSERT INTO traces (trace_id, source, {columns})
                SELECT i.trace_id, ?, {values}
                FROM incoming i ANTI JOIN traces t ON i.trace_id = t.trace_id
                WHERE NOT ({missing_provenance}) {once}""", [str(source)]).fetchall()[0][0]
        return IngestReport(str(source), rows, new, rows - rejected - new, rejected)

    def record_beside(self, source: Path) -> None:
        """Record what synthesis wrote beside ``source`` (its catalog, split, task declarations and set-aside rows)
        without its rows: the head of a sharded store does this once, its shards then take the rows."""
        check_traces_file(source)
        self._record_catalog(source)
        with self.transaction():
            self._record_others(source)

    def _record_others(self, source: Path) -> None:
        self._record_split(source)
        self._record_tasks(source)
        self._record_set_aside(source)

    def _record_set_aside(self, source: Path) -> None:
        """What the synthesis beside ``source`` set aside before any trace was written, counted by reason with the file
        that lists the rows: bad dataset records (lenient mode, ``dataset-rejects.csv``) and samples refused at the
        cut-off (``refused.parquet``). The funnel and the data card carry them, so every row read is accounted for."""
        self.con.execute("DELETE FROM set_aside WHERE source = ?", [str(source)])
        for stage, name in (("dataset", SET_ASIDE_FILES[0]), ("samples", SET_ASIDE_FILES[1])):
            listed = source.with_name(name)
            if listed.exists():
                reasons = (pl.read_csv(listed, columns=["reason"], infer_schema=False) if listed.suffix == ".csv"
                           else pl.read_parquet(listed, columns=["reason"]))["reason"].value_counts(sort=True)
                rows = [[str(source), str(listed), stage, reason, n] for reason, n in reasons.iter_rows()]
                if rows:  # a refused.parquet is written even when no sample was refused
                    self.con.executemany("INSERT INTO set_aside VALUES (?, ?, ?, ?, ?)", rows)

    def slices(self) -> Iterator[int]:
        """The store a part at a time, for a step that would otherwise hold every trace's rows at once (export's row
        building): its trace tables are that part's while each index is yielded. A one-node store is one part; a
        sharded store's view is one part a shard (:class:`recot.curation.shards.ShardedView`)."""
        yield 0

    def transaction(self) -> _Transaction:
        """BEGIN/COMMIT around a block, ROLLBACK on error."""
        return _Transaction(self.con)

    def replace_scores(self, names: Sequence[str], rows: list[dict]) -> None:
        """Replace every score named in ``names`` by ``rows`` (trace_id, name, value, provenance), in one transaction."""
        fresh = pa.Table.from_pylist(rows, schema=SCORE_SCHEMA)  # noqa: F841 - DuckDB reads it by name
        with self.transaction():
            self.con.execute(f"DELETE FROM scores WHERE name IN ({', '.join('?' * len(names))})", list(names))
            self.con.execute("INSERT INTO scores SELECT * FROM fresh")


class _Transaction:
    """BEGIN/COMMIT around a block, ROLLBACK on error: a failed step leaves the store as it was."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def __enter__(self) -> None:
        self.con.execute("BEGIN TRANSACTION")

    def __exit__(self, kind, *_) -> None:
        self.con.execute("ROLLBACK" if kind else "COMMIT")


def _incoming(relation: str, first_row: int = 0) -> str:
    """SQL: the rows of ``relation`` (traces with a ``file_row_number``) with their trace id and location in the file
    (``first_row``: the file's row number of the relation's first row)."""
    return f"""SELECT md5(request_hash || '|' || subject_id || '|' || sample) AS trace_id,
                      'row ' || (file_row_number + {first_row + 1}) AS location, * EXCLUDE (file_row_number)
               FROM {relation}"""


def split_rows(source: Path, row_groups: range, shards: int, folder: Path) -> None:
    """The rows of ``source``'s ``row_groups`` with their trace id and location, as Parquet files per shard of a store of
    ``shards`` shards: ``folder/shard=K/*.parquet`` (what :meth:`Store.ingest` takes as ``parts``)."""
    file = pq.ParquetFile(source)
    first = sum(file.metadata.row_group(i).num_rows for i in range(row_groups.start))
    chunk = file.read_row_groups(list(row_groups))
    chunk = chunk.append_column("file_row_number", pa.array(range(chunk.num_rows), pa.int64()))  # noqa: F841 - read by name
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT *, {shard_of('trace_id', shards)} AS shard FROM ({_incoming('chunk', first)}))
                    TO {sql_text(str(folder))} (FORMAT parquet, PARTITION_BY (shard))""")


def shard_of(trace_id: str, shards: int) -> str:
    """SQL: the shard of a trace in a store of ``shards`` shards. A trace id is an md5 in hex, so its first 8 digits
    spread traces evenly and name the same shard in every run and version; a row without one (no provenance, so
    rejected) goes to shard 0."""
    return f"coalesce(('0x' || left({trace_id}, 8))::UBIGINT % {shards}, 0)"


def check_traces_file(source: Path) -> None:
    """A readable parquet file with the columns recot writes; the error names what is wrong and the fix."""
    if not source.exists():
        raise DataError(source, "no such file", "pass the traces.parquet a synthesis job wrote")
    try:
        names = set(pq.read_schema(source).names)
        pq.ParquetFile(source).metadata  # noqa: B018 - reading the footer is the check
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise DataError(source, f"not a readable parquet file ({exc})",
                        "the file is partial or corrupt: rerun `recot synth run` (it re-exports from its journal)") from None
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(source, f"columns {missing} are missing: these rows carry no provenance",
                        "curate only files written by `recot synth run` (traces.parquet)")
