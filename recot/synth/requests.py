"""From a dataset and a split to a stream of teacher requests, with the split's cut-off enforced.

Subjects (catalog items, co-purchased pairs, or split samples) are planned lazily in polars and
written to a parquet file, then read back in batches: a job of any size holds one batch of
requests in memory. Samples that would put future information into a prompt are refused here,
before anything is rendered, and kept with their reason.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from recot.data.catalog import Catalog
from recot.formats.profiles import ProfileBook
from recot.formats.request_schemas import choice_constraint, narrow
from recot.formats.splits import Split
from recot.formats.tasks import Task
from recot.synth.prompts import PromptLibrary, RenderedPrompt, quoted
from recot.synth.slates import SlateSampler
from recot.teachers.base import Request, Sampling, canonical_json, request_key

CUTOFF_REASONS = {
    "history_not_before_target": "a history event is at or after the sample's own target time",
    "after_cutoff": "training material would include an event at or after the user's cut-off (the first held-out event)",
}
_SLATE = "\x00slate\x00"  # stands for a slate's SIDs in a profile's schema JSON; no SID holds a NUL
_SLATE_JSON = canonical_json([_SLATE])


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: subjects go to shards by a stable hash of their id."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"shard {text!r} is not I/N (e.g. 0/4)") from None
        if not 0 <= index < count:
            raise ValueError(f"shard {text!r}: I must be in 0..N-1")
        return cls(index, count)

    def owns(self, subject_id: str) -> bool:
        return self.count == 1 or zlib.crc32(subject_id.encode()) % self.count == self.index


def checked_samples(split: Split, part: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The part's samples split into usable ones and refused ones (with ``reason``).

    Training samples must lie wholly before their user's cut-off; any sample's history must lie
    before its target. A correct split never trips these; a hand-made or shifted one does.
    """
    latest = pl.col("history_ts").list.max()
    reason = (
        pl.when(latest >= pl.col("target_ts")).then(pl.lit("history_not_before_target"))
        .when((pl.col("part") == "train") & pl.col("cutoff_ts").is_not_null()
              & ((pl.col("target_ts") >= pl.col("cutoff_ts")) | (latest >= pl.col("cutoff_ts"))))
        .then(pl.lit("after_cutoff"))
    )
    flagged = split.part(part).join(split.cutoffs(), on="user_id", how="left").with_columns(reason=reason)
    return flagged.filter(pl.col("reason").is_null()).drop("reason"), flagged.filter(pl.col("reason").is_not_null())


