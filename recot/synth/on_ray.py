"""A synthesis job's shards as tasks on a Ray cluster, merged into one output.

Each shard is the job's ordinary ``--shard I/N`` run (subjects split by a stable hash of their id):
the task builds its own teacher (the in-process vLLM engine on the GPU Ray gives it, or the HTTP
teacher against its node's server), writes its own journal under ``OUT/shard-I-of-N/``, and exports
its rows. A task whose worker dies is retried by Ray on another worker and resumes from that journal,
so nothing is lost or asked twice. When every shard is done their rows are merged, in shard order,
into ``OUT/traces.parquet`` beside the split and task declarations, and their counts into one report.

``OUT`` must be on storage every node sees (the same path), and a user's own task modules importable
on every worker. The driver shows one progress bar for the whole job, fed by the shards through a
small actor.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recot.data.catalog import CATALOG_FILE
from recot.errors import DataError
from recot.formats.splits import SPLIT_FILE
from recot.formats.tasks import TASKS_FILE
from recot.formats.traces import TRACES_SCHEMA
from recot.io import atomic_path
from recot.ray_cluster import ray_session
from recot.synth.job import JobReport, SynthConfig, finish_report, job_dir, run_synth
from recot.synth.requests import Shard

_COUNTS = ("planned", "cached", "shared", "sent", "ok", "prompt_tokens", "completion_tokens", "reasoning_tokens", "retries",
           "rows")
_BY_REASON = ("rejected", "unanswered", "refused_samples", "dataset_rejects")


def run_on_ray(config: SynthConfig, shards: int, address: str | None = None, gpus_per_shard: float = 0.0,
               cpus_per_shard: float = 1.0, max_retries: int = 3, progress: bool = True) -> JobReport:
    """Run the job's ``shards`` shards as Ray tasks (on the cluster at ``address``, ``RAY_ADDRESS``, or a
    local one), each retried up to ``max_retries`` times if its worker dies, then merge them."""
    if shards < 1:
        raise DataError("shards", f"{shards} shards", "run at least one shard")
    with ray_session(address) as ray:
        return _run_shards(ray, _absolute(config), shards, gpus_per_shard, cpus_per_shard, max_retries, progress)


def _run_shards(ray, config: SynthConfig, shards: int, gpus_per_shard: float, cpus_per_shard: float, max_retries: int,
                progress: bool) -> JobReport:
    tracker = ray.remote(_Tracker).options(num_cpus=0).remote()
    task = ray.remote(_run_shard).options(num_cpus=cpus_per_shard, num_gpus=gpus_per_shard, max_retries=max_retries,
                                          retry_exceptions=False)
    started = time.perf_counter()
    pending = [task.remote(config.model_dump_json(), index, shards, tracker) for index in range(shards)]
    refs = list(pending)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[status]}"), console=Console(stderr=True), disable=not progress) as bar:
        job = bar.add_task(f"ray: {shards} shards", total=None, status="")
        while pending:
            _, pending = ray.wait(pending, timeout=0.5)
            seen, planned = ray.get(tracker.totals.remote())  # type: ignore[attr-defined]  # ray adds .remote to actor methods
            bar.update(job, completed=seen, total=planned or None, status=f"{shards - len(pending)} of {shards} shards done")
    reports = [JobReport(**r) for r in ray.get(refs)]  # a shard that failed for good raises here, with its error
    return merge_shards(config, shards, reports, time.perf_counter() - started)


def merge_shards(config: SynthConfig, shards: int, reports: list[JobReport], seconds: float) -> JobReport:
    """One ``traces.parquet`` (shard order), the split and task declarations, and the summed report in ``config.out``."""
    folders = [job_dir(config, Shard(i, shards)) for i in range(shards)]
    for name in (SPLIT_FILE, TASKS_FILE, CATALOG_FILE):
        contents = [pl.read_parquet(folder / name) if name == CATALOG_FILE else (folder / name).read_text() for folder in folders]
        if any(not _same(contents[0], other) for other in contents[1:]):
            raise DataError(config.out, f"the shards wrote different {name} files", "rerun the shards with one config")
        shutil.copy(folders[0] / name, config.out / name)
    with atomic_path(config.out / "traces.parquet") as tmp, pq.ParquetWriter(tmp, TRACES_SCHEMA) as writer:
        for folder in folders:
            for batch in pq.ParquetFile(folder / "traces.parquet").iter_batches(batch_size=5000):
                writer.write_batch(batch)
    merged = JobReport(str(config.out), reports[0].teacher, reports[0].model)
    for name in _COUNTS:
        setattr(merged, name, sum(getattr(r, name) for r in reports))
    for name in _BY_REASON:
        setattr(merged, name, dict(sum((Counter(getattr(r, name)) for r in reports), Counter())))
    merged.seconds = round(seconds, 2)
    return finish_report(merged, config.out, config.price)


def _absolute(config: SynthConfig) -> SynthConfig:
    """Paths as every worker must read them: absolute (a worker's working directory is its own)."""
    changes = {name: value.resolve() for name in ("dataset", "out", "templates") if isinstance(value := getattr(config, name), Path)}
    return config.model_copy(update=changes)


def _run_shard(config_json: str, index: int, count: int, tracker: Any) -> dict:
    """One shard, run (or resumed) on a worker; its progress goes to the driver's tracker."""
    config = SynthConfig.model_validate_json(config_json)
    report = run_synth(config, Shard(index, count), progress=False,
                       on_progress=lambda seen, planned: tracker.update.remote(index, seen, planned))
    return {f.name: getattr(report, f.name) for f in fields(report)}


class _Tracker:
    """Seen and planned requests per shard, as the shards last reported them."""

    def __init__(self) -> None:
        self.shards: dict[int, tuple[int, int]] = {}

    def update(self, shard: int, seen: int, planned: int) -> None:
        self.shards[shard] = (seen, planned)

    def totals(self) -> tuple[int, int]:
        return sum(s for s, _ in self.shards.values()), sum(p for _, p in self.shards.values())


def _same(a: pl.DataFrame | str, b: pl.DataFrame | str) -> bool:
    if isinstance(a, pl.DataFrame) and isinstance(b, pl.DataFrame):
        return bool(a.equals(b))
    return isinstance(a, str) and isinstance(b, str) and a == b
