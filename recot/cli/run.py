"""``recot run PIPELINE`` and ``recot config NAME``: the whole pipeline, and every config's settings."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from recot.cli.common import console, json_option, report_only_on_stdout, stdout


@click.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (overrides the config).")
@click.option("--no-progress", is_flag=True, help="No progress bars inside stages.")
@json_option
def run_cmd(config: Path, out: Path | None, no_progress: bool, as_json: bool) -> None:
    """Run the pipeline in CONFIG: synth, curate, judge, dedup, review, export, sft, grpo, eval; unchanged stages are skipped."""
    from dataclasses import asdict

    from recot.runs.pipeline import REPORT_PAGE, STATE_FILE, load_pipeline, run_pipeline

    with report_only_on_stdout():  # trainers print their logs: stdout is for the report
        pipeline = load_pipeline(config, {"out": out})
        results = run_pipeline(pipeline, progress=not no_progress,
                               log=lambda line: console.print(line, highlight=False))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2, default=str))
        return
    table = Table(title=f"pipeline {config}")
    for column in ("stage", "status", "seconds", "headline"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(r.name, r.status, f"{r.seconds:.1f}", headline(r.name, r.summary))
    stdout.print(table)
    stdout.print(f"the funnel: {pipeline.out / REPORT_PAGE}; every figure: {pipeline.out / STATE_FILE}, or "
                 f"`recot run {config} --json`")


def headline(stage: str, summary: dict) -> str:
    """One line that says what a stage did (the whole summary is in ``--json`` and the pipeline state)."""
    def total(value) -> int:
        return sum(value.values()) if isinstance(value, dict) else int(value or 0)

    if stage == "synth":
        return (f"{summary.get('ok', 0)} of {summary.get('planned', 0)} planned ok, {total(summary.get('rejected'))} rejected, "
                f"{total(summary.get('unanswered'))} unanswered")
    if stage == "curate":
        failing = {rule: n for rule, n in (summary.get("failed_per_rule") or {}).items() if n}
        worst = ", ".join(f"{rule} {n}" for rule, n in sorted(failing.items(), key=lambda x: -x[1])[:3]) or "none"
        return f"{summary.get('ingested', 0)} ingested; failed a rule: {worst}"
    if stage == "dedup":
        return f"{total(summary.get('exact_dropped'))} exact and {total(summary.get('near_dropped'))} near duplicates dropped"
    if stage == "export":
        rows = summary.get("rows") or {}
        return f"{summary.get('kept', 0)} kept; rows " + ", ".join(f"{name} {n}" for name, n in rows.items())
    if stage == "eval":
        recall = {key.split(".")[0]: value for key, value in summary.items() if ".recall@" in key}
        k = next((key.split("@")[1] for key in summary if ".recall@" in key), "")
        return f"Recall@{k} on {summary.get('rows', 0)} rows: " + ", ".join(f"{name} {value:.4f}" for name, value in recall.items())
    if "best_eval_loss" in summary or "last_loss" in summary:
        loss = summary.get("best_eval_loss")
        return f"{summary.get('steps', 0)} steps, " + (f"best eval loss {loss:.4f}" if loss is not None
                                                       else f"last loss {_short(summary.get('last_loss'))}")
    if stage == "grpo":
        return (f"{summary.get('steps', 0)} steps, mean reward {_short(summary.get('mean_reward_first'))} -> "
                f"{_short(summary.get('mean_reward_last'))}")
    return ", ".join(f"{key}={_short(value)}" for key, value in summary.items() if not isinstance(value, dict))


def _short(value) -> str:
    """A figure for a table cell: floats to 4 significant digits, the rest as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str)


CONFIGS = {
    "pipeline": "recot.runs.pipeline:PipelineConfig", "synth": "recot.synth.job:SynthConfig",
    "teacher.rules": "recot.teachers:RulesTeacherConfig", "teacher.vllm": "recot.teachers:VLLMTeacherConfig",
    "teacher.openai": "recot.teachers:OpenAITeacherConfig", "sampling": "recot.teachers:Sampling",
    "rules": "recot.curation.rules:RulesConfig", "judge": "recot.curation.judge:JudgeConfig",
    "dedup": "recot.curation.dedup:DedupConfig", "review": "recot.curation.review:ReviewConfig",
    "export": "recot.curation.export:ExportConfig", "sft": "recot.trainer.sft:RecSFTConfig",
    "align": "recot.trainer.align:RecAlignConfig", "pretrain": "recot.trainer.align:RecPretrainConfig",
    "grpo": "recot.trainer.grpo:RecGRPOConfig", "recipe": "recot.runs.recipe:RecipeConfig",
    "eval": "recot.trainer.evaluate:EvalConfig", "ablation": "recot.runs.ablation:AblationConfig",
}


@click.command("config")
@click.argument("name", type=click.Choice(sorted(CONFIGS)))
@json_option
def config_cmd(name: str, as_json: bool) -> None:
    """List the settings of a config (their types, defaults and what they do)."""
    import dataclasses
    from importlib import import_module

    from pydantic import BaseModel

    module, _, attr = CONFIGS[name].partition(":")
    kind = getattr(import_module(module), attr)

    def shown(value) -> str:
        return "(a table)" if isinstance(value, BaseModel) else repr(value)

    if dataclasses.is_dataclass(kind):
        rows = [(f.name, _type_name(f.type), "" if f.default is dataclasses.MISSING else shown(f.default), f.metadata.get("help", ""))
                for f in dataclasses.fields(kind) if f.init]
    else:
        rows = [(key, _type_name(info.annotation), "(required)" if info.is_required() else
                 shown(info.get_default(call_default_factory=True)), info.description or "")
                for key, info in kind.model_fields.items()]
    if as_json:
        click.echo(json.dumps([dict(zip(("key", "type", "default", "help"), row)) for row in rows], indent=2, default=str))
        return
    table = Table(title=f"{name}: {attr}")
    for column in ("key", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    stdout.print(table)


def _type_name(annotation) -> str:
    """``SynthConfig`` for a class, ``list[str] | None`` for the rest (module paths left out)."""
    import re

    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*)", r"\1", text)
