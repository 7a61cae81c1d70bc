"""The curation store and rules on real synthesis output (rules teacher on the sample), plus hand-made
traces that must trip exactly the rule and reason they were made for."""

from __future__ import annotations

import json
import re
from collections import Counter

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from recot.curation.report import funnel
from recot.curation.rules import WORD_RE, RulesConfig, run_rules
from recot.curation.store import SCHEMA_VERSION, Store
from recot.errors import DataError
from recot.synth.job import SynthConfig, run_synth

TASKS = ["r0_caption", "r1_relation", "r3_cot_blind", "r3_cot_hindsight"]


@pytest.fixture(scope="module")
def traces(sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    run_synth(SynthConfig(dataset=sample_path, out=out, tasks=TASKS, limit=120), progress=False)
    return out / "traces.parquet"


@pytest.fixture()
def store(tmp_path, sample):
    with Store(tmp_path / "c.duckdb") as db:
        db.load_catalog(sample.catalog)
        yield db


def verdict(store: Store, trace_id: str, rule: str) -> tuple[bool, str | None, str | None]:
    return store.con.execute("SELECT passed, reason, detail FROM verdicts WHERE trace_id = ? AND rule = ?",
                             [trace_id, rule]).fetchone()


def test_ingest_is_incremental_and_clean_rules_pass(store, traces):
    first = store.ingest(traces)
    again = store.ingest(traces)
    assert (first.new, first.rejected) == (480, 0) and (again.new, again.already_in_store) == (0, 480)
    failed = run_rules(store)
    assert store.scalar("SELECT count(*) FROM (SELECT trace_id, rule FROM verdicts GROUP BY ALL HAVING count(*) > 1)") == 0
    assert {k: v for k, v in failed.items() if k != "blind_hit"} == dict.fromkeys(set(failed) - {"blind_hit"}, 0)
    report = funnel(store)
    assert report["traces"] == 480 and report["kept"] == 480 - failed["blind_hit"]
    assert report["rules"]["blind_hit"]["checked"] == 120


def test_a_file_that_repeats_its_traces_enters_each_once(store, traces, tmp_path):
    """Two copies of every row in one file (say, journals concatenated by hand): each trace enters once."""
    pq.write_table(pl.concat([pl.read_parquet(traces)] * 2).to_arrow(), tmp_path / "twice.parquet")
    report = store.ingest(tmp_path / "twice.parquet")
    assert (report.rows, report.new, report.already_in_store) == (960, 480, 480)
    assert store.scalar("SELECT count(DISTINCT trace_id) FROM traces") == store.scalar("SELECT count(*) FROM traces") == 480


def mutate(source, target, task: str, change) -> dict:
    """Copy ``source`` with the first row of ``task`` changed by ``change(row) -> row``; returns the changed row."""
    rows = pl.read_parquet(source)
    index = rows["task"].to_list().index(task)
    row = change(rows.row(index, named=True))
    row["subject_id"] = row["subject_id"] + "#crafted"
    pl.concat([rows, pl.DataFrame([row], schema=rows.schema)]).write_parquet(target)
    return row


def trace_id_of(store: Store, row: dict) -> str:
    return store.con.execute("SELECT trace_id FROM traces WHERE subject_id = ?", [row["subject_id"]]).fetchone()[0]


def with_think(row: dict, think: str) -> dict:
    answer = row["text"].split("</think>\n", 1)[1]
    row["text"] = f"<think>\nPersona: bargain hunter. cheap\nInterests:\n1. tape (from #1)\nTransition: {think} -> interest 1. x\n</think>\n{answer}"
    return row


@pytest.mark.parametrize(("task", "rule", "reason", "change"), [
    ("r3_cot_hindsight", "persona", "persona_unknown",
     lambda r: r | {"output": json.dumps(json.loads(r["output"]) | {"persona": {"prototype": "astronaut", "evidence": "x"}})}),
    ("r3_cot_hindsight", "interests", "evidence_out_of_range",
     lambda r: r | {"output": json.dumps(json.loads(r["output"]) | {"interests": [{"name": "x", "evidence": [99]}]})}),
    ("r3_cot_hindsight", "cot_format", "cot_format", lambda r: r | {"text": "I think they want tape."}),
    ("r3_cot_blind", "sid_validity", "unknown_sid", lambda r: with_think(r, "after <a_999><b_999><c_999>")),
    ("r3_cot_blind", "sid_validity", "answer_not_sid",
     lambda r: r | {"output": json.dumps(json.loads(r["output"]) | {"answer": "the drill"})}),
    ("r0_caption", "length", "too_short", lambda r: r | {"text": "ok"}),
    ("r0_caption", "language", "language", lambda r: r | {"text": "это очень хороший товар для дома и сада"}),
    ("r3_cot_hindsight", "future", "future_event", lambda r: r | {"history_ts": [r["cutoff_ts"]] * len(r["history"])}),
    ("r3_cot_hindsight", "substance", "no_substance", lambda r: with_think(r, "1 to 6, recent 2023-01-10T00:00:00Z")),
])
def test_crafted_traces_trip_their_rule(store, traces, tmp_path, task, rule, reason, change):
    row = mutate(traces, tmp_path / "crafted.parquet", task, change)
    store.ingest(tmp_path / "crafted.parquet")
    run_rules(store)
    passed, got, _ = verdict(store, trace_id_of(store, row), rule)
    assert (passed, got) == (False, reason)


def test_the_language_rule_counts_full_width_latin_as_latin(store, traces, tmp_path):
    """A think block quoting a full-width title reads as its plain twin does: both pass the language rule."""
    full_width = "Ｄｒｉｌｌ Ｂｉｔ Ｓｅｔ ｆｏｒ Ｍｅｔａｌ"
    def quoting(title: str, name: str):
        return lambda r: with_think(r | {"subject_id": r["subject_id"] + name}, f"after {title} comes more")

    rows = [mutate(traces, tmp_path / f"{name}.parquet", "r3_cot_hindsight", quoting(title, name))
            for name, title in (("wide", full_width), ("plain", "Drill Bit Set for Metal"))]
    for name in ("wide", "plain"):
        store.ingest(tmp_path / f"{name}.parquet")
    run_rules(store)
    for row in rows:
        assert verdict(store, trace_id_of(store, row), "language")[:2] == (True, None)


HOSTILE_EVIDENCE = [1666881701329709, 123456789012345678901234567890, -1, 0, 1.5, "2", None, [1], {}, True]


def test_hostile_values_in_an_output_fail_their_rule_never_the_run(store, traces, tmp_path):
    """A teacher's output is untrusted: every field a rule reads, written with the wrong type or range (a timestamp as
    evidence, integers past 64 bits, floats, strings, nulls, nested arrays, empty objects), fails that rule with its
    reason; the other traces keep their verdicts."""
    rows = pl.read_parquet(traces)
    base = rows.filter(pl.col("task") == "r3_cot_hindsight").row(0, named=True)
    output = json.loads(base["output"])
    hostile = [("interests", "evidence_out_of_range", output | {"interests": [{"name": "x", "evidence": [e]}]}) for e in HOSTILE_EVIDENCE]
    hostile += [("interests", "evidence_out_of_range", output | {"interests": [{"name": "x", "evidence": e}]}) for e in (None, {}, [], "1")]
    hostile += [("interests", "evidence_out_of_range", output | {"interests": [{"name": "x"}]}),
                ("interests", "evidence_out_of_range", output | {"interests": [None]}),
                ("interests", "interest_count", output | {"interests": []}),
                ("interests", "schema_invalid", output | {"interests": {}}),
                ("interests", "schema_invalid", output | {"interests": "many"}),
                ("persona", "persona_unknown", output | {"persona": "bargain hunter"}),
                ("persona", "persona_unknown", output | {"persona": {"prototype": 7}}),
                ("sid_validity", "answer_not_sid", output | {"answer": None}),
                ("sid_validity", "answer_not_sid", output | {"answer": 1666881701329709}),
                ("sid_validity", "answer_not_sid", output | {"answer": {"sid": "<a_1>"}})]
    crafted = [base | {"subject_id": f"{base['subject_id']}#hostile{i}", "output": json.dumps(o)} for i, (_, _, o) in enumerate(hostile)]
    pl.concat([rows, pl.DataFrame(crafted, schema=rows.schema)]).write_parquet(tmp_path / "hostile.parquet")
    store.ingest(tmp_path / "hostile.parquet")
    run_rules(store)
    for row, (rule, reason, o) in zip(crafted, hostile):
        passed, got, detail = verdict(store, trace_id_of(store, row), rule)
        assert (passed, got) == (False, reason), (o, detail)
    assert store.scalar("SELECT count(*) FROM verdicts WHERE passed IS NULL") == 0
    untouched = store.scalar("SELECT count(*) FROM verdicts v JOIN traces t USING (trace_id) WHERE t.subject_id NOT LIKE '%#hostile%' "
                             "AND v.rule IN ('interests', 'persona', 'sid_validity') AND NOT v.passed")
    assert untouched == 0


@pytest.mark.parametrize(("leak", "reason"), [("sid", "leak_sid"), ("title", "leak_title_ngram"), ("word", "leak_token")])
def test_hindsight_leaks_are_caught(store, traces, tmp_path, sample, leak, reason):
    items = sample.catalog.items.with_columns(sid_text=sample.catalog.sid_text())
    by_id = {r["item_id"]: r for r in items.iter_rows(named=True)}
    words_of = {i: set(re.findall(WORD_RE, r["title"].lower())) for i, r in by_id.items()}
    df = Counter(w for words in words_of.values() for w in words)

    def change(row: dict) -> dict:
        target = by_id[row["target"]]
        seen = set().union(*(words_of[i] for i in row["history"]))
        rare = sorted(w for w in words_of[row["target"]] - seen if len(w) >= 4 and df[w] / len(by_id) <= 0.01 and w.isalpha())
        text = {"sid": target["sid_text"], "title": target["title"], "word": rare[0]}[leak]
        return with_think(row, f"they will now want {text} soon")

    row = mutate(traces, tmp_path / "leak.parquet", "r3_cot_hindsight", change)
    store.ingest(tmp_path / "leak.parquet")
    run_rules(store)
    passed, got, detail = verdict(store, trace_id_of(store, row), "leakage")
    assert (passed, got) == (False, reason), detail


def test_grounding_scores_follow_their_definition(store, traces, tmp_path, sample):
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))

    def change(row: dict) -> dict:
        row["history"] = row["history"][:1] + [i for i in sid_of if i not in row["history"]][:3]
        row["history_ts"] = [1, 2, 3, 4]
        row["target_ts"], row["cutoff_ts"] = 5, 100
        # mentions history item 2 by SID, cites #1, and names one SID outside the history
        outside = next(s for i, s in sid_of.items() if i not in row["history"])
        return with_think(row, f"#1 then {sid_of[row['history'][1]]} and {outside}")

    row = mutate(traces, tmp_path / "g.parquet", "r3_cot_blind", change)
    store.ingest(tmp_path / "g.parquet")
    run_rules(store, RulesConfig.model_validate({"grounding": {"max_ehr": 0.4}}))
    scores = dict(store.con.execute("SELECT name, value FROM scores WHERE trace_id = ?", [trace_id_of(store, row)]).fetchall())
    assert scores == {"ehr": 0.5, "cov_rate": 0.5}
    assert verdict(store, trace_id_of(store, row), "grounding")[:2] == (False, "hallucinated_items")


