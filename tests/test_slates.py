"""Blind R3 over candidate slates: the samplers on a hand-made catalog whose answers are known, the job
with the rules teacher on the sample (slates, schemas, picks), the curation funnel's accuracy against
chance and most-popular, and the slate student prompt in the export."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from recot.curation.export import ExportConfig, export
from recot.curation.report import funnel
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.data.catalog import ITEM_SCHEMA, Catalog
from recot.errors import DataError
from recot.formats.profiles import PROFILES, ProfileBook
from recot.formats.request_schemas import choice_constraint
from recot.formats.schemas import slate_trace_model
from recot.formats.splits import SplitSpec
from recot.formats.student import ASK_PICK_THINK, SLATE_HEAD
from recot.formats.tasks import get_task
from recot.synth.job import SynthConfig, run_synth
from recot.synth.parse import Parsed, off_slate
from recot.synth.prompts import PromptLibrary
from recot.synth.requests import ItemView, iter_requests, plan_subjects
from recot.synth.slates import SlateConfig, SlateSampler
from recot.teachers import Sampling


def hand_catalog(n: int = 40) -> Catalog:
    """Items i0..i{n-1}; item i has SID [i // 10, i % 10]: four clusters of ten."""
    frame = pl.DataFrame({"item_id": [f"i{k}" for k in range(n)], "title": [f"thing {k}" for k in range(n)],
                          "sid": [[k // 10, k % 10] for k in range(n)]})
    return Catalog(frame.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in ITEM_SCHEMA.items() if c not in frame.columns)
                   .select(list(ITEM_SCHEMA)).cast(ITEM_SCHEMA))


def train(rows: list[tuple[list[str], str]]) -> pl.LazyFrame:
    return pl.LazyFrame({"history": [h for h, _ in rows], "target": [t for _, t in rows]},
                        schema={"history": pl.List(pl.Utf8), "target": pl.Utf8})


def test_items_that_share_a_sid_never_stand_in_one_slate():
    """A SID collision the build left (i1 and i2 both [0, 1]) is one candidate to a teacher that answers in SIDs: a slate
    with both would make two picks of one SID (the rules teacher's top 2 did, on the sample's items 181 and 182)."""
    catalog = hand_catalog(12)
    catalog = Catalog(catalog.items.with_columns(sid=pl.when(pl.col("item_id") == "i2").then(pl.lit([0, 1]))
                                                  .otherwise(pl.col("sid"))))
    sampler = SlateSampler(SlateConfig(size=10, samplers={"prefix": 1, "popularity": 1}), catalog, train([]))
    sids = dict(zip(catalog.items["item_id"], catalog.sid_text()))
    for target in ("i1", "i2", "i5"):
        for k in range(40):
            slate = sampler.draw(f"u{k}", ["i0"], target).items
            assert target in slate and len({sids[i] for i in slate}) == len(slate) == 10, slate


def test_quotas_share_the_negatives_by_weight():
    assert SlateConfig(size=20).quotas() == [("popularity", 7), ("prefix", 6), ("cooccurrence", 6)]
    assert sum(n for _, n in SlateConfig(size=7, samplers={"prefix": 2, "uniform": 1}).quotas()) == 6
    with pytest.raises(ValidationError, match="top_k"):
        SlateConfig(size=5, top_k=5)
    with pytest.raises(ValidationError, match="positive weight"):
        SlateConfig(samplers={"prefix": 0})


def test_a_slate_holds_the_target_once_never_the_history_and_is_reproducible():
    sampler = SlateSampler(SlateConfig(size=10, samplers={"popularity": 1, "prefix": 1, "uniform": 1}), hand_catalog(),
                           train([(["i1"], "i2"), (["i2"], "i3")] * 5))
    slate = sampler.draw("u1@5", ["i0", "i1", "i2"], "i15")
    assert len(slate.items) == len(set(slate.items)) == 10
    assert slate.items.count("i15") == 1 and not {"i0", "i1", "i2"} & set(slate.items)
    assert sampler.draw("u1@5", ["i0", "i1", "i2"], "i15") == slate
    # the same slate in a batch beside a longer history (as in another shard's batch)
    assert sampler.draw_batch(["u9@1", "u1@5"], [[f"i{k}" for k in range(20, 29)], ["i0", "i1", "i2"]], ["i3", "i15"])[1] == slate
    # history items without a SID are passed over: they take no place and move no other item's
    assert sampler.draw_batch(["u1@5", "u2@5"], [["x", "i0", "y", "i1", "i2", "z"], ["w"] * 30], ["i15", "i3"])[0] == slate
    with pytest.raises(DataError, match="has no SID") as refused:
        sampler.draw_batch(["u1@5", "u2@7"], [["i0"], ["i1"]], ["i15", "gone"])
    assert refused.value.file == "u2@7"  # the sample named, so the user can find it
    orders = {tuple(sampler.draw(f"u{k}@5", ["i0"], "i15").items) for k in range(20)}
    assert len(orders) > 15  # each sample its own draw, the target at different places
    assert len({s.index("i15") for s in orders}) > 5


def test_hard_samplers_draw_what_they_promise():
    catalog = hand_catalog()
    prefix = SlateSampler(SlateConfig(size=6, samplers={"prefix": 1}), catalog, train([]))
    assert all(i[1:].zfill(2)[0] == "2" for i in prefix.draw("s", ["i0"], "i25").items)  # all from cluster 2 (i20..i29)
    # i5 was followed by i31 and i32 in training; i33 only after the cut-off, so it never counts
    seen = train([(["i5"], "i31"), (["i5"], "i31"), (["i7", "i5"], "i32")])
    co = SlateSampler(SlateConfig(size=3, samplers={"cooccurrence": 1}), catalog, seen)
    assert set(co.draw("s", ["i5"], "i10").items) == {"i10", "i31", "i32"}
    # embeddings that cluster across the SID clusters: item i lies near the nine items j with j % 4 == i % 4
    vectors = np.eye(4, dtype=np.float32)[np.arange(40) % 4] + np.random.default_rng(0).normal(0, 0.01, (40, 4)).astype(np.float32)
    near = SlateSampler(SlateConfig(size=3, samplers={"embedding": 1}, embeddings=_save(vectors)), catalog, train([]))
    assert {int(i[1:]) % 4 for i in near.draw("s", ["i0"], "i27").items} == {3}


def test_embedding_neighbours_are_kept_for_the_jobs_reruns(tmp_path, monkeypatch):
    """The neighbour table is quadratic in the catalog: a rerun reads it from the work folder, and draws the same slates."""
    import recot.synth.slates as slates

    catalog = hand_catalog()
    vectors = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    config = SlateConfig(size=6, samplers={"embedding": 1}, embeddings=_save(vectors))
    first = SlateSampler(config, catalog, train([]), work=tmp_path).draw("s", ["i0"], "i27")
    assert len(list(tmp_path.glob("item-neighbours-*.npy"))) == 1 and not list(tmp_path.glob("*.partial"))
    monkeypatch.setattr(slates, "_neighbours", lambda *a: pytest.fail("the table was built again"))
    assert SlateSampler(config, catalog, train([]), work=tmp_path).draw("s", ["i0"], "i27") == first
    other = SlateConfig(size=6, samplers={"embedding": 1}, embeddings=_save(vectors[::-1].copy()))
    with pytest.raises(pytest.fail.Exception):  # other embeddings: another table
        SlateSampler(other, catalog, train([]), work=tmp_path)


def _save(vectors: np.ndarray):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "emb.npy"
    np.save(path, vectors)
    return path


def test_popular_rank_counts_training_popularity_only():
    catalog = hand_catalog()
    sampler = SlateSampler(SlateConfig(size=4, samplers={"uniform": 1}), catalog,
                           train([(["i0"], "i9")] * 5 + [(["i0"], "i8")] * 3))
    slate = sampler.draw("s", ["i0"], "i8")
    expected = 1 + sum(1 for i in slate.items if i == "i9")
    assert slate.popular_rank == expected


def test_schema_names_only_the_slate_and_the_parse_holds_to_it():
    schema = choice_constraint(slate_trace_model().model_json_schema(), top_k=2)(["<a_1>", "<a_2>", "<a_3>", "<a_2>"])
    assert schema["properties"]["answer"]["enum"] == ["<a_1>", "<a_2>", "<a_3>"]
    assert schema["properties"]["alternatives"]["minItems"] == 1 and "alternatives" in schema["required"]
    assert schema["properties"]["alternatives"]["items"]["enum"] == ["<a_1>", "<a_2>", "<a_3>"]  # a repeated SID once
    assert list(schema["properties"])[-2:] == ["answer", "alternatives"]  # in the model's order: decoding follows it
    assert "alternatives" not in choice_constraint(slate_trace_model().model_json_schema(), top_k=1)(["<a_1>"])["properties"]
    trace = {"persona": {"prototype": "student", "evidence": "e"}, "interests": [{"name": "n", "evidence": [1]}],
             "transition": {"recent": "r", "follows": 1, "reasoning": "x"}, "answer": "<a_1>", "alternatives": ["<a_9>"]}
    ok = Parsed("ok", None, None, slate_trace_model().model_validate(trace))
    assert off_slate(ok, ["<a_1>", "<a_2>"], 2).reason == "off_slate"
    assert off_slate(ok, ["<a_1>", "<a_9>"], 3).reason == "off_slate"  # two picks where three were asked
    assert off_slate(ok, ["<a_1>", "<a_9>"], 2) is ok


def test_each_request_key_is_the_hash_of_the_whole_request_written_at_once(sample, tmp_path):
    """Planning writes a schema's JSON once per profile and splices each slate's SIDs in: the keys (what
    the journal and the output are keyed by) stay those of the whole payload dumped in one piece."""
    split = SplitSpec.choose(sample.boundaries, "auto", 10).build(sample.sequences())
    slates = SlateSampler(SlateConfig(size=12, top_k=3, samplers={"popularity": 1, "prefix": 1}), sample.catalog, split.part("train"))
    for name, sampler in (("r3_cot_slate", slates), ("r3_cot_blind", None), ("r0_caption", None)):
        subjects, _ = plan_subjects(get_task(name), sample.catalog, split, "train", 40)
        path = tmp_path / f"{name}.parquet"
        subjects.sink_parquet(path)
        requests = list(iter_requests(get_task(name), path, PromptLibrary(), ItemView(sample.catalog), ProfileBook(PROFILES["ecommerce"]),
                                      ("rules", "rules-v1"), Sampling(n=2), slates=sampler))
        assert len(requests) == 80 and len({r.key for r in requests}) == 80
        for r in requests:
            whole = {"teacher": "rules", "model": "rules-v1", "messages": r.messages, "schema": r.schema,
                     "template": r.template["hash"], "sample": r.sample, "sampling": Sampling(n=2).model_dump(exclude={"n"}) | {"seed": r.seed}}
            assert r.key == hashlib.sha256(json.dumps(whole, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.fixture(scope="module")
def slate_run(sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("slates")
    config = SynthConfig(dataset=sample_path, out=out, tasks=["r3_cot_slate"], limit=300,
                         slate=SlateConfig(size=12, top_k=2, samplers={"popularity": 1, "prefix": 1, "cooccurrence": 1}))
    return run_synth(config, progress=False), out


def test_job_shows_each_sample_its_slate_and_the_rules_teacher_picks_from_it(slate_run, sample):
    report, out = slate_run
    rows = pl.read_parquet(out / "traces.parquet")
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    assert report.complete and report.ok == rows.height == 300 and (rows["status"] == "ok").all()
    for row in rows.iter_rows(named=True):
        assert len(row["items"]) == 12 and row["target"] in row["items"]
        prompt = json.loads(row["messages"])[-1]["content"]
        assert all(sid_of[i] in prompt for i in row["items"])
        picks = [json.loads(row["output"])["answer"], *json.loads(row["output"])["alternatives"]]
        assert len(set(picks)) == 2 and set(picks) <= {sid_of[i] for i in row["items"]}
        assert 1 <= row["popular_rank"] <= 12


def test_funnel_reports_slate_accuracy_against_chance_and_most_popular(slate_run, sample, tmp_path):
    _, out = slate_run
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(out / "traces.parquet")
        failed = run_rules(store)
        accuracy = funnel(store)["slate_accuracy"]
        rows = store.con.execute("SELECT target, output, popular_rank FROM traces").fetchall()
        export(store, ExportConfig(name="slates", out=tmp_path / "export", slate_prompt=True, formats=["sft"]))
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    hits = sum(sid_of[t] in [json.loads(o)["answer"], *json.loads(o)["alternatives"]] for t, o, _ in rows)
    assert accuracy["answered"] == 300 and accuracy["hits"] == hits == 300 - failed["blind_hit"]
    assert accuracy["chance"] == pytest.approx(2 / 12, abs=1e-4)
    assert accuracy["most_popular"] == pytest.approx(sum(r <= 2 for _, _, r in rows) / 300, abs=1e-4)
    assert accuracy["accuracy"] > 1.5 * accuracy["chance"]  # the rules teacher's heuristics beat guessing
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train-*.parquet")
    prompt, completion = sft["messages"][0][0]["content"], sft["messages"][0][1]["content"]
    assert SLATE_HEAD in prompt and prompt.endswith(ASK_PICK_THINK) and prompt.count("\n- ") == 12
    assert completion.startswith("<think>")
