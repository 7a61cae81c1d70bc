"""``recot curate``: ingest synthesis output into a store, run the rules, print the funnel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from recot.cli.common import console, emit, json_option, report_only_on_stdout, stdout

if TYPE_CHECKING:
    from recot.curation.shards import ShardedStore
    from recot.curation.store import Store


class StoreLocation(click.ParamType):
    """A local path, or a URL (``s3://bucket/prefix``) kept as one: object storage holds sharded stores."""

    name = "path|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from recot.curation.shard_fs import is_local, location

        found = location(value)
        return Path(value) if is_local(found) else found


store_option = click.option("--store", type=StoreLocation(), default="out/curation.duckdb", show_default=True,
                            help="The curation store: a DuckDB file, or the folder of a sharded store, local or on object "
                                 "storage (s3://bucket/prefix; `curate ingest` creates either, the rest read it).")
ray_option = click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
                          help="Run a sharded store's shard tasks on Ray: a local cluster, or the one at ADDRESS ('auto': "
                               "RAY_ADDRESS).")


@contextmanager
def _sharded(store: Path, ray_address: str | None) -> Iterator[tuple[ShardedStore | None, Any]]:
    """The sharded store at ``store`` (None for a one-node store) and the connected ``ray`` module (None without --ray)."""
    from recot.curation.shards import ShardedStore, is_sharded
    from recot.errors import DataError
    from recot.ray_cluster import ray_session

    if not is_sharded(store):
        if ray_address:
            raise DataError(store, "--ray runs the shards of a sharded store, and this store is one DuckDB file",
                            "create a sharded store: recot curate ingest TRACES --store DIR --shards N")
        yield None, None
        return
    if not ray_address:
        yield ShardedStore.open(store), None
        return
    with report_only_on_stdout(), ray_session(ray_address) as ray:  # Ray's messages (a worker died, ...) go to stderr
        yield ShardedStore.open(store), ray


@contextmanager
def _reading(store: Path) -> Iterator[Store]:
    """The store to read: a one-node store, or every shard of a sharded one seen as one."""
    from recot.curation.shards import ShardedStore, is_sharded
    from recot.curation.store import Store

    if is_sharded(store):
        with ShardedStore.open(store).view() as view:
            yield view
    else:
        with Store.existing(store) as db:
            yield db


@click.group("curate")
def curate() -> None:
    """Curate traces in a DuckDB store: ingest, rules with reason codes, the funnel report."""