def test_blind_hits_exact_prefix_and_miss(store, traces, tmp_path, sample):
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    rows = []
    for name, answer in (("exact", lambda s: s), ("prefix", lambda s: s.rsplit("<", 1)[0] + "<c_999>"), ("miss", lambda s: "<a_999><b_999><c_999>")):
        row = mutate(traces, tmp_path / f"{name}.parquet", "r3_cot_blind",
                     lambda r, answer=answer, name=name: r | {
                         "output": json.dumps(json.loads(r["output"]) | {"answer": answer(sid_of[r["target"]])}),
                         "subject_id": r["subject_id"] + name})
        store.ingest(tmp_path / f"{name}.parquet")
        rows.append((name, row))
    run_rules(store)
    got = {name: verdict(store, trace_id_of(store, row), "blind_hit") for name, row in rows}
    assert got["exact"][:2] == (True, None) and got["exact"][2].startswith("exact")
    assert got["prefix"][:2] == (True, None) and got["prefix"][2].startswith("prefix")
    assert got["miss"][:2] == (False, "miss")
    run_rules(store, RulesConfig.model_validate({"blind_hit": {"prefix_levels": 0}}))
    assert verdict(store, trace_id_of(store, rows[1][1]), "blind_hit")[:2] == (False, "miss")