def plan_subjects(task: Task, catalog: Catalog, split: Split, part: str, limit: int | None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Subjects of ``task`` (a ``subject_id`` column plus what its prompt needs) and refused samples. ``limit`` keeps that
    many spread over the whole plan (by a stable hash of the subject id, in plan order), not the first ones: the first
    ten user subjects are one user's first ten windows, which says little about a teacher on the data."""
    ok, refused = checked_samples(split, part)
    if task.source == "items":
        subjects = (catalog.items.lazy().filter(pl.col("sid").is_not_null()).select("item_id").sort("item_id")
                    .with_columns(subject_id=pl.col("item_id"), items=pl.concat_list("item_id")))
        refused = refused.head(0)
    elif task.source == "pairs":
        subjects = (ok.select(first=pl.col("history").list.last(), second=pl.col("target"))
                    .filter(pl.col("first") != pl.col("second")).unique().sort("first", "second")
                    .with_columns(subject_id=pl.col("first") + ">" + pl.col("second"),
                                  items=pl.concat_list("first", "second")))
    else:
        subjects = ok.sort("user_id", "target_ts").with_columns(
            subject_id=pl.col("user_id") + "@" + pl.col("target_ts").cast(pl.Utf8))
    return (_spread(subjects, limit) if limit else subjects), refused


def _spread(subjects: pl.LazyFrame, limit: int) -> pl.LazyFrame:
    """``limit`` subjects chosen by the CRC-32 of their id (stable across runs, machines and library versions), kept in
    plan order."""
    crc = pl.col("subject_id").map_batches(lambda ids: pl.Series([zlib.crc32(i.encode()) for i in ids], dtype=pl.UInt32),
                                           return_dtype=pl.UInt32)
    return (subjects.with_row_index("_order").with_columns(_crc=crc).sort("_crc", "_order").head(limit)
            .sort("_order").drop("_order", "_crc"))


class SlateView(NamedTuple):
    """What a slate prompt and its schema need of the candidates, in the order shown (a tuple: a job makes one per
    request, and a frozen dataclass costs four times as much to build)."""

    rows: list[dict[str, Any]]  # the items' fields (the template's ``slate``)
    sids: list[str]  # their SIDs as text
    lines: str  # ``- SID "title"`` per candidate, the title quoted as data (the template's ``slate_lines``)
    sids_json: str  # canonical JSON of the distinct SIDs, in order (the schema's enum)


class ItemView:
    """Item fields a prompt shows, by item id (built once per job), and each item's candidate line and SID JSON: a
    slate prompt shows 20 of them, so they are written once per item, not once per request."""

    def __init__(self, catalog: Catalog) -> None:
        frame = catalog.items.select("item_id", "title", "brand", "description", "categories").with_columns(
            sid=catalog.sid_text())
        self._items = {row["item_id"]: row for row in frame.iter_rows(named=True)}
        self.sid_grammar, self.sid_chars = catalog.sid_grammar()  # what an open answer must match, and its longest text

    def __getitem__(self, item_id: str) -> dict[str, Any]:
        return self._items[item_id]

    def slates(self, rows: np.ndarray) -> list[SlateView]:
        """Each slate's fields, SIDs, prompt lines and enum JSON, for a batch of slates given as the candidates' catalog
        rows (samples x size, as :class:`SlateBatch` has them): numpy picks the per-item strings, so a request pays for
        two joins."""
        fields, sids, lines, json = self._candidates
        joined = ["".join(row) for row in lines[rows].tolist()]
        enums = ["[" + ",".join(dict.fromkeys(row)) + "]" for row in json[rows].tolist()]
        return list(map(SlateView, fields[rows].tolist(), sids[rows].tolist(), joined, enums))

    @cached_property
    def _candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per item, in catalog row order: fields, SID, candidate line, and the SID as a JSON string (canonical_json of
        a list of strings is "[" + the strings' JSON joined by "," + "]", so a slate's enum is spliced from these).
        Written on the first slate: other tasks never read them."""
        items = list(self._items.values())
        fields = np.empty(len(items), dtype=object)
        fields[:] = items
        return (fields, np.array([item["sid"] for item in items], dtype=object),
                np.array([f"- {item['sid']} {quoted(item['title'])}\n" for item in items], dtype=object),
                np.array([canonical_json(item["sid"] or "") for item in items], dtype=object))


def iter_requests(task: Task, subjects: Path, library: PromptLibrary, items: ItemView, profiles: ProfileBook,
                  teacher: tuple[str, str], sampling: Sampling, shard: Shard = Shard(), slates: SlateSampler | None = None,
                  batch_rows: int = 1024, narrowed: bool = True) -> Iterator[Request]:
    """Render every subject in ``subjects`` (parquet) owned by ``shard`` into ``sampling.n`` requests.

    Each subject's prompt reads its domain's profile (wording, personas; the subject records its name).
    Each request's schema is its task's, narrowed to the request (:mod:`recot.formats.request_schemas`): interests cite
    only its history's numbers; a slate task's answer names only its slate's SIDs (each sample gets its slate from
    ``slates``), a hindsight answer only the target's SID, an open answer only a SID of the catalog's grammar.
    ``narrowed=False``: the task's schema as declared (a slate answer still confined to its slate)."""
    if task.slate and slates is None:
        raise ValueError(f"task {task.name} needs a slate sampler")
    top_k = slates.config.top_k if task.slate and slates is not None else 1
    chosen = task.slate or (narrowed and task.cot and task.needs_target)  # the answer is one of the request's own SIDs
    # per profile (its personas shape the schema) and history length (it bounds the citations): the schema, its JSON cut
    # where the request's SIDs go (one piece when the answer is not a choice), and the function that puts them in
    schemas: dict[tuple[str, int], tuple[dict[str, Any], list[str], Callable[[list[str]], dict[str, Any]] | None]] = {}
    shown: dict[str, dict[str, Any]] = {}  # per profile: the template variable, dumped once
    for batch in pq.ParquetFile(subjects).iter_batches(batch_size=batch_rows):
        rows = [row for row in batch.to_pylist() if shard.owns(row["subject_id"])]
        slated: list[tuple[list[str], int, SlateView] | None] = [None] * len(rows)
        if task.slate and rows:
            drawn = slates.draw_batch(  # type: ignore[union-attr]  # a slate task has its sampler (checked above)
                [r["subject_id"] for r in rows], [r["history"] for r in rows], [r["target"] for r in rows])
            slated = list(zip(drawn.items, drawn.popular_rank, items.slates(drawn.rows)))
        for row, pair in zip(rows, slated):
            profile = profiles.of(row["target"] if task.source == "samples" else row["items"][0])
            key = (profile.name, len(row["history"]) if narrowed and task.source == "samples" else 0)
            if key not in schemas:
                schema = task.schema(profile.personas).model_json_schema()
                if narrowed:
                    schema = narrow(schema, key[1], None if chosen else items.sid_grammar, top_k, sampling.max_tokens, items.sid_chars,
                                    plain=task.cot)
                constrain = choice_constraint(schema, top_k) if chosen else None
                schemas[key] = schema, canonical_json(constrain([_SLATE]) if constrain else schema).split(_SLATE_JSON), constrain
            if profile.name not in shown:
                shown[profile.name] = profile.model_dump() | {"personas": list(profile.personas)}
            variables, subject = _variables(task, row, items, shown[profile.name])
            asked, cut, constrain = schemas[key]
            asked_json = cut[0]
            if pair is not None:  # a slate task
                candidates, popular_rank, view = pair
                subject |= {"items": candidates, "popular_rank": popular_rank, "top_k": top_k}
                variables |= {"slate": view.rows, "slate_lines": view.lines, "top_k": top_k}
                asked, asked_json = constrain(view.sids), view.sids_json.join(cut)  # type: ignore[misc]  # chosen: has one
            elif constrain is not None:  # hindsight: the answer is the target's SID
                target_sid = variables["target"]["sid"]
                asked, asked_json = constrain([target_sid]), canonical_json([target_sid]).join(cut)
            prompt = library.render(task.name, **variables)
            for sample in range(sampling.n):
                yield build_request(prompt, asked, teacher, sampling, sample, subject, asked_json)


