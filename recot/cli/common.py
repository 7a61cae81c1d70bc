"""What every ``recot`` command shares: the consoles, report printing, common options, rejected records.

Tables and JSON go to stdout, diagnostics to stderr. Nothing here imports the data stack (polars,
DuckDB) or the trainer at import time, so ``recot --help`` starts at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import polars as pl

console = Console(stderr=True)  # diagnostics
stdout = Console()  # tables: `recot ... > file` captures them


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
    from recot.data.sid_files import write_table

    path = (report or default).resolve()  # named whole: a default lands in the current folder, which a user may not expect
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(rejects, path)
    console.print(f"[yellow]{rejects.height} rejected records written to {escape(str(path))}[/]")
    return str(path)


lenient_option = click.option("--lenient", is_flag=True, help="Skip bad records instead of failing; they go to --report.")
report_option = click.option("--report", type=click.Path(path_type=Path), help="Where lenient mode writes rejected records (.csv/.parquet/.jsonl).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")


@contextmanager
def report_only_on_stdout() -> Iterator[None]:
    """Inside the block, whatever writes to stdout (a trainer's log, Ray's raylet and worker messages, which write to
    the file descriptor itself) goes to stderr instead, so stdout holds only the report printed after it."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
