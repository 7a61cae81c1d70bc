"""``recot data``, ``recot sid`` and ``recot synth``: datasets, semantic IDs and synthesis jobs."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from recot.cli.common import console, emit, json_option, lenient_option, report_only_on_stdout, report_option, save_rejects
from recot.errors import DataError
from recot.formats.sid import SidDialect
from recot.teachers.batch_files import OPENAI_MAX_BYTES, OPENAI_MAX_REQUESTS


@click.group()
def data() -> None:
    """Inspect datasets (catalog + behaviours)."""


@data.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@lenient_option
@report_option
@json_option
def data_inspect(path: Path, lenient: bool, report: Path | None, as_json: bool) -> None:
    """Items, users, sequence lengths, missing text and SID collisions of a dataset."""
    from recot.data.loaders import load_dataset
    from recot.data.summary import summarize

    ds = load_dataset(path, lenient=lenient)
    payload = summarize(ds)
    payload["rejects_file"] = save_rejects(ds.rejects, report, Path("recot-rejects.csv"))
    emit(payload, as_json, f"dataset {ds.name}")


@click.group()
def sid() -> None:
    """Build semantic IDs and convert them between dialects."""


@sid.command("build")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (replaced atomically).")
@click.option("--config", type=click.Path(exists=True, path_type=Path), help="RQ-KMeans settings (TOML/YAML).")
@click.option("--levels", type=int)
@click.option("--codebook-size", type=int)
@click.option("--balanced/--no-balanced", default=None)
@click.option("--collisions", type=click.Choice(["extra_level", "reassign", "none"]))
@click.option("--iterations", type=int)
@click.option("--seed", type=int)
@click.option("--embeddings", type=click.Path(exists=True, path_type=Path), help=".npy (catalog order) or .parquet (item_id, embedding).")
@click.option("--model", help="sentence-transformers model path; default: the bundled all-MiniLM-L6-v2.")
@click.option("--fields", default="title,brand", show_default=True, help="Item fields embedded, comma-separated.")
@click.option("--dialect", "dialect_example", help="Write SIDs like this example, e.g. '<s_a_0><s_b_0>'.")
@lenient_option
@report_option
@json_option
def sid_build(path: Path, out: Path, config: Path | None, levels: int | None, codebook_size: int | None,
              balanced: bool | None, collisions: str | None, iterations: int | None, seed: int | None,
              embeddings: Path | None, model: str | None, fields: str, dialect_example: str | None,
              lenient: bool, report: Path | None, as_json: bool) -> None:
    """RQ-KMeans SIDs for a dataset's catalog, with a codebook and collision report."""
    from recot.config import load_config
    from recot.data.embeddings import embed_texts, load_embeddings
    from recot.data.loaders import load_dataset
    from recot.data.sid_builder import RQKMeansConfig, build_sids
    from recot.data.sid_files import write_sid_build

    settings = load_config(RQKMeansConfig, config, dict(
        levels=levels, codebook_size=codebook_size, balanced=balanced, collisions=collisions,
        iterations=iterations, seed=seed))
    ds = load_dataset(path, lenient=lenient)
    catalog = ds.catalog
    ids = catalog.items["item_id"]
    if embeddings:
        vectors = load_embeddings(embeddings, ids)
    else:
        console.print(f"embedding {len(catalog)} items ({escape(fields)}) with {escape(model or 'all-MiniLM-L6-v2 (bundled)')}")
        vectors = embed_texts(catalog.text(fields.split(",")).to_list(), model, progress=not as_json)
    try:
        built = build_sids(vectors, settings)
    except ValueError as exc:
        raise DataError(path, str(exc), "lower --codebook-size or add items") from None
    if built.report["collisions_after"]["collision_groups"]:
        console.print(f"[yellow]warning: {built.report['collisions_after']['items_in_collisions']} items still share "
                      "a SID (a prefix ran out of codes); use --collisions extra_level or a larger --codebook-size[/]")
    dialect = SidDialect.detect(dialect_example) if dialect_example else catalog.dialect
    write_sid_build(out, catalog.with_sids(ids.to_list(), built.codes, dialect), built.report)
    payload = {"out": str(out), **{k: built.report[k] for k in ("items", "sid_levels", "collisions_before", "collisions_after")},
               "codes_used_per_level": [lvl["codes_used"] for lvl in built.report["levels"]],
               "rejects_file": save_rejects(ds.rejects, report, out.parent / f"{out.name}-rejects.csv")}
    emit(payload, as_json, "SID build")


@sid.command("convert")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--to", "example", required=True, help="An example SID in the target dialect, e.g. '<|sid_begin|><s_a_1><s_b_2><|sid_end|>'.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--column", default="sid", show_default=True, help="SID column of a table file.")
@lenient_option
@report_option
@json_option
def sid_convert(source: Path, example: str, out: Path, column: str, lenient: bool, report: Path | None, as_json: bool) -> None:
    """Rewrite a SID file (MiniOneRec sids.json, parquet, csv, jsonl) in another dialect."""
    from recot.data.sid_files import convert_sid_file
    from recot.formats.sid import parse_sid

    codes, dialect = parse_sid(example)
    count, rejects = convert_sid_file(source, out, dialect, column, lenient, levels=len(codes))
    payload = {"out": str(out), "converted": count, "rejects": rejects.height,
               "rejects_file": save_rejects(rejects, report, out.with_name(out.stem + "-rejects.csv"))}
    emit(payload, as_json, "SID convert")