def build_request(prompt: RenderedPrompt, schema: dict[str, Any], teacher: tuple[str, str], sampling: Sampling,
                  sample: int, subject: dict[str, Any], schema_json: str | None = None) -> Request:
    """The request for sample ``sample`` of a rendered prompt, keyed by the hash of what decides its answer
    (``schema_json``: the schema's canonical JSON, when the caller has it)."""
    key = request_key(*teacher, prompt.messages, schema, prompt.template_hash, sampling, sample, schema_json)
    template = {"name": prompt.template, "version": prompt.template_version, "hash": prompt.template_hash}
    return Request(key, prompt.task, prompt.messages, schema, sample, sampling.seed + sample,
                   sampling.temperature, sampling.top_p, sampling.max_tokens, subject, template)


def _variables(task: Task, row: dict[str, Any], items: ItemView, profile: dict[str, Any]) -> tuple[dict, dict]:
    """Template variables and the plain-JSON subject that travels with the request into the output."""
    subject: dict[str, Any] = {"id": row["subject_id"], "profile": profile["name"]}
    variables: dict[str, Any] = {"profile": profile}
    if task.source == "items":
        subject["items"] = row["items"]
        return variables | {"item": items[row["item_id"]]}, subject
    if task.source == "pairs":
        subject["items"] = row["items"]
        return variables | {"first": items[row["first"]], "second": items[row["second"]]}, subject
    subject |= {k: row[k] for k in ("user_id", "part", "history", "history_ts", "target", "target_ts", "cutoff_ts")}
    variables |= {"history": [items[i] for i in row["history"]], "personas": profile["personas"]}
    if task.needs_target:
        variables["target"] = items[row["target"]]
    return variables, subject
