"""``recot synth run``: a resumable batch job from a dataset split to validated traces with provenance.

The runner owns everything a task should not: it plans subjects (cut-off enforced), skips requests
the journal already answers, streams the rest through the teacher, parses each answer, commits
answers in small transactions, shows progress, and exports the job's rows to ``traces.parquet``.
Run it again and it sends only what is missing; kill it and the rerun loses and repeats nothing.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recot.config import load_config
from recot.cost import Price, spent, token_counter, tokens_by_task
from recot.data.catalog import CATALOG_FILE
from recot.data.loaders import Dataset, load_dataset
from recot.errors import DataError
from recot.formats.profiles import DomainProfile, ProfileBook, get_profile
from recot.formats.splits import Split, SplitSpec
from recot.formats.tasks import TASKS, Task, get_task, save_declarations
from recot.io import atomic_path
from recot.synth.answering import AnswerStats, answer
from recot.synth.journal import Journal, read_plan, write_plan
from recot.synth.parse import Parsed, off_slate, parse_response
from recot.synth.prompts import PromptLibrary
from recot.synth.requests import CUTOFF_REASONS, ItemView, Shard, iter_requests, plan_subjects
from recot.synth.slates import SlateConfig, SlateSampler
from recot.teachers import OpenAITeacherConfig, RulesTeacherConfig, Sampling, Teacher, TeacherConfig, TeacherInputs, check_tasks, make_teacher
from recot.teachers.base import Request, Response
from recot.teachers.batch_files import OPENAI_MAX_BYTES, OPENAI_MAX_REQUESTS, BatchReader, BatchWriter


class SynthConfig(BaseModel):
    """One synthesis job. Relative paths in a config file are relative to that file."""

    model_config = ConfigDict(extra="forbid")
    dataset: Path = Field(description="a MiniOneRec folder or a dataset config (TOML/YAML)")
    out: Path = Field(Path("out/synth"), description="the job's folder: journal, traces.parquet, split.json, summary")
    tasks: list[str] = Field(["r3_cot_hindsight"],
                             description="r0_caption, r1_relation, r2_interests, r3_cot_blind, r3_cot_slate, r3_cot_hindsight, "
                                   "or yours: module:attribute or a recot.tasks entry point")
    part: Literal["train", "valid", "test"] = Field("train", description="the split part whose samples are subjects")
    split: Literal["auto", "temporal", "leave_last_out"] = Field(
        "auto", description="how samples are split; auto: temporal when the dataset has boundaries (written to split.json)")
    max_history: int = Field(10, ge=1, description="history items a sample shows (the most recent ones)")
    limit: int | None = Field(None, ge=1, description="subjects per task, spread over the plan by a stable hash (before n samples and sharding)")
    profile: str | DomainProfile = Field("ecommerce", description="the domain profile prompts read (wording, personas): "
                                         "ecommerce, short_video, live_streaming, ads, or a [profile] table")
    domain_profiles: dict[str, str | DomainProfile] = Field(
        {}, description="a profile per value of the dataset's domain column (a value named like a bundled profile uses it)")
    personas: list[str] | None = Field(None, description="persona prototypes replacing the main profile's")
    templates: Path | None = Field(None, description="a folder of templates overriding the bundled ones of the same task")
    request_schemas: Literal["narrowed", "task"] = Field(
        "narrowed", description="narrowed: each request's schema holds the answer to the request's own SIDs and citations to "
        "its history (recot.formats.request_schemas); task: each task's schema as declared (a backend that refuses a keyword)")
    teacher: TeacherConfig = Field(RulesTeacherConfig(), description="[teacher]: who answers, told apart by kind")
    sampling: Sampling = Field(Sampling(), description="[sampling]: as vLLM's SamplingParams")
    slate: SlateConfig = Field(SlateConfig(), description="[slate]: candidate slates of r3_cot_slate (size, top_k, samplers)")
    price: Price | None = Field(None, description="[price]: the teacher's price per million tokens, for the cost in the summary and dry run")
    lenient: bool = Field(False, description="skip bad dataset records instead of failing; they go to OUT/dataset-rejects.csv")
    commit_rows: int = Field(256, ge=1, description="answers per journal transaction (at most this many are redone after a kill)")
    commit_s: float = Field(2.0, gt=0, description="seconds between journal commits at the latest")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | DomainProfile) -> DomainProfile:
        return get_profile(value)

    @field_validator("domain_profiles")
    @classmethod
    def _domain_profiles(cls, value: dict[str, str | DomainProfile]) -> dict[str, DomainProfile]:
        return {domain: get_profile(p) for domain, p in value.items()}

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        if not tasks:
            raise ValueError(f"no tasks; choose from {sorted(TASKS)} or name yours as module:attribute")
        for name in tasks:
            try:
                get_task(name)
            except DataError as exc:
                raise ValueError(str(exc)) from None
        return tasks


def load_synth_config(path: Path | None, overrides: dict[str, Any] | None = None) -> SynthConfig:
    return load_config(SynthConfig, path, overrides)


@dataclass
class JobReport:
    out: str
    teacher: str
    model: str
    planned: int = 0
    cached: int = 0
    shared: int = 0
    sent: int = 0
    ok: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unanswered: dict[str, int] = field(default_factory=dict)
    refused_samples: dict[str, int] = field(default_factory=dict)
    dataset_rejects: dict[str, int] = field(default_factory=dict)  # lenient mode: bad dataset records skipped, by reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens: a thinking teacher's own reasoning, as its server reported it
    retries: int = 0
    seconds: float = 0.0
    rows: int = 0
    tokens: list[dict] = field(default_factory=list)  # rows, prompt and completion tokens per task and teacher in the output
    cost: dict[str, float] | None = None  # of the output's tokens at [price]: live and batch
    price: dict[str, float] | None = None  # the [price] it was costed at: a comparison of teachers costs each task by it

    @property
    def balanced(self) -> bool:
        """planned = ok + rejected + unanswered: every planned request is accounted for."""
        return self.planned == self.ok + sum(self.rejected.values()) + sum(self.unanswered.values())

    @property
    def complete(self) -> bool:
        """Every planned request has an answer in the output (ok or rejected with its reason)."""
        return self.balanced and not self.unanswered


def choose_split(dataset: Dataset, kind: str, max_history: int) -> Split:
    """The split the config names; ``auto`` is temporal when the dataset has boundaries."""
    return SplitSpec.choose(dataset.boundaries, kind, max_history, dataset.name).build(dataset.sequences())


def finish_report(report: JobReport, out: Path, price: Price | None) -> JobReport:
    """Add the tokens (and, at ``price``, the cost) of the output in ``out`` and write ``summary.json`` there."""
    report.tokens = tokens_by_task(out / "traces.parquet")
    report.cost = price.costs(*spent(report.tokens)) if price else None
    report.price = price.model_dump() if price else None
    (out / "summary.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def dry_run(config: SynthConfig, shard: Shard = Shard()) -> dict[str, Any]:
    """Plan the job and say what it would send, without sending: requests per task (and how many the
    journal already answers), prompt tokens, completion tokens at most and as expected, and the cost
    at ``config.price``. It writes nothing into the output folder (the plan goes to a scratch folder)."""
    return _Job(config, shard, job_dir(config, shard), None).dry_run()


def _profiles(config: SynthConfig, dataset: Dataset) -> ProfileBook:
    """The job's profiles; items take their domain from the domain their events carry most often."""
    default, by_domain = get_profile(config.profile), {d: get_profile(p) for d, p in config.domain_profiles.items()}
    if config.personas:
        default = default.model_copy(update={"personas": tuple(config.personas)})
    return ProfileBook(default, by_domain, dataset.item_domains())


