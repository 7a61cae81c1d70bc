"""Export kept traces as Hugging Face datasets for TRL (and verl, LlamaFactory), with a data card.

The student's prompts come from :mod:`recot.formats.student` (the teacher's prompts carry teacher
instructions and JSON demands the student must not learn). Every format is a folder of parquet
splits, ``train`` and ``validation``, split by user so that no user is in both; R3 completions
always end with the real next item's SID. Formats:

- ``sft``: conversational ``messages`` (user, assistant); R3 rows carry the CoT or, for a
  ``1 - cot_ratio`` share of them, only the answer;
- ``prompt_completion``: TRL's conversational prompt/completion pair of the same rows;
- ``grpo``: prompt-only R3 rows with ``target_sid``, ``target``, ``history``, ``history_sids`` for rewards;
- ``verl``: ``data_source``, ``prompt``, ``ability``, ``reward_model`` {style, ground_truth}, ``extra_info``;
- ``sharegpt``: LlamaFactory's ``conversations`` (from human / gpt);
- ``align``: itemic alignment rows (:mod:`recot.formats.align`): SID <-> text pairs, R1 relations, behaviour
  documents of the training split, item text; written by default when ``dataset`` is set (it needs the events).

Selection: ``min_judge`` and ``min_delta_ll`` thresholds on R3 rows, and ``top_k_per_user`` (best
rows per user and task by judge score, then delta_ll). With ``dataset`` set, rows that would leak an evaluation target (the same user and target as a
valid/test sample, or a target at or after the user's cut-off) are dropped and counted.

The export is the whole hand-off to training: beside the formats it writes ``catalog.parquet`` (SIDs, titles),
``split.json`` (the split the store recorded at ingest: an export without one is refused, never a split chosen
again), ``tasks.json`` and, with ``dataset`` set, ``next_item/{train,valid,test}.parquet`` (every part's rows in
the student prompt) that evaluation reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recot.cost import Price, spent
from recot.curation.align import ALIGN, align_rows, write_align
from recot.curation.next_item import NEXT_ITEM, write_next_item
from recot.curation.report import KEPT_SQL, funnel
from recot.curation.rules import COT, SLATE
from recot.curation.store import TASK_COLUMNS, Store
from recot.curation.trace_columns import trace_columns
from recot.data.catalog import CATALOG_FILE
from recot.data.loaders import Dataset, load_dataset
from recot.errors import DataError
from recot.formats.cot import COT_PATTERN, THINK_CLOSE, think_block_sql
from recot.formats.splits import Split, SplitSpec
from recot.formats.student import (
    ASK_DIRECT,
    ASK_PICK_DIRECT,
    ASK_PICK_THINK,
    ASK_THINK,
    VERL_SOURCE,
    prompt_sql,
    sql_text,
    student_sql,
    with_slate_sql,
)
from recot.formats.tasks import TASKS_FILE
from recot.io import atomic_path, frame_of

Format = Literal["sft", "prompt_completion", "grpo", "verl", "sharegpt", "align"]
FORMATS: tuple[Format, ...] = ("sft", "prompt_completion", "grpo", "verl", "sharegpt", "align")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the dataset's name (its card is data_cards/NAME.md)")
    out: Path = Field(description="the export folder, written atomically")
    formats: list[Format] = Field(description="sft, prompt_completion, grpo, verl, sharegpt, align (default: all; align "
                                  "only with dataset set)")
    tasks: list[str] | None = Field(None, description="export only these tasks' traces (default: every task)")
    cot_ratio: float | dict[str, float] = Field(1.0, description="share of R3 SFT rows that keep their CoT: one share, "
                                                 "or one per domain with '*' for the others")
    valid_share: float = Field(0.05, ge=0, lt=1, description="share of users held out as the validation split")
    dataset: Path | None = Field(None, description="the dataset the traces came from: enables decontamination and the "
                                 "next-item rows evaluation reads")
    lenient: bool = Field(False, description="load the dataset as synthesis did with lenient = true: bad records set aside")
    slate_prompt: bool = Field(False, description="slate traces' student prompt lists their candidates (a ranking task); "
                               "false: next-item generation with the CoT, like the other R3 rows")
    min_judge: float | None = Field(None, description="R3 rows need a judge score at least this high")
    min_delta_ll: float | None = Field(None, description="R3 rows need a delta_ll at least this high")
    top_k_per_user: int | None = Field(None, ge=1, description="keep each user's best k rows per task (judge, then delta_ll)")
    license: str = Field("other", description="the license in the dataset card (an SPDX-style id, or other)")
    license_name: str = Field("source-dataset-terms", description="with license other: a slug naming the terms")
    license_link: str = Field("LICENSE.md", description="with license other: where the terms are (the export writes LICENSE.md "
                              "from source when this is the default)")
    source: str = Field("see the input dataset's card", description="where the data came from, for the card")
    overwrite: bool = Field(False, description="replace an existing, non-empty export folder")
    price: Price | None = Field(None, description="the teacher's price per million tokens: the card gives what the store's traces cost")

    @model_validator(mode="before")
    @classmethod
    def _default_formats(cls, data: Any) -> Any:
        """Every format by default, align when the dataset (its events and item text) is given."""
        if isinstance(data, dict) and data.get("formats") is None:
            data = {**data, "formats": [f for f in FORMATS if f != ALIGN or data.get("dataset") is not None]}
        return data

    @model_validator(mode="after")
    def _align_needs_dataset(self) -> ExportConfig:
        """Align asked for without the dataset is an error, not an export that silently lacks it."""
        if ALIGN in self.formats and self.dataset is None:
            raise ValueError("the align format needs dataset (its behaviour documents and item text come from it): "
                             "set dataset, or leave align out of formats")
        return self

    @field_validator("cot_ratio")
    @classmethod
    def _shares(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        shares = value.values() if isinstance(value, dict) else [value]
        if any(not 0 <= share <= 1 for share in shares):
            raise ValueError("every CoT share must lie between 0 and 1")
        return value

    def ratio_sql(self, domain: str) -> str:
        """Per-mille CoT share of the rows whose domain is the SQL expression ``domain``."""
        if not isinstance(self.cot_ratio, dict):
            return str(int(self.cot_ratio * 1000))
        default = int(self.cot_ratio.get("*", 1.0) * 1000)
        cases = " ".join(f"WHEN {sql_text(name)} THEN {int(share * 1000)}" for name, share in self.cot_ratio.items() if name != "*")
        return f"CASE {domain} {cases} ELSE {default} END" if cases else str(default)


def _rows_sql(config: ExportConfig, students: dict[str, str]) -> str:
    """One row per kept trace: split, task, user prompt, assistant completion, the
    reward columns, ``leak`` (it would leak an evaluation target: the same user and target as a
    valid/test sample, or a target at or after the user's cut-off; needs the tables ``_held_out``
    makes). CoT tasks get the student prompt of next-item generation; every other task its declared student
    prompt (``students``, by task). Each CTE is read once: DuckDB keeps a CTE read twice in memory whole."""
    share = int(config.valid_share * 1000)
    judge = "NULL" if config.min_judge is None else config.min_judge
    delta = "NULL" if config.min_delta_ll is None else config.min_delta_ll
    # a window holds its whole input in memory: only when a per-user cap asks for it
    top_k = "" if config.top_k_per_user is None else f"""QUALIFY p.user_id IS NULL OR row_number() OVER (
                 PARTITION BY p.task, p.user_id ORDER BY sc.judge DESC NULLS LAST, sc.delta_ll DESC NULLS LAST, p.trace_id)
                 <= {config.top_k_per_user}"""
    only = "TRUE" if config.tasks is None else f"p.task IN ({', '.join(sql_text(t) for t in config.tasks) or 'NULL'})"
    declared = " ".join(f"WHEN task = {sql_text(task)} THEN {student_sql(student)}" for task, student in sorted(students.items()))
    ask = (f"CASE WHEN ranks_slate AND with_cot THEN {sql_text(ASK_PICK_THINK)} WHEN ranks_slate THEN {sql_text(ASK_PICK_DIRECT)} "
           f"WHEN with_cot THEN {sql_text(ASK_THINK)} ELSE {sql_text(ASK_DIRECT)} END")
    leak = "FALSE" if config.dataset is None else """k.target IS NOT NULL AND (
        EXISTS (SELECT 1 FROM evaluation v WHERE v.user_id = k.user_id AND v.target = k.target)
        OR EXISTS (SELECT 1 FROM cutoffs c WHERE c.user_id = k.user_id AND c.cutoff_ts IS NOT NULL AND k.part = 'train'
                   AND k.target_ts >= c.cutoff_ts))"""
    return f"""
    WITH passed AS ({KEPT_SQL}),
    sc AS (SELECT trace_id, max(value) FILTER (WHERE name = 'judge') AS judge,
                  max(value) FILTER (WHERE name = 'delta_ll') AS delta_ll FROM scores GROUP BY trace_id),
    kept AS (SELECT p.* FROM passed p LEFT JOIN sc USING (trace_id)
             WHERE {only}
               AND (p.task NOT IN {COT} OR (({judge} IS NULL OR sc.judge >= {judge}) AND ({delta} IS NULL OR sc.delta_ll >= {delta})))
             {top_k}),
    slates AS (SELECT trace_id, string_agg('- ' || coalesce(c.sid_text, '?') || ' ' || coalesce(c.title, ''), chr(10) ORDER BY pos)
                         AS slate_lines
               FROM (SELECT trace_id, unnest(items) AS item_id, generate_subscripts(items, 1) AS pos FROM traces
                     WHERE {config.slate_prompt} AND task IN {SLATE}) LEFT JOIN catalog c USING (item_id)
               GROUP BY trace_id),
    base AS (
        SELECT k.trace_id, k.task, k.task IN {COT} AS cot, k.user_id, k.subject_id, k.target, k.text, k.history, hs.history_sids,
               CASE WHEN sl.slate_lines IS NULL THEN hs.lines ELSE {with_slate_sql("hs.lines", "sl.slate_lines")} END AS lines,
               sl.slate_lines IS NOT NULL AS ranks_slate,
               tc.sid_text AS target_sid, coalesce(tc.domain, i1.domain, lc.domain) AS domain,
               CASE WHEN md5_number(coalesce(k.user_id, k.subject_id)) % 1000 < {share} THEN 'validation' ELSE 'train' END AS split,
               md5_number(k.trace_id) % 1000 < {config.ratio_sql("coalesce(tc.domain, i1.domain, lc.domain)")} AS with_cot,
               i1.sid_text AS sid1, i1.title AS title1, i2.sid_text AS sid2, i2.title AS title2, {leak} AS leak,
               k.task NOT IN {COT} OR regexp_full_match(k.text, '{COT_PATTERN}') AS layout_ok
        FROM kept k LEFT JOIN trace_columns hs USING (trace_id) LEFT JOIN slates sl USING (trace_id)
             LEFT JOIN catalog tc ON tc.item_id = k.target
             LEFT JOIN catalog i1 ON i1.item_id = k.items[1] LEFT JOIN catalog i2 ON i2.item_id = k.items[2]
             LEFT JOIN catalog lc ON lc.item_id = k.history[-1])
    SELECT trace_id, task, cot, domain, split, user_id, target, target_sid, history, history_sids, with_cot, leak, layout_ok,
        sid1, sid2,
        CASE WHEN cot THEN {prompt_sql("lines", ask)} {declared} END AS prompt,
        {prompt_sql("lines", f"CASE WHEN ranks_slate THEN {sql_text(ASK_PICK_THINK)} ELSE {sql_text(ASK_THINK)} END")} AS grpo_prompt,
        CASE WHEN cot THEN
                 CASE WHEN with_cot THEN {think_block_sql("text")} || chr(10) || target_sid ELSE target_sid END
             ELSE text END AS completion
    FROM base"""


def _held_out(store: Store, dataset: Dataset | None, spec: SplitSpec) -> Split | None:
    """The store's split over the dataset's sequences (None without ``dataset``), and the temp tables
    ``evaluation`` (user, target of every valid/test sample) and ``cutoffs`` that decontamination reads."""
    if dataset is None:
        return None
    split = spec.build(dataset.sequences())
    evaluation = split.samples.filter(pl.col("part") != "train").select("user_id", "target").collect().to_arrow()  # noqa: F841 - DuckDB reads it by name
    cutoffs = split.cutoffs().collect().to_arrow()  # noqa: F841 - DuckDB reads it by name
    store.con.execute("CREATE OR REPLACE TEMP TABLE evaluation AS SELECT * FROM evaluation")
    store.con.execute("CREATE OR REPLACE TEMP TABLE cutoffs AS SELECT * FROM cutoffs")
    return split


def _align(store: Store, dataset: Dataset, split: Split, folder: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The align format from the catalog's SIDs (as the export hands them off), the dataset's text and events, and the
    kept R1 relations that leak nothing; returns its rows per split and per kind."""
    sids = frame_of(store.con.sql("SELECT item_id, sid_text FROM catalog").to_arrow_table())
    relations = frame_of(store.con.sql("""SELECT sid1, sid2, completion, split FROM export_rows
                                          WHERE task = 'r1_relation' AND sid1 IS NOT NULL AND sid2 IS NOT NULL
                                          ORDER BY trace_id""").to_arrow_table())
    return write_align(align_rows(dataset.catalog, sids, dataset.sequences(), split, relations), folder)


