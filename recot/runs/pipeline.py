"""``recot run PIPELINE.toml``: the stages from a catalog to an evaluated model, in order, each run only when
what it reads changed.

A pipeline config names the dataset, one output folder, and a table per stage (the same settings as the
stage's own config file: ``[synth]`` is a SynthConfig, ``[rules]`` a RulesConfig, ``[sft]`` a RecSFTConfig,
...). The pipeline fills in what one stage hands the next (the synthesis output, the store, the export, the
checkpoints, the split), so no stage re-derives an earlier decision. Stages, in order:

    synth -> curate (fresh store: ingest + rules) -> judge -> dedup -> review -> export
          -> tiny_model -> sft -> grpo -> eval

A stage without its table is left out (``synth``, ``curate`` and ``export`` always run). Each stage's
fingerprint hashes its settings, the content of the files it reads from outside (dataset, templates, base
model), the fingerprints of the stages it reads from and recot's version; ``OUT/pipeline-state.json`` keeps the fingerprint of
every stage that finished. A stage whose fingerprint is unchanged (and whose outputs exist) is skipped, so a
second run does no work, and a changed template, catalog or threshold reruns that stage and those after it.
``review`` always runs: its input is people, whom no fingerprint sees (push and pull are idempotent).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recot import __version__
from recot.config import check_stage, load_config
from recot.curation.dedup import DedupConfig
from recot.curation.export import ExportConfig
from recot.curation.judge import JudgeConfig
from recot.curation.review import ReviewConfig
from recot.curation.rules import RulesConfig
from recot.errors import DataError, require
from recot.io import atomic_path
from recot.synth.job import SynthConfig
from recot.synth.prompts import PromptLibrary

STATE_FILE = "pipeline-state.json"
METHODS = ("direct", "think", "most_popular", "transition", "sasrec")  # what evaluation scores, in report order
# files at least this large are fingerprinted by size and modification time, not content (model weights)
CONTENT_HASH_LIMIT = 64 * 2**20


class TinyModelConfig(BaseModel):
    """A random Qwen2 with a BPE trained on the catalog's titles, as the tests build one: a base model for
    trying the pipeline end to end where no real one can be had. It learns only what the data teaches."""

    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(2000, ge=300)
    hidden_size: int = Field(128, description="head dimension is hidden_size / 2 (vLLM's CPU attention needs 32, 64 or 128)")
    layers: int = Field(2, ge=1)
    seed: int = 0


class PipelineConfig(BaseModel):
    """One pipeline. Paths are relative to the config file; every stage writes under ``out``."""

    model_config = ConfigDict(extra="forbid")
    dataset: Path = Field(description="the dataset (a MiniOneRec folder or a dataset config)")
    out: Path = Field(Path("out/pipeline"), description="one folder for every stage's output and the pipeline state")
    domain: str | None = Field(None, description="the dataset's domain in the store (default: its folder name)")
    synth: SynthConfig = Field(description="[synth]: the synthesis job (dataset and out are the pipeline's)")
    rules: RulesConfig = Field(RulesConfig(), description="[rules]: rule switches and thresholds")
    judge: JudgeConfig | None = Field(None, description="[judge]: LLM-judge scores (left out without the table)")
    dedup: DedupConfig | None = Field(DedupConfig(), description="[dedup]: near-duplicate clustering")
    review: ReviewConfig | None = Field(None, description="[review]: push to Argilla and pull decisions (needs a server)")
    export: ExportConfig = Field(description="[export]: name, formats, cot_ratio, selection (out and dataset are the pipeline's)")
    base_model: str | None = Field(None, description="the model SFT starts from (a folder or hub id); or [tiny_model]")
    tiny_model: TinyModelConfig | None = Field(None, description="[tiny_model]: build a small random base model")
    sft: dict[str, Any] | None = Field(None, description="[sft]: RecSFTConfig settings (model, data and output paths are the pipeline's)")
    grpo: dict[str, Any] | None = Field(None, description="[grpo]: RecGRPOConfig settings, from the SFT checkpoint")
    eval: dict[str, Any] | None = Field(None, description="[eval]: EvalConfig settings (model, export and out are the "
                                        "pipeline's): the last trained model and the baselines on the export's held-out rows")

    @model_validator(mode="before")
    @classmethod
    def _hand_offs(cls, data: Any) -> Any:
        """Fill in what the pipeline decides for its stages: where each reads and writes."""
        if not isinstance(data, dict) or "dataset" not in data:
            return data
        out = Path(data.get("out", "out/pipeline"))
        data = dict(data)
        data["synth"] = {**data.get("synth", {}), "dataset": data["dataset"], "out": out / "synth"}
        data["export"] = {"name": "pipeline", **data.get("export", {}), "out": out / "export", "dataset": data["dataset"],
                          "lenient": bool(data["synth"].get("lenient", False)),
                          "overwrite": True}
        return data

    @model_validator(mode="after")
    def _trainer_settings(self) -> PipelineConfig:
        """Check the trainer tables now, not after synthesis and curation have run."""
        if self.sft is not None and not (self.base_model or self.tiny_model):
            raise ValueError("[sft] needs a model to start from: set base_model, or add a [tiny_model] table")
        if self.grpo is not None and self.sft is None:
            raise ValueError("[grpo] starts from the SFT checkpoint: add an [sft] table")
        if self.sft is not None or self.grpo is not None:
            require("train", "torch", "transformers", "trl", "datasets", needed_for="the pipeline's [sft] and [grpo] stages")
            from recot.trainer.grpo import RecGRPOConfig
            from recot.trainer.sft import RecSFTConfig

            for name, kind in (("sft", RecSFTConfig), ("grpo", RecGRPOConfig)):
                if getattr(self, name) is not None:
                    check_stage(kind, getattr(self, name), name, output_dir=str(self.out / name))
        if self.eval is not None:
            from recot.trainer.evaluate import EvalConfig

            check_stage(EvalConfig, self.eval, "eval", **self._eval_fixed("sft"))
        return self

    def _eval_fixed(self, trained: str) -> dict[str, Any]:
        """What the pipeline decides for evaluation: the model it trained and the export it trained on (whose held-out
        rows, catalog and split evaluation reads)."""
        return {"model": self.out / trained, "export": self.out / "export", "out": self.out / "eval"}


def load_pipeline(path: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides)


@dataclass
class Stage:
    """One step: what it is told (``settings``), what it reads from outside (``inputs``, content-hashed), which
    stages it reads from (``after``), what it writes (``outputs``) and how to run it (returns its figures)."""

    name: str
    run: Callable[[], dict[str, Any]]
    settings: Any
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    always: bool = False


@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "skipped"
    seconds: float
    outputs: list[str]
    summary: dict[str, Any]


def fingerprint_path(path: Path) -> str:
    """Content hash of a file or folder (names and bytes; large files by size and modification time)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        size = file.stat().st_size
        if size >= CONTENT_HASH_LIMIT:
            digest.update(f"{size}:{file.stat().st_mtime_ns}".encode())
            continue
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _fingerprint(stage: Stage, upstream: dict[str, str]) -> str:
    payload = {"recot": __version__, "settings": stage.settings, "inputs": {str(p): fingerprint_path(p) for p in stage.inputs},
               "after": {name: upstream.get(name) for name in stage.after}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _dump(model: BaseModel | dict | None, drop: tuple[str, ...] = ()) -> Any:
    data = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    return {k: v for k, v in data.items() if k not in drop} if isinstance(data, dict) else data


class Pipeline:
    """The stages of one :class:`PipelineConfig`; :meth:`run` runs those whose fingerprint changed."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.out = config.out
        self.store_path = self.out / "curation.duckdb"
        self.progress = True
        self.stages = self._stages()

    def _templates(self) -> list[Path]:
        """The template files synthesis and the judge render (bundled, or the configured overrides)."""
        return sorted({t.path for t in PromptLibrary(self.config.synth.templates).templates.values()})

    def _teacher_inputs(self, model: str | None) -> list[Path]:
        return [Path(model)] if model and Path(model).exists() else []

    def _model_dir(self, name: str) -> Path:
        return self.out / name

    def _stages(self) -> list[Stage]:
        c = self.config
        templates = self._templates()
        stages = [
            Stage("synth", self._run_synth, _dump(c.synth, ("out", "dataset", "commit_rows", "commit_s")),
                  [c.synth.out / "traces.parquet"], [c.dataset, *templates, *self._teacher_inputs(c.synth.teacher.model)]),
            Stage("curate", self._run_curate, {"rules": _dump(c.rules), "domain": c.domain}, [self.store_path],
                  [c.dataset], ["synth"]),
        ]
        curated = ["curate"]
        if c.judge is not None:
            stages.append(Stage("judge", partial(self._run_judge, c.judge), _dump(c.judge), [self.store_path],
                                [*templates, *self._teacher_inputs(c.judge.teacher.model)], curated))
            curated = [*curated, "judge"]
        if c.dedup is not None:
            stages.append(Stage("dedup", partial(self._run_dedup, c.dedup), _dump(c.dedup), [self.store_path], after=curated))
            curated = [*curated, "dedup"]
        if c.review is not None:
            stages.append(Stage("review", partial(self._run_review, c.review), _dump(c.review), [self.store_path], after=curated, always=True))
            curated = [*curated, "review"]
        stages.append(Stage("export", self._run_export, _dump(c.export, ("out", "dataset", "overwrite")), [c.export.out],
                            after=curated))
        if c.sft is None:
            return stages
        base: list[str] = []
        if c.tiny_model is not None and not c.base_model:
            stages.append(Stage("tiny_model", partial(self._run_tiny_model, c.tiny_model), _dump(c.tiny_model), [self._model_dir("base-model")],
                                after=["export"]))
            base = ["tiny_model"]
        base_inputs = [Path(c.base_model)] if c.base_model and Path(c.base_model).exists() else []
        stages.append(Stage("sft", partial(self._run_sft, c.sft), {"sft": c.sft, "base_model": c.base_model}, [self._model_dir("sft")],
                            base_inputs, ["export", *base]))
        trained = "sft"
        if c.grpo is not None:
            stages.append(Stage("grpo", partial(self._run_grpo, c.grpo), c.grpo, [self._model_dir("grpo")], after=["sft", "export"]))
            trained = "grpo"
        if c.eval is not None:
            stages.append(Stage("eval", partial(self._run_eval, c.eval, trained), {"eval": c.eval, "model": trained},
                                [self.out / "eval" / "report.json"], after=[trained, "export"]))
        return stages

    def _run_synth(self) -> dict[str, Any]:
        from dataclasses import asdict

        from recot.synth.job import run_synth

        report = run_synth(self.config.synth, progress=self.progress)
        if not report.complete:
            raise DataError(self.config.synth.out, f"{report.planned} planned, {report.ok} ok, {sum(report.rejected.values())} "
                            f"rejected, {sum(report.unanswered.values())} unanswered",
                            "run the pipeline again: synthesis resends only the unanswered requests")
        return {k: v for k, v in asdict(report).items() if k in ("planned", "ok", "rejected", "unanswered", "cached", "shared", "sent", "rows")}

    def _run_curate(self) -> dict[str, Any]:
        """A fresh store from the synthesis output: traces of an earlier run never mix with this one's."""
        from recot.curation.rules import run_rules
        from recot.curation.store import Store
        from recot.data.loaders import load_dataset

        dataset = load_dataset(self.config.dataset, lenient=self.config.synth.lenient)  # the records synthesis set aside stay aside
        with atomic_path(self.store_path) as tmp:
            with Store(tmp) as db:
                db.load_catalog(dataset.catalog, self.config.domain or self.config.dataset.name, dataset.item_domains())
                ingested = db.ingest(self.config.synth.out / "traces.parquet")
                failed = run_rules(db, self.config.rules)
        return {"ingested": ingested.new, "ingest_rejected": ingested.rejected, "failed_per_rule": failed}

    def _run_judge(self, settings: JudgeConfig) -> dict[str, Any]:
        from recot.curation.judge import run_judge
        from recot.curation.store import Store

        with Store(self.store_path) as db:
            return run_judge(db, settings)

    def _run_dedup(self, settings: DedupConfig) -> dict[str, Any]:
        from recot.curation.dedup import run_dedup
        from recot.curation.store import Store

        with Store(self.store_path) as db:
            return run_dedup(db, settings)

    def _run_review(self, settings: ReviewConfig) -> dict[str, Any]:
        from recot.curation.review import pull, push
        from recot.curation.store import Store

        with Store(self.store_path) as db:
            return {"push": push(db, settings), "pull": pull(db, settings)}

    def _run_export(self) -> dict[str, Any]:
        from recot.curation.export import export
        from recot.curation.store import Store

        with Store(self.store_path) as db:
            card = export(db, self.config.export)
        return {"kept": card["funnel"]["kept"], "rows": {name: sum(parts.values()) for name, parts in card["formats"].items()},
                "decontaminated": card["decontamination"]["rows_dropped"]}

    def _run_tiny_model(self, settings: TinyModelConfig) -> dict[str, Any]:
        from recot.trainer.data import export_catalog
        from recot.trainer.tiny_model import build_tiny_model

        target = self._model_dir("base-model")
        with atomic_path(target) as tmp:
            build_tiny_model(tmp, export_catalog(self.out / "export").items["title"].to_list(), vocab_size=settings.vocab_size,
                             hidden_size=settings.hidden_size, layers=settings.layers, seed=settings.seed)
        return {"model": str(target), "hidden_size": settings.hidden_size, "layers": settings.layers}

    def _run_sft(self, settings: dict[str, Any]) -> dict[str, Any]:
        from recot.runs.stages import train_stage

        target = self._model_dir("sft")
        trainer = train_stage("sft", settings, self.config.base_model or self._model_dir("base-model"), self.out / "export", target)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        return {"model": str(target), "steps": trainer.state.global_step, "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None}

    def _run_grpo(self, settings: dict[str, Any]) -> dict[str, Any]:
        from recot.runs.stages import train_stage

        target = self._model_dir("grpo")
        trainer = train_stage("grpo", settings, self._model_dir("sft"), self.out / "export", target)
        rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
        return {"model": str(target), "steps": trainer.state.global_step,
                "mean_reward_first": rewards[0] if rewards else None, "mean_reward_last": rewards[-1] if rewards else None}

    def _run_eval(self, settings: dict[str, Any], trained: str) -> dict[str, Any]:
        from recot.trainer.evaluate import EvalConfig, evaluate

        config = EvalConfig(**{**settings, **self.config._eval_fixed(trained)})
        report = evaluate(config)
        k, methods = config.k, [name for name in METHODS if name in report]
        return {"rows": report["rows"], **{f"{name}.recall@{k}": report[name][f"recall@{k}"] for name in methods},
                **{f"{name}.ndcg@{k}": report[name][f"ndcg@{k}"] for name in methods}}

    def run(self, progress: bool = True, log: Callable[[str], None] = print) -> list[StageResult]:
        """Run the stages in order, skipping those whose fingerprint is unchanged; returns what each did."""
        self.progress = progress
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / STATE_FILE
        state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
        fingerprints: dict[str, str] = {}
        results = []
        for number, stage in enumerate(self.stages, start=1):
            fingerprints[stage.name] = _fingerprint(stage, fingerprints)
            recorded = state.get(stage.name, {})
            label = f"[{number}/{len(self.stages)}] {stage.name}"
            if (not stage.always and recorded.get("fingerprint") == fingerprints[stage.name]
                    and all(p.exists() for p in stage.outputs)):
                log(f"{label}: unchanged, skipped")
                results.append(StageResult(stage.name, "skipped", 0.0, [str(p) for p in stage.outputs], recorded.get("summary", {})))
                continue
            log(f"{label}: running")
            state.pop(stage.name, None)  # a stage that fails part-way is not recorded as done
            started = time.perf_counter()
            summary = stage.run()
            seconds = time.perf_counter() - started
            log(f"{label}: done in {seconds:.1f} s")
            state[stage.name] = {"fingerprint": fingerprints[stage.name], "summary": summary, "seconds": round(seconds, 2),
                                 "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
            with atomic_path(state_path) as tmp:
                tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
            results.append(StageResult(stage.name, "ran", seconds, [str(p) for p in stage.outputs], summary))
        return results


def run_pipeline(config: PipelineConfig, progress: bool = True, log: Callable[[str], None] = print) -> list[StageResult]:
    """Run a pipeline (the Python form of ``recot run``)."""
    return Pipeline(config).run(progress, log)