@curate.command("ingest")
@click.argument("traces", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dataset", type=click.Path(exists=True, path_type=Path), help="Dataset whose catalog the rules check SIDs against.")
@click.option("--domain", help="The dataset's domain (default: its folder name); export mixes CoT per domain.")
@click.option("--lenient", is_flag=True, help="Load --dataset as a lenient synthesis did: bad records set aside, not fatal.")
@click.option("--shards", type=click.IntRange(min=1), help="Create --store as a folder of this many Parquet shards (curated "
              "shard by shard, on Ray with --ray); an existing sharded store keeps its count.")
@ray_option
@store_option
@json_option
def ingest(traces: tuple[Path, ...], dataset: Path | None, domain: str | None, lenient: bool, shards: int | None, ray_address: str | None,
           store: Path, as_json: bool) -> None:
    """Add traces.parquet files (glob them for shards); rows already in the store are skipped. Without --dataset the
    store takes the catalog synthesis wrote beside the traces. The one command that creates a store."""
    from recot.curation import shards as sharding
    from recot.curation.store import Store, check_traces_file
    from recot.data.loaders import load_dataset

    for path in traces:  # every input is checked before the store is touched: a failed command changes nothing
        check_traces_file(path)
    created = not store.exists()
    if shards is not None:
        sharding.ShardedStore.create(store, shards)
    payload: dict[str, Any] = {"store": f"{'created' if created else 'added to'} {store}"}
    with _sharded(store, ray_address) as (sharded, ray):
        with sharded.head() if sharded else Store(store) as db:
            if dataset is not None:
                data = load_dataset(dataset, lenient=lenient)
                payload["catalog_items"] = db.load_catalog(data.catalog, domain or dataset.name, data.item_domains())
            if sharded is None:
                payload["files"] = [asdict(db.ingest(path)) for path in traces]
        if sharded is not None:
            payload["files"] = [asdict(report) for report in sharding.ingest(sharded, list(traces), ray)]
    emit(payload, as_json, f"ingest into {store}")


@curate.command("rules")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Rule thresholds and switches (TOML/YAML).")
@ray_option
@store_option
@json_option
def rules(config: Path | None, ray_address: str | None, store: Path, as_json: bool) -> None:
    """Recompute every enabled rule's verdicts; prints failures per rule."""
    from recot.config import load_config
    from recot.curation import shards as sharding
    from recot.curation.rules import RulesConfig, run_rules

    settings = load_config(RulesConfig, config)
    with _sharded(store, ray_address) as (sharded, ray), _reading(store) as db:
        if not db.scalar("SELECT count(*) FROM catalog"):
            console.print("[yellow]the store has no catalog: SID and leakage rules see no items;[/] ingest with --dataset")
        failed = run_rules(db, settings) if sharded is None else sharding.run_rules(sharded, settings, ray)
    emit(failed, as_json, "failed per rule")


@curate.command("dedup")
@click.option("--threshold", type=float, help="Word 3-gram Jaccard at which traces are duplicates (default 0.8).")
@ray_option
@store_option
@json_option
def dedup(threshold: float | None, ray_address: str | None, store: Path, as_json: bool) -> None:
    """Cluster exact and near-duplicate traces per task; all but one per cluster get a 'duplicate' verdict."""
    from recot.curation import sharded_dedup
    from recot.curation.dedup import DedupConfig, run_dedup
    from recot.curation.store import Store

    config = DedupConfig(**({"threshold": threshold} if threshold else {}))
    with _sharded(store, ray_address) as (sharded, ray):
        if sharded is not None:
            found = sharded_dedup.run_dedup(sharded, config, ray)
        else:
            with Store.existing(store) as db:
                found = run_dedup(db, config)
    emit(found, as_json, "duplicates")


@curate.command("judge")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Judge teacher and sampling (TOML/YAML).")
@store_option
@json_option
def judge(config: Path | None, store: Path, as_json: bool) -> None:
    """Score R3 traces 1-5 with an LLM judge (the rules teacher without a config); cached, resumable. Item titles
    come from the store's catalog (loaded by `curate ingest --dataset`)."""
    from recot.config import load_config
    from recot.curation.judge import JudgeConfig, run_judge
    from recot.curation.store import Store

    settings = load_config(JudgeConfig, config)
    with Store.existing(store) as db:
        emit(run_judge(db, settings), as_json, "judge")


@curate.command("usefulness")
@click.option("--scorer", required=True, help="A causal LM folder (ideally student-sized, with the SID tokens).")
@click.option("--batch-size", default=8, show_default=True)
@store_option
@json_option
def usefulness(scorer: str, batch_size: int, store: Path, as_json: bool) -> None:
    """delta_ll per R3 trace: log p(target SID | prompt, CoT) - log p(target SID | prompt) under SCORER."""
    from recot.errors import require

    require("train", "torch", "transformers", needed_for="recot curate usefulness")
    from recot.curation.store import Store
    from recot.curation.usefulness import run_usefulness

    with Store.existing(store) as db:
        emit(run_usefulness(db, scorer, batch_size), as_json, "usefulness")


@curate.command("report")
@click.option("--examples", default=2, show_default=True, help="Example rows per failure reason.")
@click.option("--html", "page", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the funnel as one self-contained page (pictures inline, opens offline).")
@click.option("--synth", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The synthesis output folder: the page adds its planned requests, tokens, time and cost.")
@click.option("--plan", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A dry run's JSON (`recot synth run --dry-run --json`): the page shows it beside what was measured.")
@store_option
@json_option
def report(examples: int, page: Path | None, synth: Path | None, plan: Path | None, store: Path, as_json: bool) -> None:
    """The funnel: traces per task, checks and failures per rule and reason, with examples; what is kept."""
    from recot.curation.report import funnel
    from recot.curation.report_page import write_report_page

    with _reading(store) as db:
        result = funnel(db, examples)
        if page is not None:
            write_report_page(db, page, data=result, plan=_json_file(plan) if plan else None,
                              synth_summary=_json_file(synth / "summary.json") if synth else None)
            click.echo(f"page: {page.resolve()}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    stdout.print(f"[bold]{result['traces']}[/] traces {result['by_task']}; kept [bold]{result['kept']}[/] {result['kept_by_task']}")
    for rule, counts in result["rules"].items():
        stdout.print(f"  {rule:<14} checked {counts['checked']:>8}  failed {counts['failed']:>8}")
        for reason, entry in counts.get("reasons", {}).items():
            stdout.print(f"      {reason:<22} {entry['count']:>8}  e.g. {entry['examples'][0]['detail'] or entry['examples'][0]['text']!s:.80}")
    if slate := result["slate_accuracy"]:
        stdout.print(f"slate picks: {slate['hits']} of {slate['answered']} hit ({slate['accuracy']:.1%}); "
                     f"chance {slate['chance']:.1%}, most popular candidate {slate['most_popular']:.1%}")


@curate.command("compare")
@click.argument("outputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", "names", multiple=True, help="A name per output, in order (default: the folders' names).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("out/compare"), show_default=True,
              help="Where each output's curation store is kept (WORK/NAME.duckdb) and the page is written.")
@click.option("--rules", "rules_config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rule thresholds and switches (TOML/YAML), the same for every output.")
@click.option("--judge", "judge_config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also score every output's traces with this judge (TOML/YAML): the page shows the mean per task.")
@click.option("--html", "page", type=click.Path(dir_okay=False, path_type=Path), help="The page (default WORK/compare.html).")
@click.option("--examples", default=5, show_default=True, help="Disagreements shown per task.")
@json_option
def compare_cmd(outputs: tuple[Path, ...], names: tuple[str, ...], work: Path, rules_config: Path | None, judge_config: Path | None,
                page: Path | None, examples: int, as_json: bool) -> None:
    """Two or more synthesis outputs over the same planned requests, side by side: kept share per task, reasons, tokens,
    cost and time per kept trace, judge scores, and the requests where they disagree."""
    from recot.config import load_config
    from recot.curation.compare import Arm, compare, curate_output
    from recot.curation.compare_page import write_compare_page
    from recot.curation.judge import JudgeConfig, run_judge
    from recot.curation.rules import RulesConfig
    from recot.curation.store import Store
    from recot.errors import DataError

    if names and len(names) != len(outputs):
        raise DataError("--name", f"{len(names)} names for {len(outputs)} outputs", "give one --name per output, or none")
    rules = load_config(RulesConfig, rules_config)
    judge = load_config(JudgeConfig, judge_config) if judge_config else None
    arms = [Arm(name, work / f"{name}.duckdb", folder) for name, folder in zip(names or [o.name for o in outputs], outputs)]
    for arm in arms:
        console.print(f"curating {arm.name} ({arm.synth}) into {arm.store}")
        curate_output(arm.synth, arm.store, rules)
        if judge is not None:
            with Store.existing(arm.store) as db:
                run_judge(db, judge)
    result = compare(arms, examples)
    written = write_compare_page(result, page or work / "compare.html")
    click.echo(f"page: {written.resolve()}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for arm in result["arms"]:
        cost = f", cost per kept {arm['cost_per_kept']}" if arm["cost_per_kept"] is not None else ""
        share = f"{arm['kept_share']:.0%}" if arm["kept_share"] is not None else "-"
        stdout.print(f"[bold]{arm['name']}[/] ({arm['teacher']}:{arm['model']}): kept {arm['kept']} of {arm['traces']} ({share}), "
                     f"{arm['completion_tokens_per_kept']} completion tokens per kept{cost}")
    stdout.print(f"{result['common']} requests answered by all: {result['agreement']}")


def _json_file(path: Path) -> dict:
    """A JSON object written by recot (a dry run's plan, a job's summary), or a named error."""
    from recot.errors import DataError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot be read as JSON ({exc})", "pass the file recot wrote (summary.json, or a dry run's --json "
                        "output)") from None
    if not isinstance(data, dict):
        raise DataError(path, "holds no JSON object", "pass the file recot wrote (summary.json, or a dry run's --json output)")
    return data


@click.command("export")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder (written atomically).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Export settings (TOML/YAML).")
@click.option("--dataset", type=click.Path(exists=True, path_type=Path), help="The traces' dataset: drops rows that leak evaluation targets.")
@click.option("--cot-ratio", type=float, help="Share of R3 SFT rows that keep their CoT.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export.")
@click.option("--lenient", is_flag=True, help="Load --dataset as a lenient synthesis did: bad records set aside, not fatal.")
@store_option
@json_option
def export_cmd(name: str, out: Path, config: Path | None, dataset: Path | None, cot_ratio: float | None, overwrite: bool,
               lenient: bool, store: Path, as_json: bool) -> None:
    """Export the kept traces as NAME: Hugging Face parquet datasets for TRL, verl and LlamaFactory, and a data card."""
    from recot.config import load_config
    from recot.curation.export import ExportConfig, export

    settings = load_config(ExportConfig, config, {"name": name, "out": out, "dataset": dataset, "cot_ratio": cot_ratio,
                                                  "overwrite": overwrite or None, "lenient": lenient or None})
    with _reading(store) as db:
        card = export(db, settings)
    emit({"out": str(out), "formats": card["formats"], "decontamination": card["decontamination"]}, as_json, f"export {name}")


@click.group("review")
def review() -> None:
    """Human review in Argilla: push curated traces, pull responses into the store as decisions.

    The server comes from --url or $RECOT_ARGILLA_URL, the key from $RECOT_ARGILLA_API_KEY (never printed);
    scripts/argilla.sh starts a local one for development."""


def _review_options(command):
    for option in reversed([
        click.argument("dataset"),
        click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="ReviewConfig file (TOML/YAML)."),
        click.option("--workspace", help="Argilla workspace (default: argilla)."),
        click.option("--url", help="Argilla URL (default: $RECOT_ARGILLA_URL, then http://127.0.0.1:6900)."),
        store_option, json_option]):
        command = option(command)
    return command


@review.command("push")
@_review_options
@click.option("--where", help="SQL filter over the kept traces (default: R3 traces).")
@click.option("--reviews-per-record", type=int, help="Submitted responses each record needs.")
def review_push(dataset: str, config: Path | None, store: Path, as_json: bool, **overrides) -> None:
    """Create or update DATASET in Argilla with the selected traces; unchanged records are not sent again."""
    from recot.config import load_config
    from recot.curation.review import ReviewConfig, push
    from recot.curation.store import Store

    settings = load_config(ReviewConfig, config, {"dataset": dataset, **overrides})
    with Store.existing(store) as db:
        emit(push(db, settings), as_json, f"review push {dataset}")


@review.command("pull")
@_review_options
@click.option("--policy", type=click.Choice(["majority", "any_reject"]), help="How responses become decisions.")
def review_pull(dataset: str, config: Path | None, store: Path, as_json: bool, **overrides) -> None:
    """Read every response of DATASET into the store and recompute the review decisions export honours."""
    from recot.config import load_config
    from recot.curation.review import ReviewConfig, pull
    from recot.curation.store import Store

    settings = load_config(ReviewConfig, config, {"dataset": dataset, **overrides})
    with Store.existing(store) as db:
        emit(pull(db, settings), as_json, f"review pull {dataset}")