def _hand_off(store: Store, spec: SplitSpec, split: Split | None, out: Path) -> dict[str, int]:
    """What training and evaluation read instead of the dataset: ``catalog.parquet`` (SIDs and titles), ``split.json``,
    ``tasks.json`` and, with the dataset, every part's next-item rows. Returns the next-item rows per part."""
    store.con.execute(f"""COPY (SELECT item_id, sid_text, title, brand, domain FROM catalog ORDER BY item_id)
                          TO {sql_text(str(out / CATALOG_FILE))} (FORMAT parquet)""")
    spec.save(out)
    declared = store.con.execute(f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY task").fetchall()
    (out / TASKS_FILE).write_text(json.dumps([dict(zip(TASK_COLUMNS, row)) for row in declared], indent=2) + "\n")
    return write_next_item(split, store.catalog(), out / NEXT_ITEM) if split is not None else {}


_FORMAT_SQL: dict[str, str] = {  # over one partition's rows of a split: {split} and verl's {index} (its first row's index)
    "sft": """SELECT [{{'role': 'user', 'content': prompt}}, {{'role': 'assistant', 'content': completion}}] AS messages,
                     task, domain, with_cot, trace_id FROM export_part WHERE split = '{split}'""",
    "prompt_completion": """SELECT [{{'role': 'user', 'content': prompt}}] AS prompt, [{{'role': 'assistant', 'content': completion}}] AS completion,
                                   task, domain, with_cot, trace_id FROM export_part WHERE split = '{split}'""",
    "grpo": """SELECT [{{'role': 'user', 'content': grpo_prompt}}] AS prompt, target_sid, target, history, history_sids, user_id, domain
               FROM export_part WHERE split = '{split}' AND grpo_pick""",
    # verl: the RL set, as the grpo format: one thinking prompt per (user, target), the target SID as ground truth
    "verl": f"""SELECT '{VERL_SOURCE}' AS data_source, [{{{{'role': 'user', 'content': grpo_prompt}}}}] AS prompt,
                       'recommendation' AS ability, {{{{'style': 'rule', 'ground_truth': target_sid}}}} AS reward_model,
                       {{{{'split': split, 'index': row_number() OVER () - 1 + {{index}}, 'trace_id': trace_id, 'user_id': user_id,
                          'target': target, 'target_sid': target_sid, 'history': history, 'history_sids': history_sids}}}} AS extra_info
                FROM export_part WHERE split = '{{split}}' AND grpo_pick""",
    # LlamaFactory's reasoning templates close the thought with a blank line ("\n</think>\n\n")
    "sharegpt": f"""SELECT [{{{{'from': 'human', 'value': prompt}}}},
                            {{{{'from': 'gpt', 'value': replace(completion, '\n{THINK_CLOSE}\n', '\n{THINK_CLOSE}\n\n')}}}}] AS conversations, task
                    FROM export_part WHERE split = '{{split}}'""",
}
SPLITS = ("train", "validation")
_ROW_GROUP = 1 << 17


def _partition(store: Store, rows_sql: str) -> tuple[list[Path], int, int]:
    """The rows of ``rows_sql`` written once to parquet partitioned by the trace id's first hex digit (the joins
    in the order written, the kept traces probing: DuckDB's reordering builds its hash table on the traces, which
    does not spill), one slice of the store at a time (a sharded store's shards: memory follows the shard, not the
    store); the view ``export_rows`` over those that leak nothing, with ``grpo_pick``. Returns the
    partitions in digit order, how many rows leaked, and how many R3 rows are not in the CoT layout (a correction or an
    edit made outside recot's checks): every row written is re-checked, none is written broken."""
    folder = store.spill("export")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    store.con.execute("SET preserve_insertion_order = false")
    store.con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
    try:
        for index in store.slices():
            trace_columns(store, ("history_sids", "lines"))
            store.con.execute(f"""COPY (SELECT *, left(trace_id, 1) AS digit FROM ({rows_sql}))
                                  TO '{folder}' (FORMAT parquet, PARTITION_BY (digit), OVERWRITE_OR_IGNORE,
                                                 FILENAME_PATTERN 'slice{index:05d}_{{i}}')""")
    finally:
        store.con.execute("RESET preserve_insertion_order")
        store.con.execute("RESET disabled_optimizers")
    parts = sorted(folder.glob("digit=*"))
    every = f"(SELECT * FROM ({rows_sql}) LIMIT 0)" if not parts else \
        f"read_parquet({sql_text(str(folder / '*' / '*.parquet'))}, hive_partitioning = false)"
    dropped = store.scalar(f"SELECT count(*) FROM {every} WHERE leak")
    broken = store.scalar(f"SELECT count(*) FROM {every} WHERE NOT leak AND NOT layout_ok")
    # the one R3 row per user and target the prompt-only set takes, whether or not its SFT row keeps the CoT:
    # the GRPO set does not depend on cot_ratio
    store.con.execute(f"""CREATE OR REPLACE TEMP TABLE grpo_picks AS
                          SELECT min(trace_id) AS trace_id FROM {every} WHERE cot AND NOT leak AND layout_ok GROUP BY split, user_id, target""")
    store.con.execute(f"CREATE OR REPLACE TEMP VIEW export_rows AS {_exported(every)}")
    return parts, dropped, broken


def _exported(rows: str, digit: str = "") -> str:
    """The rows of the relation ``rows`` (those whose trace id starts with ``digit``) that leak nothing, with ``grpo_pick``."""
    picks = f"(SELECT trace_id FROM grpo_picks WHERE starts_with(trace_id, '{digit}'))"  # the join builds on this partition's picks
    return (f"SELECT r.*, g.trace_id IS NOT NULL AS grpo_pick FROM {rows} r LEFT JOIN {picks} g USING (trace_id) "
            "WHERE NOT r.leak AND r.layout_ok")


def _write_formats(store: Store, parts: list[Path], formats: list[Format], out: Path) -> dict[str, dict[str, int]]:
    """Every format's ``train`` and ``validation`` parquet files, in one pass over the partitions: each sixteenth
    is sorted by split and trace id in memory and appended to every format's files, so the files hold each split
    in trace id order (a sort of all rows at once spills them uncompressed: over 50 GB at 10M traces). A split
    without rows gets no file (datasets refuses one). Returns the rows per format and split."""
    counts: dict[str, dict[str, int]] = {name: dict.fromkeys(SPLITS, 0) for name in formats}
    writers: dict[tuple[str, str], pq.ParquetWriter] = {}
    writing: Future | None = None
    try:
        # DuckDB makes the next batch while one thread writes (and compresses) the last one; leaving the pool
        # waits for that write, so the writers close after it
        with ThreadPoolExecutor(1) as pool:
            for part in parts:
                rows = f"read_parquet({sql_text(str(part / '*.parquet'))}, hive_partitioning = false)"
                store.con.execute(f"CREATE OR REPLACE TEMP TABLE export_part AS {_exported(rows, part.name[-1])} ORDER BY split, trace_id")
                for name, split in product(formats, SPLITS):
                    for batch in store.stream(_FORMAT_SQL[name].format(split=split, index=counts[name][split]), _ROW_GROUP):
                        if not batch.num_rows:  # no file for a split without rows: datasets refuses one
                            continue
                        if writing:
                            writing.result()
                        if (name, split) not in writers:
                            writers[name, split] = pq.ParquetWriter(out / name / f"{split}.parquet", batch.schema)
                        writing = pool.submit(writers[name, split].write_batch, batch, row_group_size=_ROW_GROUP)
                        counts[name][split] += batch.num_rows
        if writing:
            writing.result()
    finally:
        for writer in writers.values():
            writer.close()
        store.con.execute("DROP TABLE IF EXISTS export_part")
    for written in writers:
        _fingerprint_name(out / written[0] / f"{written[1]}.parquet")
    return counts


def _fingerprint_name(path: Path) -> Path:
    """``split.parquet`` renamed ``split-<content hash>.parquet``: an export that changes rows changes its file names,
    so ``datasets.load_dataset(EXPORT, name=...)`` (whose cache follows the data files) never serves the old rows."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return path.rename(path.with_name(f"{path.stem}-{digest.hexdigest()[:12]}{path.suffix}"))


def export(store: Store, config: ExportConfig) -> dict:
    """Write every configured format and the data card; returns the card's numbers."""
    if config.out.exists() and any(config.out.iterdir()) and not config.overwrite:
        raise DataError(config.out, "the export target exists and is not empty", "choose another out, or set overwrite")
    spec = store.split_spec()
    if spec is None:
        raise DataError(store.path, "the store records no split, so the export could not tell training from evaluation rows",
                        "ingest the traces with the split.json that `recot synth run` wrote beside them")
    dataset = load_dataset(config.dataset, lenient=config.lenient) if config.dataset is not None else None
    split = _held_out(store, dataset, spec)
    students = dict(store.con.execute("SELECT task, student FROM tasks WHERE NOT cot").fetchall())
    parts, dropped, broken = _partition(store, _rows_sql(config, students))
    traced = [name for name in config.formats if name != ALIGN]
    with atomic_path(config.out) as tmp:
        tmp.mkdir(parents=True)
        for name in traced:
            (tmp / name).mkdir()
        counts = _write_formats(store, parts, traced, tmp)
        aligned: dict[str, dict[str, int]] = {}
        if ALIGN in config.formats:
            assert dataset is not None and split is not None  # ExportConfig refuses align without the dataset
            counts[ALIGN], aligned = _align(store, dataset, split, tmp / ALIGN)
            for file in sorted((tmp / ALIGN).glob("*.parquet")):
                _fingerprint_name(file)
        next_item = _hand_off(store, spec, split, tmp)
        files: dict[str, dict[str, str]] = {name: {p.name.split("-")[0]: f"{name}/{p.name}" for p in sorted((tmp / name).glob("*.parquet"))}
                 for name in config.formats}
        card = _card(store, config, counts, dropped, broken, next_item, files, aligned)
        if "sharegpt" in card["files"]:
            (tmp / "dataset_info.json").write_text(json.dumps(_llamafactory_info(config.name, card["files"]["sharegpt"]), indent=2) + "\n")
        if config.license == "other" and config.license_link == "LICENSE.md":
            (tmp / "LICENSE.md").write_text(f"# Terms of {config.name}\n\nThe rows are derived from: {config.source}.\n"
                                            "Its license and terms of use apply to this export as a whole.\n")
        (tmp / "data_card.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(_card_markdown(card, config))
        cards = tmp / "data_cards"
        cards.mkdir()
        shutil.copy(tmp / "README.md", cards / f"{config.name}.md")
        shutil.copy(tmp / "data_card.json", cards / f"{config.name}.json")
    return card


def _set_aside_markdown(set_aside: dict) -> str:
    """The rows set aside before any trace was written, so the card accounts for every row read."""
    lines = [f"\n- {entry['rows']} {'dataset records' if stage == 'dataset' else 'samples'} set aside before synthesis "
             f"({', '.join(f'{r} {n}' for r, n in entry['reasons'].items())}), listed in {', '.join(entry['listed_in'])}"
             for stage, entry in set_aside.items()]
    return "\n" + "".join(lines) if lines else ""


def _card(store: Store, config: ExportConfig, counts: dict, dropped: int, broken: int, next_item: dict[str, int],
          files: dict[str, dict[str, str]], aligned: dict[str, dict[str, int]]) -> dict:
    provenance = store.con.execute("""
        SELECT DISTINCT template, template_hash, teacher, model FROM traces SEMI JOIN export_rows USING (trace_id)
        ORDER BY ALL""").fetchall()
    rules = store.con.execute("SELECT value FROM meta WHERE name = 'rules_config'").fetchall()
    spec = store.split_spec()
    stages = funnel(store, examples=0)
    # every trace the teacher wrote, kept or not: what the data cost
    tokens = [dict(zip(("task", "teacher", "model", "traces", "prompt_tokens", "completion_tokens", "reasoning_tokens"), row))
              for row in store.con.execute(
        """SELECT task, teacher, model, count(*), sum(prompt_tokens)::BIGINT, sum(completion_tokens)::BIGINT,
                  coalesce(sum(reasoning_tokens), 0)::BIGINT FROM traces GROUP BY ALL ORDER BY ALL""").fetchall()]
    return {
        "name": config.name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "license": config.license, "source": config.source, "formats": counts,
        "by_task": dict(store.con.execute("SELECT task, count(*) FROM export_rows GROUP BY task ORDER BY task").fetchall()),
        "cot_ratio": config.cot_ratio, "valid_share": config.valid_share,
        "r3_with_cot_by_domain": {domain: {"rows": rows, "with_cot": cot} for domain, rows, cot in store.con.execute(
            """SELECT coalesce(domain, '?'), count(*), count(*) FILTER (WHERE with_cot) FROM export_rows
               WHERE cot AND split = 'train' GROUP BY ALL ORDER BY ALL""").fetchall()},
        "selection": {"min_judge": config.min_judge, "min_delta_ll": config.min_delta_ll, "top_k_per_user": config.top_k_per_user,
                      "kept_after_rules": stages["kept"]},
        "decontamination": {"dataset": str(config.dataset) if config.dataset else None, "rows_dropped": dropped,
                            "split": spec.model_dump() if spec else None, "split_source": "recorded at synthesis"},
        "next_item": next_item,
        "align": aligned,  # rows per kind and split of the align format (empty when it was not written)
        "files": files,
        "not_in_cot_layout": broken,  # R3 rows left out because their text is not in the CoT layout
        "funnel": stages,
        "rules_config": json.loads(rules[0][0]) if rules else None,
        "templates_and_teachers": [dict(zip(("template", "template_hash", "teacher", "model"), row)) for row in provenance],
        "teacher_tokens": tokens,
        "teacher_cost": config.price.costs(*spent(tokens)) if config.price else None,
    }


def _align_markdown(kinds: dict[str, dict[str, int]]) -> str:
    """The align format's rows per kind (train / validation: the held-out items), for the card."""
    if not kinds:
        return ""
    counted = ", ".join(f"{kind} {parts['train']} / {parts['validation']}" for kind, parts in kinds.items())
    return f"\nAlignment rows per kind (train / validation, the held-out items): {counted}."


def _llamafactory_info(name: str, files: dict[str, str]) -> dict:
    """LlamaFactory's dataset_info.json: one entry per split of the sharegpt format (train and validation apart, so
    pointing LlamaFactory at the folder never mixes them)."""
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations"},
             "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}
    return {f"{name}_{split}": {"file_name": path, **entry} for split, path in files.items()}


def _size(rows: int) -> str:
    return "n<1K" if rows < 1000 else "1K<n<10K" if rows < 10_000 else "10K<n<100K" if rows < 100_000 else "100K<n<1M" if rows < 10**6 else "n>1M"


def _card_markdown(card: dict, config: ExportConfig) -> str:
    """The dataset card: its YAML header names every format as a config of its files (``sft`` the default one)."""
    default = "sft" if "sft" in config.formats else config.formats[0]
    configs = "".join(
        f"- config_name: {name}\n" + ("  default: true\n" if name == default else "") + "  data_files:\n" + "".join(
            f"  - split: {part}\n    path: {path}\n" for part, path in card["files"][name].items())
        for name in config.formats)
    size = _size(sum(card["formats"][default].values()))  # the default config's rows; each config's are in the table
    terms = f"license_name: {config.license_name}\nlicense_link: {config.license_link}\n" if config.license == "other" else ""
    rows = "\n".join(f"| {name} | {parts['train']} | {parts['validation']} |" for name, parts in card["formats"].items())
    teachers = "\n".join(f"- {t['template']} ({t['template_hash']}) by {t['teacher']}:{t['model']}" for t in card["templates_and_teachers"])
    rules = "\n".join(f"| {rule} | {c['checked']} | {c['failed']} |" for rule, c in card["funnel"]["rules"].items())
    tokens = "\n".join(f"| {t['task']} | {t['teacher']}:{t['model']} | {t['traces']} | {t['prompt_tokens']} | {t['completion_tokens']} "
                       f"| {t['reasoning_tokens']} |" for t in card["teacher_tokens"])
    cost = f"Cost at the configured price: {card['teacher_cost']['live']} (batch: {card['teacher_cost']['batch']}).\n" if card["teacher_cost"] else ""
    return f"""---
license: {card['license']}
{terms}task_categories:
- text-generation
tags:
- recommendation
- chain-of-thought
- recot
size_categories:
- {size}
configs:
{configs}---

# {card['name']}

Reasoning training data for a generative recommender, exported by recot on {card['created_at']}.
Source: {card['source']}. The JSON twin of this card is `data_card.json`.

| format | train | validation |
|---|---|---|
{rows}

Rows per task: {json.dumps(card['by_task'])}. R3 training rows with CoT, per domain:
{json.dumps(card['r3_with_cot_by_domain'])} (configured share: {json.dumps(card['cot_ratio'])}); users held out
for validation: {card['valid_share']:.0%}. Decontamination: {card['decontamination']['rows_dropped']} rows dropped
(dataset: {card['decontamination']['dataset']}).{_align_markdown(card['align'])}

## Funnel

{card['funnel']['traces']} traces in the store, {card['funnel']['kept']} kept.{_set_aside_markdown(card['funnel']['set_aside'])}

| rule | checked | failed |
|---|---|---|
{rules}

Rule settings: `{json.dumps(card['rules_config'])}`

## Templates and teachers

{teachers}

Teacher tokens of every trace in the store (kept or not), per task and teacher (a thinking teacher's reasoning
tokens are among its completion tokens, as they are billed):

| task | teacher | traces | prompt tokens | completion tokens | of them reasoning |
|---|---|---|---|---|---|
{tokens}

{cost}"""
