"""Batch-file mode: requests written as OpenAI Batch API JSONL within the file limits, outputs imported
exactly like live answers (errors rejected with a reason, expired ones left for the next batch, ids of
another job refused), importing twice changing nothing; and the whole round trip through vLLM's real
``run_batch`` on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from recot.errors import DataError
from recot.synth.job import SynthConfig, read_batch, write_batch
from recot.teachers import OpenAITeacherConfig, Sampling
from recot.teachers.batch_files import NOT_IN_OUTPUT, WRITTEN
from recot.teachers.openai_http import chat_kwargs
from recot.testing import RECOT

RELATION = {"relation": "complement", "rationale": "used together"}


def batch_config(sample_path, out, limit=30, structured="response_format") -> SynthConfig:
    return SynthConfig(dataset=sample_path, out=out, tasks=["r1_relation"], limit=limit, sampling=Sampling(max_tokens=200),
                       teacher=OpenAITeacherConfig(model="teacher", base_urls=["http://batch.invalid/v1"], structured=structured))


def lines(files) -> list[dict]:
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


def output_line(custom_id: str, content: dict | None = None, status: int = 200, error: dict | None = None) -> str:
    body = {"choices": [{"message": {"role": "assistant", "content": json.dumps(content)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 9}} if status == 200 else {"error": error}
    return json.dumps({"id": "batch_req_1", "custom_id": custom_id, "response": {"status_code": status, "body": body},
                       "error": None if status == 200 else error})


def test_requests_are_written_within_the_limits_with_the_live_clients_body(sample_path, tmp_path):
    config = batch_config(sample_path, tmp_path)
    report, files = write_batch(config, max_requests=7)
    written = lines(files)
    assert report.balanced and report.unanswered == {WRITTEN: 30} and report.ok == 0
    assert len(files) == 5 and [len(f.read_text().splitlines()) for f in files] == [7, 7, 7, 7, 2]
    assert len({w["custom_id"] for w in written}) == 30 and all(len(w["custom_id"]) == 64 for w in written)
    first = written[0]
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    assert first["body"]["response_format"]["json_schema"]["strict"] is True and first["body"]["model"] == "teacher"
    _, by_bytes = write_batch(config, max_bytes=len(json.dumps(first)) * 3)
    assert all(f.stat().st_size <= len(json.dumps(first)) * 3 for f in by_bytes) and len(lines(by_bytes)) == 30
    # vLLM's own structured outputs go into the body as the SDK sends extra_body: at the top level
    vllm_style = lines(write_batch(batch_config(sample_path, tmp_path / "x", structured="extra_body"))[1])[0]["body"]
    assert "structured_outputs" in vllm_style and "extra_body" not in vllm_style
    assert set(chat_kwargs("teacher", _request(), "response_format")) <= set(first["body"])


def _request():
    from recot.teachers.base import Request

    return Request("k", "r1_relation", [{"role": "user", "content": "x"}], {"type": "object"}, 0, 0, 0.7, 1.0, 10)


def test_outputs_import_like_live_answers_and_twice_changes_nothing(sample_path, tmp_path):
    config = batch_config(sample_path, tmp_path)
    _, files = write_batch(config)
    ids = [w["custom_id"] for w in lines(files)]
    output, errors = tmp_path / "output.jsonl", tmp_path / "errors.jsonl"
    output.write_text("\n".join([output_line(i, RELATION) for i in ids[:25]] + [output_line(ids[25], {"relation": "nope"})]) + "\n")
    errors.write_text("\n".join([
        output_line(ids[26], status=400, error={"code": "invalid_request", "message": "bad schema"}),
        output_line(ids[27], status=0, error={"code": "batch_expired", "message": "not done in 24h"}),
        output_line("f" * 64, RELATION),  # an id of another job
    ]) + "\n")
    report, unknown = read_batch(config, [output, errors])
    assert unknown == ["f" * 64]
    assert report.ok == 25 and report.rejected == {"schema_invalid": 1, "request_error": 1}
    assert report.unanswered == {"batch batch_expired: not done in 24h": 1, NOT_IN_OUTPUT: 2} and report.balanced
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert rows.height == 27 and rows.filter(pl.col("status") == "rejected")["detail"].to_list().count("batch invalid_request: bad schema") == 1
    assert report.prompt_tokens == 26 * 50
    again, _ = read_batch(config, [output, errors])
    assert again.sent == 3 and again.cached == 27 and again.ok == 25  # only the unanswered were looked up again
    assert pl.read_parquet(tmp_path / "traces.parquet").drop("created_at").equals(rows.drop("created_at"))
    _, rest = write_batch(config)
    assert sorted(w["custom_id"] for w in lines(rest)) == sorted(ids[27:])  # the next batch holds only what is missing


def test_bad_batch_files_are_named(sample_path, tmp_path):
    config = batch_config(sample_path, tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(output_line("a" * 64, RELATION) + "\nnot json\n")
    with pytest.raises(DataError, match=r"broken.jsonl:2"):
        read_batch(config, [broken])
    rules = SynthConfig(dataset=sample_path, out=tmp_path / "r", tasks=["r1_relation"])
    with pytest.raises(DataError, match="OpenAI-compatible teacher"):
        write_batch(rules)


def test_round_trip_through_vllm_run_batch(sample_path, tiny_model, tmp_path):
    pytest.importorskip("vllm")
    config_path = tmp_path / "job.toml"
    config_path.write_text(f"""
