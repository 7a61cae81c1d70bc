"""``recot models``: models recot builds offline, by name (the embedded real LLM from its wheel)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from recot.cli.common import console, json_option, report_only_on_stdout


@click.group("models")
def models() -> None:
    """Models recot can build without a model hub: a real small LLM for teacher and student runs on CPU."""


@models.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """The model sources and what each is."""
    from recot.models import SOURCES

    rows = {name: {"summary": s.summary, "extra": s.extra} for name, s in SOURCES.items()}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, row in rows.items():
        click.echo(f"{name}\t{row['summary']} (pip install 'recot[{row['extra']}]')")


@models.command("get")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Build into this folder (default: a content-addressed cache folder).")
@json_option
def get_cmd(name: str, out: Path | None, as_json: bool) -> None:
    """Build model NAME as a plain Hugging Face folder (once per content) and print its path."""
    from recot.models import get_model, source

    source(name).check_installed()
    console.print(f"[dim]model {name}: building on first use (about a minute), then cached[/]")
    with report_only_on_stdout():
        folder = get_model(name, out)
    if as_json:
        click.echo(json.dumps({"name": name, "path": str(folder), **json.loads((folder / "recot-model.json").read_text())}, indent=2))
    else:
        click.echo(str(folder))