def _batch_teacher(config: SynthConfig) -> OpenAITeacherConfig:
    if config.teacher.kind != "openai":
        raise DataError("[teacher]", f"batch files are for an OpenAI-compatible teacher, this job's is {config.teacher.kind!r}",
                        'set kind = "openai" and model = the name the batch endpoint serves (base_urls may be any URL)')
    return config.teacher


def write_batch(config: SynthConfig, shard: Shard = Shard(), max_requests: int = OPENAI_MAX_REQUESTS,
                max_bytes: int = OPENAI_MAX_BYTES, progress: bool = False) -> tuple[JobReport, list[Path]]:
    """Write the job's unanswered requests to ``OUT/batch/requests-NNNNN.jsonl`` (OpenAI Batch API input) and
    export what is already answered. In the report they count as unanswered, ``written to a batch file``."""
    teacher = _batch_teacher(config)
    writer = BatchWriter(teacher.model, teacher.structured, job_dir(config, shard) / "batch", max_requests, max_bytes,
                         teacher.token_limit)
    return run_synth(config, shard, progress, writer), writer.files


def read_batch(config: SynthConfig, files: list[Path], shard: Shard = Shard(), progress: bool = False) -> tuple[JobReport, list[str]]:
    """Import batch output (and error) files into the job's journal, then export as a run does. Returns the
    report and the ids in the files that are no request of this job (refused: nothing of theirs is kept)."""
    for path in files:
        if not path.is_file():
            raise DataError(path, "no such batch output file", "pass the files the batch provider returned")
    reader = BatchReader(_batch_teacher(config).model, files)
    report = run_synth(config, shard, progress, reader)
    unknown = set(reader.index)
    for key, _ in read_plan(job_dir(config, shard) / ".work" / "plan.tsv"):
        unknown.discard(key)
    return report, sorted(unknown)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(out, "another synthesis job is writing here", "wait for it, or choose another out directory") from None
        yield