@click.group("synth")
def synth_group() -> None:
    """Synthesise traces with a teacher (rules baseline, vLLM in-process, OpenAI-compatible servers)."""


@synth_group.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--shard", default="0/1", show_default=True, help="Run shard I of N (subjects split by a stable hash).")
@click.option("--out", type=click.Path(path_type=Path), help="Output directory (overrides the config).")
@click.option("--limit", type=int, help="Subjects per task, spread over the plan (overrides the config).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--lenient", is_flag=True, default=None,
              help="Skip bad dataset records instead of failing; they go to OUT/dataset-rejects.csv with their reasons.")
@click.option("--dry-run", is_flag=True, help="Plan only: requests, prompt tokens and cost, nothing sent.")
@click.option("--ray", "ray_shards", type=int, help="Run this many shards as tasks on a Ray cluster and merge them.")
@click.option("--ray-address", help="The Ray cluster (default: RAY_ADDRESS, else a local one).")
@click.option("--gpus-per-shard", type=float, default=0.0, show_default=True, help="GPUs Ray gives each shard's teacher.")
@json_option
def synth_run(config: Path, shard: str, out: Path | None, limit: int | None, no_progress: bool, lenient: bool | None,
              dry_run: bool, ray_shards: int | None, ray_address: str | None, gpus_per_shard: float, as_json: bool) -> None:
    """Run or resume the synthesis job in CONFIG (TOML/YAML); rows go to OUT/traces.parquet."""
    from dataclasses import asdict

    from recot.synth import job

    part = _shard(shard)
    settings = job.load_synth_config(config, {"out": out, "limit": limit, "lenient": lenient})
    if dry_run:
        emit(job.dry_run(settings, part), as_json, "dry run: nothing sent")
        return
    if settings.teacher.kind == "rules":
        console.print("[yellow]teacher: rules, the deterministic non-LLM baseline.[/] For an LLM set \\[teacher] "
                      "kind = \"vllm\" with model = \"PATH\", or kind = \"openai\" with base_urls and model.")
    with report_only_on_stdout():
        if ray_shards:
            from recot.synth.on_ray import run_on_ray

            report = run_on_ray(settings, ray_shards, ray_address, gpus_per_shard, progress=not no_progress)
        else:
            report = job.run_synth(settings, part, progress=not no_progress)
    emit(asdict(report), as_json, "synthesis")
    if report.dataset_rejects:
        console.print(f"[yellow]{sum(report.dataset_rejects.values())} bad dataset records skipped; written with their "
                      f"reasons to {escape(str(Path(report.out) / 'dataset-rejects.csv'))}[/]")
    if not report.balanced:
        console.print(f"[red]counts do not add up:[/] planned {report.planned}, ok {report.ok}, rejected "
                      f"{sum(report.rejected.values())}, unanswered {sum(report.unanswered.values())}; this is a recot bug, please report it")
        sys.exit(1)
    if report.unanswered:
        console.print(f"[red]{sum(report.unanswered.values())} requests got no answer;[/] run the same command again to retry only those.")
        sys.exit(1)



def _shard(text: str):
    from recot.synth.requests import Shard

    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None


@synth_group.command("batch-write")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--shard", default="0/1", show_default=True, help="Write shard I of N.")
@click.option("--max-requests", type=int, default=OPENAI_MAX_REQUESTS, show_default=True, help="Requests per file at most (the provider's limit).")
@click.option("--max-bytes", type=int, default=OPENAI_MAX_BYTES, show_default=True, help="Bytes per file at most.")
@json_option
def synth_batch_write(config: Path, shard: str, max_requests: int, max_bytes: int, as_json: bool) -> None:
    """Write the job's unanswered requests as OpenAI Batch API JSONL (OUT/batch/requests-NNNNN.jsonl).

    Submit the files to OpenAI's Batch API, or run them with vLLM
    (python -m vllm.entrypoints.openai.run_batch -i FILE -o OUTPUT --model ...), then import the
    outputs with `recot synth batch-read`."""
    from dataclasses import asdict

    from recot.synth.job import load_synth_config, write_batch

    report, files = write_batch(load_synth_config(config), _shard(shard), max_requests, max_bytes)
    emit(asdict(report) | {"files": [str(f) for f in files]}, as_json, "batch files")
    if not report.balanced:
        console.print("[red]counts do not add up;[/] this is a recot bug, please report it")
        sys.exit(1)


@synth_group.command("batch-read")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--shard", default="0/1", show_default=True, help="The shard the files were written for.")
@json_option
def synth_batch_read(config: Path, files: tuple[Path, ...], shard: str, as_json: bool) -> None:
    """Import batch output and error FILES into the job, validated like live answers, and export
    OUT/traces.parquet. Importing a file twice changes nothing."""
    from dataclasses import asdict

    from recot.synth.job import load_synth_config, read_batch

    report, unknown = read_batch(load_synth_config(config), list(files), _shard(shard))
    emit(asdict(report) | {"unknown_ids": len(unknown)}, as_json, "batch import")
    if unknown:
        console.print(f"[red]{len(unknown)} ids in the files are no request of this job[/] (e.g. {escape(unknown[0])}); they were "
                      "not imported: check that the files belong to this job and config")
    if not report.balanced or unknown:
        sys.exit(1)
    if report.unanswered:
        console.print(f"[yellow]{sum(report.unanswered.values())} requests are still unanswered;[/] write them again with "
                      "`recot synth batch-write`, or run the job live.")
