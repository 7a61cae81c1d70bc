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

    from recot.runs.pipeline import load_pipeline, run_pipeline

    with report_only_on_stdout():  # trainers print their logs: stdout is for the report
        results = run_pipeline(load_pipeline(config, {"out": out}), progress=not no_progress,
                               log=lambda line: console.print(line, highlight=False))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2, default=str))
        return
    table = Table(title=f"pipeline {config}")
    for column in ("stage", "status", "seconds", "figures", "output"):
        table.add_column(column, overflow="fold")
    for r in results:
        figures = ", ".join(f"{k}={_short(v)}" for k, v in r.summary.items() if k != "model")
        table.add_row(r.name, r.status, f"{r.seconds:.1f}", figures, "\n".join(r.outputs))
    stdout.print(table)


def _short(value) -> str:
    """A figure for a table cell: floats to 4 significant digits, the rest as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
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
