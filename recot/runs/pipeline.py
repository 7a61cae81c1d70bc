"""``recot run PIPELINE.toml``: the stages from a catalog to an evaluated model, in order, each run only when
what it reads changed.

A pipeline config names the dataset, one output folder, and a table per stage (the same settings as the
stage's own config file: ``[synth]`` is a SynthConfig, ``[rules]`` a RulesConfig, ``[sft]`` a RecSFTConfig,
...). The pipeline fills in what one stage hands the next (the synthesis output, the store, the export, the
checkpoints, the split), so no stage re-derives an earlier decision. Stages, in order:

    synth -> curate (fresh store: ingest + rules) -> judge -> dedup -> review -> export
          -> tiny_model -> pretrain -> align -> sft -> grpo -> unify -> eval

The training stages are the source designs' recipe as one chain, each from the checkpoint of the one before:
pre-training on item text (a stand-in for a pretrained LLM), itemic alignment on the export's align rows,
reasoning SFT at the export's CoT ratio, GRPO with reasoning, and specialise-then-unify across domains.

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
from recot.models import resolve
from recot.runs.stages import TrainKind
from recot.synth.job import SynthConfig
from recot.synth.prompts import PromptLibrary

STATE_FILE = "pipeline-state.json"
REPORT_PAGE = "report.html"
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
    pretrain: dict[str, Any] | None = Field(None, description="[pretrain]: RecPretrainConfig settings: causal LM on the export's "
                                            "item text, from the base model")
    align: dict[str, Any] | None = Field(None, description="[align]: RecAlignConfig settings: itemic alignment on the export's "
                                         "align rows, from the pre-trained (or base) model; writes the perception probe")
    sft: dict[str, Any] | None = Field(None, description="[sft]: RecSFTConfig settings (model, data and output paths are the pipeline's)")
    grpo: dict[str, Any] | None = Field(None, description="[grpo]: RecGRPOConfig settings, from the SFT checkpoint")
    unify: dict[str, Any] | None = Field(None, description="[unify]: RecipeConfig settings but the paths (domains, unify, "
                                         "rft_samples, rewards, grpo, sft, distill): GRPO experts per domain from the last "
                                         "checkpoint, then one model; evaluation reads the unified model")
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
        if self.sft is None and (self.pretrain is not None or self.align is not None):
            raise ValueError("[pretrain] and [align] lead into SFT: add an [sft] table")
        if self.sft is not None and not (self.base_model or self.tiny_model):
            raise ValueError("[sft] needs a model to start from: set base_model, or add a [tiny_model] table")
        if self.grpo is not None and self.sft is None:
            raise ValueError("[grpo] starts from the SFT checkpoint: add an [sft] table")
        if self.unify is not None and self.sft is None:
            raise ValueError("[unify] starts from the last trained checkpoint: add an [sft] table")
        if (self.align is not None or self.pretrain is not None) and "align" not in self.export.formats:
            raise ValueError("[pretrain] and [align] read the export's align format: add align to [export] formats")
        if self.sft is not None:
            require("train", "torch", "transformers", "trl", "datasets", needed_for="the pipeline's training stages")
            from recot.runs.recipe import RecipeConfig
            from recot.trainer.align import RecAlignConfig, RecPretrainConfig
            from recot.trainer.grpo import RecGRPOConfig
            from recot.trainer.sft import RecSFTConfig

            for name, kind in (("pretrain", RecPretrainConfig), ("align", RecAlignConfig), ("sft", RecSFTConfig), ("grpo", RecGRPOConfig)):
                if getattr(self, name) is not None:
                    check_stage(kind, getattr(self, name), name, output_dir=str(self.out / name))
            if self.unify is not None:
                RecipeConfig(**{**self.unify, "base_model": str(self.out / "sft"), "export": self.out / "export", "out": self.out / "unify"})
        if self.eval is not None:
            from recot.trainer.evaluate import EvalConfig

            check_stage(EvalConfig, self.eval, "eval", **self._eval_fixed("sft"))
        return self

    def _eval_fixed(self, trained: str) -> dict[str, Any]:
        """What the pipeline decides for evaluation: the model it trained and the export it trained on (whose held-out
        rows, catalog and split evaluation reads)."""
        return {"model": self.model_dir(trained), "export": self.out / "export", "out": self.out / "eval"}

    def model_dir(self, stage: str) -> Path:
        """Where a training stage's model is (the unify stage's is its unified model)."""
        return self.out / "unify" / "unified" if stage == "unify" else self.out / stage


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
        return self.config.model_dir(name)

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
        start = resolve(c.base_model) if c.base_model else self._model_dir("base-model")  # a model source is built here
        base_inputs = [Path(start)] if c.base_model and Path(start).exists() else []
        for name in ("pretrain", "align", "sft"):  # each from the checkpoint before it
            settings = getattr(c, name)
            if settings is None:
                continue
            stages.append(Stage(name, partial(self._run_train, name, settings, start), {name: settings, "base_model": c.base_model},
                                [self._model_dir(name)], base_inputs, ["export", *base]))
            start, base = self._model_dir(name), [name]
        trained = "sft"
        if c.grpo is not None:
            stages.append(Stage("grpo", partial(self._run_train, "grpo", c.grpo, self._model_dir("sft")), c.grpo,
                                [self._model_dir("grpo")], after=["sft", "export"]))
            trained = "grpo"
        if c.unify is not None:
            stages.append(Stage("unify", partial(self._run_unify, c.unify, trained), c.unify, [self._model_dir("unify")],
                                after=[trained, "export"]))
            trained = "unify"
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

    def _run_train(self, kind: TrainKind, settings: dict[str, Any], start: str | Path) -> dict[str, Any]:
        from recot.runs.stages import train_stage
        from recot.trainer.probe import PROBE_FILE
        from recot.trainer.sft import chosen_epoch

        target = self._model_dir(kind)
        trainer = train_stage(kind, settings, start, self.out / "export", target)
        history = trainer.state.log_history
        losses, rewards = [e["loss"] for e in history if "loss" in e], [e["reward"] for e in history if "reward" in e]
        summary: dict[str, Any] = {"model": str(target), "from": str(start), "steps": trainer.state.global_step}
        if kind == "grpo":
            return summary | {"mean_reward_first": rewards[0] if rewards else None, "mean_reward_last": rewards[-1] if rewards else None}
        summary |= {"epoch": chosen_epoch(trainer), "best_eval_loss": trainer.state.best_metric, "rows_too_long": trainer.rows_too_long,
                    "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
        if (target / PROBE_FILE).exists():
            summary["probe"] = json.loads((target / PROBE_FILE).read_text())
        return summary

    def _run_unify(self, settings: dict[str, Any], trained: str) -> dict[str, Any]:
        from recot.runs.recipe import RecipeConfig, run_recipe

        return run_recipe(RecipeConfig(**{**settings, "base_model": str(self._model_dir(trained)), "export": self.out / "export",
                                          "out": self.out / "unify"}))

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
        self.write_page(log)
        return results

    def write_page(self, log: Callable[[str], None]) -> None:
        """The funnel page of this run's store, ``OUT/report.html`` (rewritten each run: it is cheap)."""
        from recot.curation.report_page import write_report_page
        from recot.curation.store import Store

        summary = self.config.synth.out / "summary.json"
        with Store(self.store_path) as db:
            write_report_page(db, self.out / REPORT_PAGE,
                              synth_summary=json.loads(summary.read_text()) if summary.exists() else None)
        log(f"funnel page: {self.out / REPORT_PAGE}")


def run_pipeline(config: PipelineConfig, progress: bool = True, log: Callable[[str], None] = print) -> list[StageResult]:
    """Run a pipeline (the Python form of ``recot run``)."""
    return Pipeline(config).run(progress, log)
