"""The root ``recot`` group. Built-in commands are named here with their one-line help and loaded only when
run, so ``recot --help`` imports neither the data stack nor the trainer; plugins add commands through the
``recot.commands`` entry points. Errors a user can act on end as one message and exit code 2."""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.metadata import entry_points

import click

from recot.errors import DataError, SidError, TeacherError, require

TRAIN = ("train", "torch", "transformers", "trl", "datasets")  # an extra and the modules it installs
# commands that need an extra: checked before their module is imported, so the user reads the pip command
NEEDS = {"train": TRAIN, "eval": TRAIN}
# name -> (module:attribute, the help line `recot --help` shows without importing the module)
COMMANDS = {
    "config": ("recot.cli.run:config_cmd", "List the settings of a config (their types, defaults and what they do)."),
    "curate": ("recot.cli.curate:curate", "Curate traces in a DuckDB store: ingest, rules with reason codes, the funnel report."),
    "data": ("recot.cli.synth:data", "Inspect datasets (catalog + behaviours)."),
    "eval": ("recot.cli.train:eval_cmd", "Evaluate a trained model and the sequential baselines on an export's held-out rows."),
    "export": ("recot.cli.curate:export_cmd", "Export kept traces as datasets for TRL, verl and LlamaFactory, with a data card."),
    "models": ("recot.cli.models:models", "Models built offline by name: the embedded real LLM for CPU teacher and student runs."),
    "review": ("recot.cli.curate:review", "Human review in Argilla: push traces, pull decisions."),
    "run": ("recot.cli.run:run_cmd", "Run a pipeline config; unchanged stages are skipped."),
    "sid": ("recot.cli.synth:sid", "Build semantic IDs from item text, or convert them between dialects."),
    "synth": ("recot.cli.synth:synth_group", "Synthesise traces with a teacher: resumable jobs, batch files, Ray shards."),
    "train": ("recot.cli.train:train", "Train on curated exports: SFT, GRPO, the recipe, the ablation grid."),
}


def _load(target: str) -> click.Command:
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)


class RecotGroup(click.Group):
    """Loads subcommands when they run and turns input errors into a clear message and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | {ep.name for ep in entry_points(group="recot.commands")})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            if name in NEEDS:
                extra, *modules = NEEDS[name]
                require(extra, *modules, needed_for=f"recot {name}")
            return _load(COMMANDS[name][0])
        found = [ep for ep in entry_points(group="recot.commands") if ep.name == name]
        return found[0].load() if found else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the help lines above (plugins' from their own commands), nothing imported."""
        rows = []
        for name in self.list_commands(ctx):
            if name in COMMANDS:
                rows.append((name, COMMANDS[name][1]))
            elif (command := self.get_command(ctx, name)) is not None:
                rows.append((name, command.get_short_help_str(formatter.width)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (DataError, SidError, TeacherError) as exc:
            from rich.markup import escape

            from recot.cli.common import console

            console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=RecotGroup)
@click.version_option(package_name="recot")
def main() -> None:
    """recot: reasoning training data for generative recommenders."""
