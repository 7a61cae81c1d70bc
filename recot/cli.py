"""The ``recot`` command line: a thin layer over the Python API.

The root group gathers subcommand groups from the ``recot.commands`` entry points, so each
package (and any plugin) registers its own commands. Every reporting command takes ``--json``;
tables and JSON go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
import polars as pl
from rich.console import Console
from rich.table import Table
from rich.text import Text

from recot.synth.errors import DataError
from recot.synth.sid import SidError
from recot.synth.teachers.openai_http import TeacherError

console = Console(stderr=True)  # diagnostics
stdout = Console()  # tables: `recot ... > file` captures them


class RecotGroup(click.Group):
    """Loads registered subcommands lazily and turns input errors into a clear message and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({ep.name for ep in entry_points(group="recot.commands")})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        found = [ep for ep in entry_points(group="recot.commands") if ep.name == name]
        return found[0].load() if found else None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (DataError, SidError, TeacherError) as exc:
            console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            sys.exit(2)


@click.group(cls=RecotGroup)
@click.version_option(package_name="recot")
def main() -> None:
    """recot: reasoning training data for generative recommenders."""


def emit(payload: dict, as_json: bool, title: str) -> None:
    """Print a report on stdout, as JSON or as a readable table."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    table = Table(title=title, show_header=False)
    for key, value in payload.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))
    stdout.print(table)


def save_rejects(rejects: pl.DataFrame, report: Path | None, default: Path) -> str | None:
    """Write lenient-mode rejects so nothing is dropped unseen; returns where they went."""
    if rejects.is_empty():
        return None
    from recot.synth.sid_files import write_table

    path = report or default
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(rejects, path)
    console.print(f"[yellow]{rejects.height} rejected records written to {path}[/]")
    return str(path)


lenient_option = click.option("--lenient", is_flag=True, help="Skip bad records instead of failing; they go to --report.")
report_option = click.option("--report", type=click.Path(path_type=Path), help="Where lenient mode writes rejected records (.csv/.parquet/.jsonl).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")



@click.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (overrides the config).")
@click.option("--no-progress", is_flag=True, help="No progress bars inside stages.")
@json_option
def run_cmd(config: Path, out: Path | None, no_progress: bool, as_json: bool) -> None:
    """Run the pipeline in CONFIG: synth, curate, judge, dedup, review, export, sft, grpo, eval; unchanged stages are skipped."""
    from dataclasses import asdict

    from recot.pipeline import load_pipeline, run_pipeline

    with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs: stdout is for the report
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
    "pipeline": "recot.pipeline:PipelineConfig", "synth": "recot.synth.job:SynthConfig",
    "teacher.rules": "recot.synth.teachers:RulesTeacherConfig", "teacher.vllm": "recot.synth.teachers:VLLMTeacherConfig",
    "teacher.openai": "recot.synth.teachers:OpenAITeacherConfig", "sampling": "recot.synth.teachers:Sampling",
    "rules": "recot.curation.rules:RulesConfig", "judge": "recot.curation.judge:JudgeConfig",
    "dedup": "recot.curation.dedup:DedupConfig", "review": "recot.curation.review:ReviewConfig",
    "export": "recot.curation.export:ExportConfig", "sft": "recot.trainer.sft:RecSFTConfig",
    "grpo": "recot.trainer.grpo:RecGRPOConfig", "recipe": "recot.trainer.recipe:RecipeConfig",
    "eval": "recot.trainer.evaluate:EvalConfig", "ablation": "recot.trainer.ablation:AblationConfig",
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