def job_dir(config: SynthConfig, shard: Shard = Shard()) -> Path:
    """Where a job (or one shard of it) keeps its journal, plan and output."""
    return config.out if shard.count == 1 else config.out / f"shard-{shard.index}-of-{shard.count}"


def run_synth(config: SynthConfig, shard: Shard = Shard(), progress: bool = True, teacher: Teacher | None = None,
              on_progress: Callable[[int, int], Any] | None = None) -> JobReport:
    """Run (or resume) the job; returns what happened. Rows land in ``<out>/traces.parquet``.
    ``on_progress(seen, planned)`` is called after each commit (a distributed runner's whole-job bar)."""
    out = job_dir(config, shard)
    job = _Job(config, shard, out, teacher)  # reads and checks the dataset first: bad input leaves no output folder
    with _exclusive(out):
        return job.run(progress, on_progress)


class _Job:
    def __init__(self, config: SynthConfig, shard: Shard, out: Path, teacher: Teacher | None) -> None:
        self.config, self.shard, self.out = config, shard, out
        self.tasks = [get_task(name) for name in config.tasks]
        for task in self.tasks:
            if task.needs_target and config.part != "train":
                raise DataError(task.name, f"this task shows the target, and part = {config.part!r} would put evaluation "
                                "targets into training material", "use part = 'train', or r3_cot_blind for evaluation CoT")
        self.dataset = load_dataset(config.dataset, lenient=config.lenient)
        if self.dataset.catalog.levels is None:
            raise DataError(config.dataset, "the catalog has no semantic IDs", "build them first: recot sid build")
        self.split_spec = SplitSpec.choose(self.dataset.boundaries, config.split, config.max_history, self.dataset.name)
        self.split = self.split_spec.build(self.dataset.sequences())
        self.profiles = _profiles(config, self.dataset)
        self.personas = self.profiles.default.personas
        self.teacher = teacher or make_teacher(config.teacher, TeacherInputs(self.dataset.catalog, self.personas, self.split.part("train")))
        check_tasks(self.teacher, [task.name for task in self.tasks])
        self.work = out / ".work"
        self.report = JobReport(str(out), self.teacher.kind, self.teacher.model)
        self.stats = AnswerStats()
        self.task_of = {task.name: task for task in self.tasks}
        self.items = ItemView(self.dataset.catalog)

    def _plan(self, keep_refused: bool = True) -> list[tuple[Task, Path]]:
        """Write each task's subjects to parquet (in ``self.work``) and, with ``keep_refused``, the refused samples next to
        the output."""
        planned, refused = [], []
        for task in self.tasks:
            subjects, bad = plan_subjects(task, self.dataset.catalog, self.split, self.config.part, self.config.limit)
            path = self.work / f"{task.name}.parquet"
            with atomic_path(path) as tmp:
                subjects.sink_parquet(tmp)
            owned = sum(self.shard.owns(s) for s in pl.read_parquet(path, columns=["subject_id"])["subject_id"])
            self.report.planned += owned * self.config.sampling.n
            refused.append(bad.with_columns(task=pl.lit(task.name)).collect())
            planned.append((task, path))
        refused_frame = pl.concat(refused, how="diagonal_relaxed")
        self.report.refused_samples = dict(Counter(refused_frame["reason"].to_list()))
        if not keep_refused:
            return planned
        with atomic_path(self.out / "refused.parquet") as tmp:
            refused_frame.with_columns(detail=pl.col("reason").replace_strict(CUTOFF_REASONS, default=None)).write_parquet(tmp)
        return planned

    def _requests(self, planned: list[tuple[Task, Path]]) -> Iterator[Request]:
        """Every request of the job in plan order; each goes to the plan file, which the export joins to the answers."""
        library = self._library()
        identity = (self.teacher.kind, self.teacher.model)
        slates = self._slates(planned)
        with (self.work / "plan.tsv").open("w", encoding="utf-8") as plan:
            for task, path in planned:
                for request in iter_requests(task, path, library, self.items, self.profiles, identity, self.config.sampling,
                                             self.shard, slates, narrowed=self.config.request_schemas == "narrowed"):
                    write_plan(plan, request.key, request.subject)
                    yield request

    def _parse(self, request: Request, response: Response) -> tuple[Parsed, str | None]:
        task = self.task_of[request.task]
        parsed = parse_response(response, task.schema(self.profiles.by_name[request.subject["profile"]].personas))
        if task.slate and parsed.output:
            parsed = off_slate(parsed, [self.items[i]["sid"] for i in request.subject["items"]], self.config.slate.top_k)
        return parsed, task.text(parsed.output) if parsed.output else None

    def run(self, progress: bool, on_progress: Callable[[int, int], Any] | None = None) -> JobReport:
        started = time.perf_counter()
        self.work.mkdir(parents=True, exist_ok=True)
        planned = self._plan()
        journal = Journal(self.out / "journal.sqlite")
        try:
            with _progress(progress) as bar:
                job = bar.add_task(f"{self.teacher.kind}:{self.teacher.model}", total=self.report.planned, status="")

                def show() -> None:
                    bar.update(job, completed=self.stats.seen, status=self._status(started))
                    if on_progress:
                        on_progress(self.stats.seen, self.report.planned)

                answer(self.teacher, journal, self._requests(planned), self._parse, self.stats,
                       self.config.commit_rows, self.config.commit_s, show)
            self.report.rows = journal.export(read_plan(self.work / "plan.tsv"), self.out / "traces.parquet")
            self.split_spec.save(self.out)
            save_declarations(self.tasks, self.personas, self.out)
            self._save_catalog()
            self._save_dataset_rejects()
        finally:
            journal.close()
            self.teacher.close()
        stats = self.stats
        self.report.cached, self.report.shared, self.report.sent, self.report.ok = stats.cached, stats.shared, stats.sent, stats.ok
        self.report.rejected, self.report.unanswered = dict(stats.rejected), dict(stats.unanswered)
        self.report.prompt_tokens, self.report.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        self.report.reasoning_tokens = stats.reasoning_tokens
        self.report.retries = getattr(self.teacher, "retries", 0)
        self.report.seconds = round(time.perf_counter() - started, 2)
        return finish_report(self.report, self.out, self.config.price)

    def dry_run(self) -> dict[str, Any]:
        """What a run would send, planned in a scratch folder: a dry run writes nothing into the output folder."""
        with tempfile.TemporaryDirectory(prefix="recot-dry-run-") as scratch:
            self.work = Path(scratch)
            return self._dry_run(self._plan(keep_refused=False))

    def _dry_run(self, planned: list[tuple[Task, Path]]) -> dict[str, Any]:
        counted_with, count = token_counter(self._tokenizer())
        journal = self.out / "journal.sqlite"
        reader = sqlite3.connect(f"file:{journal}?mode=ro", uri=True) if journal.exists() else None
        mean_answer = dict(reader.execute("SELECT task, avg(completion_tokens) FROM answers GROUP BY task").fetchall()) if reader else {}
        seen: set[str] = set()
        tasks: dict[str, Counter] = {}
        library, identity = self._library(), (self.teacher.kind, self.teacher.model)
        slates = self._slates(planned)
        for task, path in planned:
            totals = tasks.setdefault(task.name, Counter())
            stream = iter_requests(task, path, library, self.items, self.profiles, identity, self.config.sampling, self.shard, slates,
                                   narrowed=self.config.request_schemas == "narrowed")
            while chunk := list(itertools.islice(stream, 512)):
                answered = Journal.answered(reader, [r.key for r in chunk]) if reader else {}
                fresh = []
                for r in chunk:  # a prompt repeated inside one chunk is sent once, as a run sends it
                    if r.key not in answered and r.key not in seen:
                        seen.add(r.key)
                        fresh.append(r)
                totals.update(requests=len(chunk), cached=len(chunk) - len(fresh), to_send=len(fresh),
                              prompt_tokens=sum(count([r.messages for r in fresh])))
            totals["completion_tokens_max"] = totals["to_send"] * self.config.sampling.max_tokens
            if task.name in mean_answer:
                totals["completion_tokens_expected"] = round(totals["to_send"] * mean_answer[task.name])
        if reader:
            reader.close()
        plan: dict[str, Any] = {"out": str(self.out), "teacher": self.teacher.kind, "model": self.teacher.model,
                                "tokens_counted_with": counted_with, "by_task": {k: dict(v) for k, v in tasks.items()}}
        for key in ("requests", "cached", "to_send", "prompt_tokens", "completion_tokens_max"):
            plan[key] = sum(v[key] for v in tasks.values())
        if self.config.price:
            plan["cost_at_most"] = self.config.price.costs(plan["prompt_tokens"], plan["completion_tokens_max"])
        return plan

    def _save_catalog(self) -> None:
        """The catalog the job used (after lenient loading set records aside), beside the traces: curation checks SIDs
        against it without reopening the dataset, so the decisions made here hold downstream."""
        catalog, domains = self.dataset.catalog, self.dataset.item_domains()
        frame = catalog.items.select("item_id", "title", "brand").with_columns(
            sid_text=catalog.sid_text(), domain=pl.col("item_id").replace_strict(domains, default=self.dataset.name, return_dtype=pl.Utf8))
        with atomic_path(self.out / CATALOG_FILE) as tmp:
            frame.write_parquet(tmp)

    def _library(self) -> PromptLibrary:
        """The bundled templates, the config's folder over them, and the templates user tasks bring."""
        library = PromptLibrary(self.config.templates, [t.template for t in self.tasks if t.template])
        for task in self.tasks:
            if task.name not in library.templates:
                raise DataError(task.name, "no template names this task", "give the Task a template file whose header says "
                                f"task: {task.name}, or put one in the config's templates folder")
        return library

    def _tokenizer(self) -> str | None:
        """The teacher's tokenizer when it is a local folder: the in-process model, or an HTTP teacher's ``tokenizer``."""
        teacher = self.config.teacher
        found = teacher.model if teacher.kind == "vllm" else getattr(teacher, "tokenizer", None)
        return found if found and Path(found).is_dir() else None

    def _slates(self, planned: list[tuple[Task, Path]]) -> SlateSampler | None:
        if not any(task.slate for task, _ in planned):
            return None
        return SlateSampler(self.config.slate, self.dataset.catalog, self.split.part("train"), self.work, self.config.max_history)

    def _save_dataset_rejects(self) -> None:
        """Lenient mode skips bad dataset records: they are written with their reasons, never lost."""
        rejects = self.dataset.rejects
        self.report.dataset_rejects = dict(Counter(rejects["reason"].to_list()))
        if not rejects.is_empty():
            with atomic_path(self.out / "dataset-rejects.csv") as tmp:
                rejects.write_csv(tmp)

    def _status(self, started: float) -> str:
        elapsed = max(time.perf_counter() - started, 1e-9)
        r = self.stats
        reasons = ", ".join(f"{k} {v}" for k, v in sorted({**r.rejected, **r.unanswered}.items()))
        # the same three counts the final report gives: ok + rejected + unanswered = answered so far
        return (f"ok {r.ok}, rejected {sum(r.rejected.values())}, unanswered {sum(r.unanswered.values())}"
                f"{f' ({reasons})' if reasons else ''} | {r.completion_tokens / elapsed:.0f} tok/s, {r.sent / elapsed:.1f} req/s, "
                f"cached {r.cached}")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=Console(stderr=True), disable=not enabled)