def test_switched_off_rule_leaves_no_verdicts(store, traces):
    store.ingest(traces)
    failed = run_rules(store, RulesConfig.model_validate({"blind_hit": {"enabled": False}}))
    assert "blind_hit" not in failed
    assert store.con.execute("SELECT count(*) FROM verdicts WHERE rule = 'blind_hit'").fetchone()[0] == 0


def test_bad_inputs_are_named(store, traces, tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(traces.read_bytes()[:2000])
    with pytest.raises(DataError, match="(?s)broken.parquet.*partial or corrupt"):
        store.ingest(broken)
    bare = tmp_path / "bare.parquet"
    pl.read_parquet(traces).drop("template_hash").write_parquet(bare)
    with pytest.raises(DataError, match="template_hash"):
        store.ingest(bare)
    holes = tmp_path / "holes.parquet"
    frame = pl.read_parquet(traces)
    frame.with_columns(model=pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise(pl.col("model"))).write_parquet(holes)
    report = store.ingest(holes)
    assert report.rejected == 3 and report.new == frame.height - 3
    assert store.con.execute("SELECT count(*), min(reason) FROM ingest_rejects").fetchone() == (3, "no_provenance")


def test_store_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "old.duckdb"
    Store(path).close()
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE meta SET value = '0' WHERE name = 'schema_version'")
    with pytest.raises(DataError, match="schema version 0"):
        Store(path)


def test_store_of_version_1_is_migrated_keeping_its_rows(tmp_path, sample):
    path = tmp_path / "v1.duckdb"
    with Store(path) as store:
        store.load_catalog(sample.catalog)
    with duckdb.connect(str(path)) as con:  # what version 1 looked like: a catalog without domains
        con.execute("ALTER TABLE catalog DROP COLUMN domain")
        con.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    with Store(path) as store:
        assert store.scalar("SELECT value FROM meta WHERE name = 'schema_version'") == str(SCHEMA_VERSION)
        assert store.scalar("SELECT count(*) FROM catalog WHERE domain IS NULL") == sample.catalog.items.height


def test_store_of_version_2_drops_its_bulk_table_keys_keeping_rows(tmp_path):
    path = tmp_path / "v2.duckdb"
    Store(path).close()
    with duckdb.connect(str(path)) as con:  # version 2 keyed verdicts by (trace_id, rule)
        con.execute("DROP TABLE verdicts")
        con.execute("CREATE TABLE verdicts (trace_id VARCHAR, rule VARCHAR, passed BOOLEAN, reason VARCHAR, detail VARCHAR, "
                    "PRIMARY KEY (trace_id, rule))")
        con.execute("INSERT INTO verdicts VALUES ('t1', 'length', true, NULL, '30 characters')")
        con.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
    with Store(path) as store:
        assert store.scalar("SELECT value FROM meta WHERE name = 'schema_version'") == str(SCHEMA_VERSION)
        assert store.con.execute("SELECT * FROM verdicts").fetchall() == [("t1", "length", True, None, "30 characters")]
        assert store.scalar("SELECT count(*) FROM duckdb_constraints() WHERE table_name IN ('verdicts', 'scores', 'dup_clusters')") == 0


def test_store_of_version_3_keeps_review_decisions_under_their_dataset(tmp_path):
    path = tmp_path / "v3.duckdb"
    Store(path).close()
    with duckdb.connect(str(path)) as con:  # version 3 keyed review decisions by trace alone
        con.execute("DROP TABLE review_decisions")
        con.execute("CREATE TABLE review_decisions (trace_id VARCHAR PRIMARY KEY, decision VARCHAR, accepts INTEGER, "
                    "rejects INTEGER, policy VARCHAR, corrected_text VARCHAR, corrected_by VARCHAR)")
        con.execute("INSERT INTO review_decisions VALUES ('t1', 'reject', 0, 2, 'majority', NULL, NULL)")
        con.execute("INSERT INTO review_pushes VALUES ('first', 't1', 'h', now())")
        con.execute("UPDATE meta SET value = '3' WHERE name = 'schema_version'")
    with Store(path) as store:
        assert store.con.execute("SELECT dataset, trace_id, decision FROM review_decisions").fetchall() == [("first", "t1", "reject")]


def test_judge_scores_through_a_teacher_and_a_rerun_sends_nothing(store, traces, tmp_path, sample, instant_server):
    from recot.curation.judge import JudgeConfig, run_judge
    from recot.teachers import OpenAITeacherConfig

    store.ingest(traces)
    first = run_judge(store)
    again = run_judge(store)
    assert first["scored"] == 240 and first["sent"] + first["shared"] == 240 and first["cached"] == 0
    assert again["sent"] == 0 and again["scored"] == 240
    low, high = store.con.execute("SELECT min(value), max(value) FROM scores WHERE name = 'judge'").fetchall()[0]
    assert 1 <= low <= high <= 5
    provenance = json.loads(store.scalar("SELECT provenance FROM scores WHERE name = 'judge' LIMIT 1"))
    assert provenance["teacher"] == "rules" and len(provenance["request_hash"]) == 64
    # an endpoint whose answers are not judge JSON: every trace is counted as rejected, none scored
    http = JudgeConfig(teacher=OpenAITeacherConfig(model="garbage", base_urls=[instant_server.url]),
                       journal=tmp_path / "http.sqlite")
    result = run_judge(store, http)
    assert result["scored"] == 0 and result["rejected"] == {"malformed_json": 240}


def test_delta_ll_under_a_tiny_scorer(store, traces, tiny_model):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.curation.usefulness import run_usefulness, sid_logprobs

    store.ingest(traces)
    result = run_usefulness(store, tiny_model, batch_size=16)
    assert result["scored"] == 240
    rows = dict(store.con.execute("SELECT name, count(*) FROM scores WHERE name LIKE 'll_%' OR name = 'delta_ll' GROUP BY name").fetchall())
    assert rows == {"ll_cot": 240, "ll_plain": 240, "delta_ll": 240}
    assert store.scalar("SELECT max(abs(d.value - (c.value - p.value))) FROM scores d JOIN scores c USING (trace_id) "
                        "JOIN scores p USING (trace_id) WHERE d.name = 'delta_ll' AND c.name = 'll_cot' AND p.name = 'll_plain'") < 1e-6
    # the batched, padded scorer agrees with one unpadded forward pass, and an empty CoT changes nothing
    import torch

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prefix, target = "a user bought <a_1><b_2><c_3> then ", "<a_4><b_5><c_6>"
    batched = sid_logprobs(model, tokenizer, [prefix, prefix + "longer context here "], [target, target])[0]
    ids = tokenizer(prefix + target, return_tensors="pt", add_special_tokens=False, return_offsets_mapping=True)
    offsets = ids.pop("offset_mapping")[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(**ids).logits[0, :-1], dim=-1).gather(-1, ids["input_ids"][0, 1:, None])[:, 0]
    manual = logp[offsets[1:, 0] >= len(prefix)].sum().item()
    assert abs(batched - manual) < 1e-4


def test_trace_columns_follow_the_catalog_in_history_order(store, traces, tmp_path, sample):
    from recot.curation.trace_columns import trace_columns

    row = mutate(traces, tmp_path / "t.parquet", "r3_cot_hindsight",
                 lambda r: r | {"history": [*r["history"], "not-in-catalog"], "history_ts": [*r["history_ts"], r["history_ts"][-1]]})
    store.ingest(tmp_path / "t.parquet")
    trace_columns(store)
    got = store.con.execute("""SELECT c.history_sids, c.lines, c.history_titles, c.think_words FROM trace_columns c
                               JOIN traces t USING (trace_id) WHERE t.subject_id = ?""", [row["subject_id"]]).fetchone()
    items = sample.catalog.items
    sid_of = dict(zip(items["item_id"], sample.catalog.sid_text()))
    title_of = dict(zip(items["item_id"], items["title"]))
    known = row["history"][:-1]
    assert got[0] == [sid_of[i] for i in known] + [None]
    assert got[1].split("\n") == [f"{k}. {sid_of[i]} {title_of[i] or ''}" for k, i in enumerate(known, 1)] + [f"{len(known) + 1}. ? "]
    assert got[2].count("|") == len(known) - 1 and got[2].startswith(" ") and got[2].endswith(" ")
    think = row["text"].split("</think>")[0].split("<think>")[1]
    assert got[3].split() == re.findall(WORD_RE, think.lower()) and got[3][0] == got[3][-1] == " "
    assert " " + " ".join(got[3].split()[:3]) + " " in got[3]  # words single-spaced, so n-grams match as strings


def test_store_of_version_4_gains_the_newer_columns_and_takes_older_trace_files(tmp_path, traces):
    newer = ["popular_rank", "reasoning", "reasoning_tokens"]  # slates (version 5), thinking teachers (version 7)
    path = tmp_path / "v4.duckdb"
    Store(path).close()
    with duckdb.connect(str(path)) as con:
        for column in newer:
            con.execute(f"ALTER TABLE traces DROP COLUMN {column}")
        con.execute("UPDATE meta SET value = '4' WHERE name = 'schema_version'")
    older = tmp_path / "older" / "traces.parquet"  # a file written before slates, without the columns
    older.parent.mkdir()
    pq.write_table(pq.read_table(traces).drop(newer), older)
    with Store(path) as store:
        assert store.ingest(older).new == pq.read_metadata(traces).num_rows
        assert store.scalar(f"SELECT count(*) FROM traces WHERE {' OR '.join(f'{c} IS NOT NULL' for c in newer)}") == 0
