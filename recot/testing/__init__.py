"""Helpers for testing code that uses recot, with real parts instead of mocks.

- tiny models for your tests come from the trainer: :func:`recot.trainer.tiny_model.build_tiny_model`
  (a random 2-layer Qwen2 with a locally trained BPE, built in about a second, no model hub needed);
- :func:`recot.testing.servers.vllm_server`: a real vLLM OpenAI-compatible server on loopback;
- :func:`recot.testing.servers.instant_server`: a loopback OpenAI-compatible server that answers at
  once, with failure modes chosen by model name (:mod:`recot.testing.instant_server`);
- :class:`recot.testing.fault_proxy.FaultProxy`: a loopback proxy that injects 429, 503, dropped
  connections, cut bodies, text bodies and empty choices in front of a real server;
- :data:`RECOT`: the installed ``recot`` command, for driving the CLI as a user does;
- :func:`journal_rows`: how many answers a job folder's journal holds, read while the job writes;
- :func:`curated_store`: a store of rules-teacher traces of a dataset, ingested and checked by the rules;
- :func:`recot.testing.planted.planted_traces`: copies of a synthesis output with exact, near and unrelated twins
  planted under new trace ids (duplicates across the shards of a sharded store, at any size);
- :class:`SharedTeacher`: one teacher (a real model's engine) used by several jobs in turn;
- :mod:`recot.testing.fixtures`: pytest fixtures with the embedded real LLM (``smollm2_model``, ``smollm2_teacher``).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from recot.teachers.base import Request, Response, Teacher

RECOT = [str(Path(sys.executable).with_name("recot"))]


def journal_rows(folder: Path) -> int:
    """Answers committed to ``folder``'s journal so far (0 before it exists): for waiting until a job is halfway."""
    try:
        with sqlite3.connect(folder / "journal.sqlite", timeout=5) as con:
            return con.execute("SELECT count(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def curated_store(dataset: Path, work: Path, tasks: list[str], limit: int) -> Path:
    """Synthesise ``tasks`` for ``limit`` subjects of ``dataset`` with the rules teacher into ``work/synth``, then a store
    (``work/curation.duckdb``) with the dataset's catalog, the traces and the rules' verdicts; returns the store."""
    from recot.curation.rules import run_rules
    from recot.curation.store import Store
    from recot.data.loaders import load_dataset
    from recot.synth.job import SynthConfig, run_synth

    run_synth(SynthConfig(dataset=dataset, out=work / "synth", tasks=tasks, limit=limit), progress=False)
    with Store(work / "curation.duckdb") as store:
        store.load_catalog(load_dataset(dataset).catalog)
        store.ingest(work / "synth" / "traces.parquet")
        run_rules(store)
    return work / "curation.duckdb"


class SharedTeacher:
    """A teacher that several jobs use in turn: each job closes its teacher when it ends, this one stays open until
    the session ends."""

    def __init__(self, teacher: Teacher) -> None:
        self.teacher, self.kind, self.model = teacher, teacher.kind, teacher.model

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        return self.teacher.generate(requests)

    def close(self) -> None:
        """Kept open: the session closes the teacher it wraps."""