dataset = "{sample_path}"
out = "{tmp_path / 'out'}"
tasks = ["r1_relation"]
limit = 8
[teacher]
kind = "openai"
model = "teacher"
base_urls = ["http://batch.invalid/v1"]
[sampling]
max_tokens = 200
temperature = 1.0
""")
    written = subprocess.run([*RECOT, "synth", "batch-write", str(config_path), "--json"], capture_output=True, text=True)
    assert written.returncode == 0, written.stderr[-2000:]
    [requests] = json.loads(written.stdout)["files"]
    output = tmp_path / "output.jsonl"
    served = subprocess.run(
        [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", requests, "-o", str(output), "--model", str(tiny_model),
         "--served-model-name", "teacher", "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
         "--no-enable-chunked-prefill"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert served.returncode == 0, served.stderr[-3000:]
    imported = subprocess.run([*RECOT, "synth", "batch-read", str(config_path), str(output), "--json"], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-2000:]
    report = json.loads(imported.stdout)
    rows = pl.read_parquet(tmp_path / "out" / "traces.parquet")
    assert report["unanswered"] == {} and report["unknown_ids"] == 0 and rows.height == 8
    assert report["ok"] + sum(report["rejected"].values()) == 8 and report["completion_tokens"] > 0
    assert set(rows["reason"].drop_nulls()) <= {"truncated", "schema_invalid", "malformed_json", "empty"}
    assert report["ok"] > 0, "structured outputs should make most short relation answers valid"


def test_a_reasoning_models_batch_takes_max_completion_tokens_and_its_reasoning_stays_provenance(sample_path, tmp_path):
    config = batch_config(sample_path, tmp_path, limit=3)
    config = config.model_copy(update={"teacher": config.teacher.model_copy(update={"token_limit": "max_completion_tokens"})})
    _, files = write_batch(config)
    bodies = [w["body"] for w in lines(files)]
    assert all(b["max_completion_tokens"] == 200 and "max_tokens" not in b for b in bodies)
    output = tmp_path / "output.jsonl"
    answered = []
    for w in lines(files):
        line = json.loads(output_line(w["custom_id"], RELATION))
        line["response"]["body"]["choices"][0]["message"]["reasoning_content"] = "weighing complement against substitute"
        line["response"]["body"]["usage"]["completion_tokens_details"] = {"reasoning_tokens": 5}
        answered.append(json.dumps(line))
    output.write_text("\n".join(answered) + "\n")
    report, _ = read_batch(config, [output])
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.ok == 3 and report.reasoning_tokens == 15 and (rows["reasoning"] == "weighing complement against substitute").all()
    assert not rows["text"].str.contains("weighing").any()
