"""The real vLLM paths with a tiny random model: the in-process engine (through the CLI, as users run
it), the OpenAI-compatible server with both structured-output modes, SIGKILL and resume, and the
server going away and coming back mid-job. A random model writes garbage, so these assert the
mechanics (schema-valid JSON under structured outputs, rows, reasons, resume), never quality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import polars as pl
import pytest

from recot.formats.schemas import ItemRelation
from recot.synth.job import SynthConfig, run_synth
from recot.teachers import OpenAITeacherConfig, Sampling
from recot.testing import RECOT, journal_rows

pytest.importorskip("vllm")
KNOWN_REASONS = {"truncated", "schema_invalid", "malformed_json", "empty", "prompt_too_long"}


def write_config(path, sample_path, out, teacher: str, tasks: list[str], limit: int, sampling: str) -> None:
    path.write_text(f"""
dataset = "{sample_path}"
out = "{out}"
tasks = {json.dumps(tasks)}
limit = {limit}
commit_rows = 4
[teacher]
{teacher}
[sampling]
{sampling}
""")



def check_rows(rows: pl.DataFrame) -> None:
    assert set(rows["reason"].drop_nulls()) <= KNOWN_REASONS
    unsent = pl.col("reason").eq_missing("prompt_too_long")  # refused before the engine: nothing generated
    assert (rows.filter(unsent)["completion_tokens"] == 0).all()
    sent = rows.filter(~unsent)
    assert (sent["completion_tokens"] > 0).all() and sent["finish_reason"].is_in(["stop", "length"]).all()
    relations = rows.filter((pl.col("task") == "r1_relation") & (pl.col("status") == "ok"))
    assert relations.height > 0, "structured outputs should make most short relation answers valid"
    for text in relations["output"]:
        ItemRelation.model_validate_json(text)


def test_in_process_engine_through_the_cli(sample_path, tiny_model, tmp_path):
    cfg = tmp_path / "job.toml"
    write_config(cfg, sample_path, tmp_path / "out", f'kind = "vllm"\nmodel = "{tiny_model}"\n'
                 'engine = { dtype = "float32", max_model_len = 1024, enforce_eager = true }',
                 ["r1_relation", "r3_cot_blind"], 6, "n = 2\nmax_tokens = 400\ntemperature = 1.0")
    done = subprocess.run([*RECOT, "synth", "run", str(cfg), "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = pl.read_parquet(tmp_path / "out" / "traces.parquet")
    assert report["teacher"] == "vllm" and rows.height == 24 and report["completion_tokens"] > 0
    assert rows.group_by("subject_id", "task").agg(pl.col("seed").n_unique())["seed"].eq(2).all()
    check_rows(rows)


def test_the_adaptive_limit_reads_the_real_servers_gauges_and_loses_nothing(vllm_server):
    """The installed vLLM's /metrics carries the gauges the adaptive limit reads (read from the page, not assumed), and
    a few dozen requests through the limit are each answered once."""
    import httpx

    from recot.teachers.base import Request
    from recot.teachers.openai_http import OpenAITeacher, server_load

    load = server_load(httpx.get(vllm_server.url.removesuffix("/v1") + "/metrics").text)
    assert load is not None and load[0] >= 0 and load[1] >= 0 and load[2] is not None
    teacher = OpenAITeacher("teacher", [vllm_server.url], concurrency=64, structured="none")
    requests = [Request(f"k{i}", "r1_relation", [{"role": "user", "content": f"item {i}"}], {}, 0, i, 1.0, 1.0, 8) for i in range(36)]
    answers = list(teacher.generate(requests))
    assert sorted(a.key for a in answers) == sorted(r.key for r in requests) and all(a.error is None for a in answers)
    assert teacher.limit is not None and 1 <= teacher.limit.peak <= 64


@pytest.mark.parametrize("structured", ["response_format", "extra_body"])
def test_server_with_structured_outputs(sample_path, tmp_path, vllm_server, structured):
    cfg = SynthConfig(dataset=sample_path, out=tmp_path, tasks=["r1_relation"], limit=12,
                      teacher=OpenAITeacherConfig(model="teacher", base_urls=[vllm_server.url], structured=structured),
                      sampling=Sampling(max_tokens=400, temperature=1.0))
    report = run_synth(cfg, progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.complete and rows.height == 12 and report.prompt_tokens > 0
    check_rows(rows)


def test_sigkill_then_resume_loses_and_repeats_nothing(sample_path, tmp_path, vllm_server):
    out = tmp_path / "out"
    cfg = tmp_path / "job.toml"
    write_config(cfg, sample_path, out, f'kind = "openai"\nmodel = "teacher"\nbase_urls = ["{vllm_server.url}"]\nconcurrency = 2',
                 ["r1_relation"], 120, "max_tokens = 48")
    job = subprocess.Popen([*RECOT, "synth", "run", str(cfg), "--no-progress"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while journal_rows(out) < 20 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    before = journal_rows(out)
    assert 20 <= before < 120, "the job should be killed midway"
    report = run_synth(SynthConfig(dataset=sample_path, out=out, tasks=["r1_relation"], limit=120,
                                   teacher=OpenAITeacherConfig(model="teacher", base_urls=[vllm_server.url]),
                                   sampling=Sampling(max_tokens=48)), progress=False)
    rows = pl.read_parquet(out / "traces.parquet")
    assert report.complete and rows.height == 120 and rows["request_hash"].n_unique() == 120
    assert report.sent == 120 - before and journal_rows(out) == 120


def test_server_restarted_mid_job(sample_path, tmp_path, vllm_server):
    cfg = SynthConfig(dataset=sample_path, out=tmp_path, tasks=["r1_relation"], limit=60, commit_rows=4,
                      teacher=OpenAITeacherConfig(model="teacher", base_urls=[vllm_server.url], concurrency=2,
                                            max_retries=200, backoff_cap_s=4),
                      sampling=Sampling(max_tokens=48))
    result = {}
    job = threading.Thread(target=lambda: result.update(report=run_synth(cfg, progress=False)))
    job.start()
    while journal_rows(tmp_path) < 10 and job.is_alive():
        time.sleep(0.2)
    vllm_server.stop()
    time.sleep(1)
    vllm_server.start()  # on a busy 2-core machine this can take longer than 30 retries' backoff: the budget spans it
    job.join(timeout=900)
    report = result["report"]
    assert report.complete and report.rows == 60 and report.retries > 0


def test_the_engine_streams_answers_as_they_finish_and_rejects_a_prompt_longer_than_the_context(tiny_model):
    """The in-process engine with max_model_len = 256: one long history must not abort the rest; a short answer reaches
    the caller before a long one asked earlier (the engine's step loop, not one batch); a caller that stops early
    leaves nothing running in the engine."""
    from recot.formats.schemas import ItemRelation
    from recot.synth.parse import parse_response
    from recot.teachers.base import Request
    from recot.teachers.vllm_engine import VLLMTeacher

    schema = ItemRelation.model_json_schema()

    def request(key: str, text: str, max_tokens: int = 8) -> Request:
        return Request(key, "r1_relation", [{"role": "user", "content": text}], schema, 0, 0, 1.0, 1.0, max_tokens)

    teacher = VLLMTeacher(str(tiny_model), {"dtype": "float32", "max_model_len": 256, "enforce_eager": True})
    try:
        slow = request("slow", "Write at length: how do drill bits relate to a drill?", 160)
        short, long = request("short", "How do drill bits relate to a drill?"), request("long", "drill bits " * 400)
        order = [r.key for r in teacher.generate([slow, short, long, request("short2", "And screws to a driver?")])]
        answers = {r.key: r for r in teacher.generate([short, long])}
        stream = teacher.generate([slow, request("slow2", "Again, at length?", 160)])
        next(stream)
        stream.close()
        left_running = teacher.llm.llm_engine.has_unfinished_requests()
    finally:
        teacher.close()
    assert sorted(order) == ["long", "short", "short2", "slow"] and order.index("slow") > max(order.index("short"), order.index("short2"))
    rejected = parse_response(answers["long"], ItemRelation)
    assert rejected.reason == "prompt_too_long" and "max_model_len is 256" in rejected.detail
    assert answers["short"].completion_tokens > 0 and not left_running


def test_faults_between_the_client_and_a_real_vllm_server_lose_nothing(sample_path, tmp_path, vllm_server):
    """429, 503, dropped connections, cut bodies, text bodies and empty choices in front of the real server: every
    planned request ends answered, counted once; the rerun sends nothing and writes the same rows."""
    from recot.testing.fault_proxy import DEFAULT_SCHEDULE, FaultProxy

    with FaultProxy(vllm_server.url) as proxy:
        cfg = SynthConfig(dataset=sample_path, out=tmp_path, tasks=["r1_relation"], limit=40,
                          teacher=OpenAITeacherConfig(model="teacher", base_urls=[proxy.url], concurrency=4,
                                                backoff_s=0.01, max_retries=10),
                          sampling=Sampling(max_tokens=64, temperature=1.0))
        report = run_synth(cfg, progress=False)
        rows = pl.read_parquet(tmp_path / "traces.parquet")
        assert report.balanced and report.complete and report.retries > 0, report
        assert set(proxy.received) == set(DEFAULT_SCHEDULE)  # every kind of fault was met
        assert rows.height == report.planned == 40 and rows.select("subject_id", "sample").is_unique().all()
        forwarded = proxy.forwarded
        again = run_synth(cfg, progress=False)
        assert again.sent == 0 and proxy.forwarded == forwarded and again.balanced and again.ok == report.ok
        assert pl.read_parquet(tmp_path / "traces.parquet").equals(rows)


def test_slate_answers_are_confined_to_the_slate_by_structured_outputs(sample_path, sample, tmp_path, vllm_server):
    from recot.synth.slates import SlateConfig

    cfg = SynthConfig(dataset=sample_path, out=tmp_path, tasks=["r3_cot_slate"], limit=16, max_history=2,
                      personas=["student"], slate=SlateConfig(size=4, samplers={"popularity": 1, "prefix": 1}),
                      teacher=OpenAITeacherConfig(model="teacher", base_urls=[vllm_server.url], structured="extra_body"),
                      sampling=Sampling(max_tokens=1300, temperature=1.0))
    report = run_synth(cfg, progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.complete and rows.height == 16 and set(rows["reason"].drop_nulls()) <= KNOWN_REASONS
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    answered = rows.filter(pl.col("status") == "ok")
    print(f"slate answers under structured outputs: {answered.height} of {rows.height} complete")
    assert answered.height > 0, "a random model should complete some short slate traces within max_tokens"
    for row in answered.iter_rows(named=True):
        assert json.loads(row["output"])["answer"] in {sid_of[i] for i in row["items"]}


def test_dry_run_counts_prompt_tokens_as_the_server_does(sample_path, tiny_model, tmp_path, vllm_server):
    from recot.synth.job import dry_run

    cfg = SynthConfig(dataset=sample_path, out=tmp_path, tasks=["r1_relation", "r3_cot_blind"], limit=5,
                      teacher=OpenAITeacherConfig(model="teacher", base_urls=[vllm_server.url], tokenizer=str(tiny_model)),
                      sampling=Sampling(max_tokens=16, temperature=1.0))
    plan = dry_run(cfg)
    report = run_synth(cfg, progress=False)
    assert plan["tokens_counted_with"] == f"tokenizer {tiny_model}" and plan["to_send"] == report.sent == 10
    assert plan["prompt_tokens"] == report.prompt_tokens  # the teacher's own tokenizer and chat template


def test_the_vllm_teacher_starts_no_engine_when_nothing_is_left_to_ask(tmp_path):
    """A rerun whose every answer is in the journal hands the teacher no request: no model is loaded (here the model
    folder does not even exist, so building the engine would fail)."""
    from recot.teachers.vllm_engine import VLLMTeacher

    teacher = VLLMTeacher(str(tmp_path / "no-such-model"))
    assert list(teacher.generate(iter(()))) == [] and teacher._llm is None
