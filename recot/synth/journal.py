"""The job journal: an append-only SQLite table of answers that is also the content-addressed cache.

Each answer is one row keyed by its request hash and committed in small transactions (WAL mode):
a job killed at any moment (SIGKILL included) keeps every committed answer, loses at most the
uncommitted tail, which the rerun sends again, and can never hold one answer twice (the key is
the primary key). A rerun sends only requests whose key is not here.

The journal stores answers to prompts, not rows about subjects: two subjects with the same
prompt (a blind history shared by two users) share one answer. The job's own plan, one
``key<TAB>subject`` line per request, is joined with the answers to export ``traces.parquet``,
in plan order and streaming.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from recot.errors import DataError
from recot.formats.traces import SUBJECT_FIELDS, TRACES_SCHEMA
from recot.io import atomic_path
from recot.synth.parse import Parsed
from recot.teachers.base import Request, Response

SCHEMA_VERSION = 2
COLUMNS = (
    "key", "task", "sample", "seed", "status", "reason", "detail", "output", "text", "raw",
    "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "messages", "template",
    "template_version", "template_hash", "teacher", "model", "params", "created_at",
    "reasoning", "reasoning_tokens",  # a thinking teacher's own reasoning and its tokens (within completion_tokens)
)
# version -> SQL that brings a journal of that version to the next one: a job resumes across recot versions
MIGRATIONS = {1: "ALTER TABLE answers ADD COLUMN reasoning; ALTER TABLE answers ADD COLUMN reasoning_tokens"}
_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS answers ({', '.join(c + (' TEXT PRIMARY KEY' if c == 'key' else '') for c in COLUMNS)});
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode: readers never block the writer, a commit survives the process being killed."""
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


class Journal:
    """Answers by request key, one journal per job directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = connect(path)
        self.con.executescript(_DDL)
        found = self.con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if found is None:
            self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(found[0]) in MIGRATIONS:
            with self.con:
                self.con.execute("BEGIN")
                for version in range(int(found[0]), SCHEMA_VERSION):
                    for statement in MIGRATIONS[version].split(";"):
                        self.con.execute(statement)
                self.con.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))
        elif int(found[0]) != SCHEMA_VERSION:
            raise DataError(path, f"journal schema version {found[0]}, this recot writes version {SCHEMA_VERSION}",
                            "use a new output directory, or the recot version that wrote this one")

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Commit ``rows`` (dicts with :data:`COLUMNS`) in one transaction; keys already present are kept as they are."""
        if not rows:
            return
        marks = ", ".join("?" * len(COLUMNS))
        with self.con:
            self.con.execute("BEGIN")
            self.con.executemany(f"INSERT OR IGNORE INTO answers ({', '.join(COLUMNS)}) VALUES ({marks})",
                                 [tuple(row[c] for c in COLUMNS) for row in rows])

    def reader(self) -> sqlite3.Connection:
        """A read connection for another thread (the one that feeds a teacher): WAL lets it read while we write."""
        return sqlite3.connect(self.path, timeout=60, check_same_thread=False)

    @staticmethod
    def answered(reader: sqlite3.Connection, keys: Sequence[str]) -> dict[str, tuple[str, str | None, str]]:
        """``(status, reason, created_at)`` of each of ``keys`` that already has an answer."""
        return _select(reader, keys, ("status", "reason", "created_at"))

    def rows(self, keys: Sequence[str], columns: Sequence[str]) -> dict[str, tuple]:
        """``columns`` of the answers to ``keys``, by key (keys without an answer are absent)."""
        return _select(self.con, keys, columns)

    def export(self, plan: Iterable[tuple[str, str]], target: Path, chunk_rows: int = 5000) -> int:
        """Write one row per planned (key, subject JSON) that has an answer, in plan order, to a parquet file."""
        self.con.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (ord INTEGER PRIMARY KEY, key TEXT, subject TEXT)")
        self.con.execute("DELETE FROM wanted")
        with self.con:
            self.con.execute("BEGIN")
            self.con.executemany("INSERT INTO wanted (key, subject) VALUES (?, ?)", plan)
        cursor = self.con.execute(
            f"SELECT w.subject, {', '.join('a.' + c for c in COLUMNS)} FROM wanted w JOIN answers a USING (key) ORDER BY w.ord")
        written = 0
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, TRACES_SCHEMA) as writer:
            for rows in iter(lambda: cursor.fetchmany(chunk_rows), []):
                writer.write_table(pa.Table.from_pylist([_output_row(r) for r in rows], schema=TRACES_SCHEMA))
                written += len(rows)
        return written

    def close(self) -> None:
        self.con.close()


def _select(con: sqlite3.Connection, keys: Sequence[str], columns: Sequence[str]) -> dict[str, tuple]:
    """Answers of ``keys`` in chunks of 500 (SQLite's bound-parameter limit), as {key: (columns...)}."""
    found: dict[str, tuple] = {}
    for start in range(0, len(keys), 500):
        part = list(keys[start:start + 500])
        marks = ", ".join("?" * len(part))
        for row in con.execute(f"SELECT key, {', '.join(columns)} FROM answers WHERE key IN ({marks})", part):
            found[row[0]] = row[1:]
    return found


def _output_row(row: tuple) -> dict[str, Any]:
    record = dict(zip(COLUMNS, row[1:]))
    subject = json.loads(row[0])
    record["request_hash"] = record.pop("key")
    record["subject_id"] = subject["id"]
    record.update({f: subject.get(f) for f in SUBJECT_FIELDS})
    return record


def now() -> str:
    """Answer time, to the microsecond: a job tells its own answers from an earlier run's by it."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def answer_row(request: Request, response: Response, parsed: Parsed, text: str | None, teacher: tuple[str, str]) -> dict[str, Any]:
    """The journal row of one answer: the validated output (or why not) with its full provenance."""
    return {
        "key": request.key, "task": request.task, "sample": request.sample, "seed": request.seed,
        "status": parsed.status, "reason": parsed.reason, "detail": parsed.detail,
        "output": parsed.output.model_dump_json() if parsed.output else None, "text": text,
        "raw": response.text, "finish_reason": response.finish_reason, "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens, "latency_s": response.latency_s,
        "messages": json.dumps(request.messages), "template": request.template["name"],
        "template_version": request.template["version"], "template_hash": request.template["hash"],
        "teacher": teacher[0], "model": teacher[1],
        "params": json.dumps({"temperature": request.temperature, "top_p": request.top_p,
                              "max_tokens": request.max_tokens, "seed": request.seed}),
        "created_at": now(), "reasoning": response.reasoning, "reasoning_tokens": response.reasoning_tokens,
    }


def write_plan(handle: IO[str], key: str, subject: dict[str, Any]) -> None:
    handle.write(f"{key}\t{json.dumps(subject)}\n")


def read_plan(path: Path) -> Iterator[tuple[str, str]]:
    """(key, subject JSON) pairs of a plan file written by :func:`write_plan`."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            key, subject = line.rstrip("\n").split("\t", 1)
            yield key, subject
