"""Synthesis jobs with the rules teacher (content) and the OpenAI-compatible teacher against a loopback
server (every failure kind, retries, a refused key). The real vLLM paths are in test_synth_vllm.py."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recot.errors import DataError
from recot.formats.splits import Split
from recot.synth.job import SynthConfig, run_synth
from recot.synth.requests import Shard, checked_samples
from recot.teachers import OpenAITeacherConfig
from recot.teachers.limits import ConcurrencyLimit
from recot.teachers.openai_http import TeacherError

ALL_TASKS = ["r0_caption", "r1_relation", "r2_interests", "r3_cot_blind", "r3_cot_hindsight"]


def config(sample_path, out, **changes) -> SynthConfig:
    return SynthConfig(dataset=sample_path, out=out, **changes)


@pytest.fixture(scope="module")
def rules_run(sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("rules")
    report = run_synth(config(sample_path, out, tasks=ALL_TASKS), progress=False)
    return report, pl.read_parquet(out / "traces.parquet"), out


def test_rules_teacher_writes_valid_grounded_traces(rules_run, sample):
    report, rows, _ = rules_run
    assert report.complete and report.rejected == {} and report.rows == rows.height == report.planned
    # a first run: nothing comes from a cache; repeated prompts (a history two users share) are answered once
    assert report.cached == 0 and report.shared > 0 and report.sent + report.shared == report.planned
    assert set(rows["task"]) == set(ALL_TASKS) and (rows["status"] == "ok").all()
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    hindsight = rows.filter(pl.col("task") == "r3_cot_hindsight")
    for row in hindsight.iter_rows(named=True):
        out = json.loads(row["output"])
        assert out["answer"] == sid_of[row["target"]]
        assert all(1 <= e <= len(row["history"]) for i in out["interests"] for e in i["evidence"])
        assert row["text"].startswith("<think>\nPersona: ") and row["text"].endswith(out["answer"])
    title_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.items["title"]))
    for row in rows.filter(pl.col("task") == "r0_caption").head(50).iter_rows(named=True):
        qa = json.loads(row["output"])["qa"]
        item = row["items"][0]
        assert qa[0] == {"question": f"Which item is {sid_of[item]}?", "answer": title_of[item][:200]}
    blind = rows.filter(pl.col("task") == "r3_cot_blind")
    answers = [json.loads(o)["answer"] for o in blind["output"]]
    assert set(answers) <= set(sid_of.values())
    # provenance on every row
    assert rows.select("template_hash", "teacher", "model", "params", "request_hash", "created_at").null_count().sum_horizontal()[0] == 0


def test_rerun_sends_nothing_and_writes_the_same_rows(rules_run, sample_path):
    report, rows, out = rules_run
    again = run_synth(config(sample_path, out, tasks=ALL_TASKS), progress=False)
    assert again.sent == 0 and again.cached + again.shared == report.planned
    assert again.balanced and again.ok == report.ok  # the rerun's summary covers the whole output
    assert pl.read_parquet(out / "traces.parquet").drop("created_at").equals(rows.drop("created_at"))


def test_shards_split_the_job_without_overlap(rules_run, sample_path, tmp_path):
    _, rows, _ = rules_run
    parts = []
    for i in range(3):
        run_synth(config(sample_path, tmp_path, tasks=ALL_TASKS), shard=Shard(i, 3), progress=False)
        parts.append(pl.read_parquet(tmp_path / f"shard-{i}-of-3" / "traces.parquet"))
    merged = pl.concat(parts)
    assert merged.height == rows.height and all(p.height > 0 for p in parts)
    assert sorted(merged["subject_id"] + merged["task"]) == sorted(rows["subject_id"] + rows["task"])


def test_a_limit_takes_subjects_spread_over_the_plan_the_same_in_every_run(rules_run, sample_path, tmp_path):
    """The first subjects of a user task are one user's first windows: a limited run would measure one user."""
    _, rows, _ = rules_run
    planned = rows.filter(pl.col("task") == "r2_interests")["subject_id"].to_list()
    for run in ("a", "b"):
        run_synth(config(sample_path, tmp_path / run, tasks=["r2_interests"], limit=8), progress=False)
    limited = [pl.read_parquet(tmp_path / run / "traces.parquet")["subject_id"].to_list() for run in ("a", "b")]
    assert limited[0] == limited[1] and len(limited[0]) == 8 and set(limited[0]) <= set(planned)
    assert limited[0] == [s for s in planned if s in set(limited[0])]  # in plan order
    assert len({s.split("@")[0] for s in limited[0]}) >= 6 > len({s.split("@")[0] for s in planned[:8]})


def test_no_training_prompt_reaches_the_cut_off(rules_run):
    _, rows, _ = rules_run
    samples = rows.filter(pl.col("task").str.starts_with("r2") | pl.col("task").str.starts_with("r3"))
    assert (samples["part"] == "train").all()
    late = samples.filter((pl.col("target_ts") >= pl.col("cutoff_ts")) | (pl.col("history_ts").list.max() >= pl.col("cutoff_ts")))
    assert late.height == 0


def test_samples_past_the_cut_off_are_refused_with_a_reason():
    samples = pl.LazyFrame({
        "user_id": ["u1", "u1", "u2"], "part": ["train", "train", "train"],
        "history": [["a"], ["a", "b"], ["c"]], "history_ts": [[1], [1, 5], [9]],
        "target": ["b", "c", "d"], "target_ts": [5, 7, 8],
    })
    held_out = pl.LazyFrame({"user_id": ["u1"], "part": ["test"], "history": [["a"]], "history_ts": [[1]],
                             "target": ["z"], "target_ts": [6]})
    split = Split("leave_last_out", pl.concat([samples, held_out]), 10)
    ok, refused = checked_samples(split, "train")
    assert ok.collect()["target"].to_list() == ["b"]
    assert dict(zip(*refused.collect().select("target", "reason").to_dict(as_series=False).values())) == {
        "c": "after_cutoff", "d": "history_not_before_target"}


def test_hindsight_on_evaluation_part_is_refused(sample_path, tmp_path):
    with pytest.raises(DataError, match="evaluation"):
        run_synth(config(sample_path, tmp_path, tasks=["r3_cot_hindsight"], part="test"), progress=False)


def http_config(sample_path, out, url, model, **teacher):
    return config(sample_path, out, tasks=["r1_relation"], limit=30,
                  teacher=OpenAITeacherConfig(model=model, base_urls=[url], backoff_s=0.01, **teacher))


@pytest.mark.parametrize(("model", "reason"), [
    ("refuse", "refused"), ("filter", "refused"), ("truncate", "truncated"), ("empty", "empty"),
    ("garbage", "malformed_json"), ("badrequest", "request_error"),
])
def test_every_bad_answer_over_http_is_a_rejected_row(sample_path, tmp_path, instant_server, model, reason):
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, model), progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.rejected == {reason: 30} and rows.height == 30
    assert (rows["status"] == "rejected").all() and (rows["reason"] == reason).all()


def _received(server) -> dict[str, int]:
    import httpx

    return httpx.get(server.url.removesuffix("/v1") + "/stats").json()


@pytest.mark.parametrize("model", ["cutbody", "textplain", "html", "nochoices"])
def test_unusable_200_replies_are_retried_then_rejected_with_their_reason(sample_path, tmp_path, instant_server, model,
                                                                        caplog):
    before = _received(instant_server).get(model, 0)
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, model, max_retries=2), progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.balanced and report.rejected == {"bad_reply": 30} and not report.unanswered
    assert (rows["reason"] == "bad_reply").all() and rows["detail"].str.contains("no usable reply after 3 attempts").all()
    assert _received(instant_server)[model] - before == 90  # each request tried 1 + max_retries times
    assert "never retrieved" not in caplog.text


def test_a_reply_that_is_sometimes_cut_is_retried_until_answered(sample_path, tmp_path, instant_server):
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, "shaky", concurrency=4), progress=False)
    assert report.complete and report.ok == 30 and report.retries > 0


@pytest.mark.parametrize(("model", "match"), [("denied", "API key was refused"), ("missing", "not served there")])
def test_a_refused_key_or_unknown_model_stops_at_once(sample_path, tmp_path, instant_server, model, match):
    before = _received(instant_server).get(model, 0)
    with pytest.raises(TeacherError, match=match):
        run_synth(http_config(sample_path, tmp_path, instant_server.url, model, concurrency=4), progress=False)
    assert _received(instant_server)[model] - before <= 4  # what was in flight; nothing sent after the first answer


def test_429_and_5xx_are_retried_until_answered(sample_path, tmp_path, instant_server):
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, "flaky", concurrency=8), progress=False)
    assert report.complete and report.ok == 30


def test_unreachable_servers_leave_requests_for_the_rerun(sample_path, tmp_path, instant_server):
    dead = "http://127.0.0.1:9/v1"
    report = run_synth(http_config(sample_path, tmp_path, dead, "ok", max_retries=1), progress=False)
    assert sum(report.unanswered.values()) == 30 and report.rows == 0
    # a second URL that works: the rerun answers everything, spread over the healthy one
    again = run_synth(http_config(sample_path, tmp_path, dead, "ok").model_copy(update={"teacher": OpenAITeacherConfig(
        model="ok", base_urls=[dead, instant_server.url], backoff_s=0.01)}), progress=False)
    assert again.complete and again.ok == 30 and again.rows == 30


def test_refused_key_stops_the_job_without_printing_it(sample_path, tmp_path, instant_server, monkeypatch):
    monkeypatch.setenv("RECOT_TEST_KEY", "sk-secret-123")
    with pytest.raises(TeacherError, match="RECOT_TEST_KEY") as failure:
        run_synth(http_config(sample_path, tmp_path, instant_server.url, "denied", api_key_env="RECOT_TEST_KEY"), progress=False)
    assert "sk-secret" not in str(failure.value)


def test_concurrency_halves_on_429_and_grows_back():
    import asyncio

    async def scenario() -> list[int]:
        limit = ConcurrencyLimit(8)
        seen = []
        for throttled in (True, True, False, False, False, False, False):
            await limit.acquire()
            await limit.release(throttled)
            seen.append(limit.limit)
            limit._last_cut = 0.0  # let the next 429 cut again at once
        return seen

    # 8 -> 4 -> 2, then two successes in a row (the current limit) add one back each time
    assert asyncio.run(scenario()) == [4, 2, 2, 3, 3, 3, 4]


def test_the_adaptive_limit_goes_on_after_a_429():
    """A 429 halves the adaptive limit wherever it is in its climb; the windows after it settle and probe from there
    (a 429 between two windows once failed an assertion inside the limit, ending a job)."""
    import asyncio

    from recot.teachers.limits import QueueAwareLimit

    async def scenario() -> list[int]:
        limit = QueueAwareLimit(64, start=16)
        for throttled in [True] + [False] * 200:
            await limit.acquire()
            await limit.release(throttled, latency=0.01, tokens=9)
        return [step for _, step in limit.changes]

    changes = asyncio.run(scenario())
    assert changes[:2] == [16, 8] and all(1 <= step <= 64 for step in changes)


def test_incomplete_teacher_config_is_named(sample_path, tmp_path):
    from recot.synth.job import load_synth_config

    config = tmp_path / "job.toml"
    config.write_text(f'dataset = "{sample_path}"\n[teacher]\nkind = "openai"\nmodel = "m"\n')
    with pytest.raises(DataError, match="(?s)job.toml.*teacher.*base_urls.*required"):
        load_synth_config(config)
    config.write_text(f'dataset = "{sample_path}"\n[teacher]\nkind = "vllm"\n')
    with pytest.raises(DataError, match="(?s)job.toml.*teacher.*model.*required"):
        load_synth_config(config)


def test_dry_run_sends_nothing_and_counts_what_a_run_would_send(sample_path, tmp_path, instant_server):
    from recot.cost import Price
    from recot.synth.job import dry_run

    price = Price(input_per_million=2.0, output_per_million=8.0)
    cfg = http_config(sample_path, tmp_path, instant_server.url, "ok").model_copy(update={"price": price})
    before = _received(instant_server).get("ok", 0)
    plan = dry_run(cfg)
    assert _received(instant_server).get("ok", 0) == before and not (tmp_path / "journal.sqlite").exists()
    assert plan["requests"] == plan["to_send"] == 30 and plan["cached"] == 0 and plan["prompt_tokens"] > 30 * 20
    assert plan["tokens_counted_with"].startswith("estimate") and plan["completion_tokens_max"] == 30 * 768
    assert plan["cost_at_most"]["live"] == pytest.approx((plan["prompt_tokens"] * 2 + 30 * 768 * 8) / 1e6, abs=1e-6)
    assert plan["cost_at_most"]["batch"] == pytest.approx(plan["cost_at_most"]["live"] / 2, abs=1e-6)
    report = run_synth(cfg.model_copy(update={"limit": 15}), progress=False)
    [tokens] = report.tokens
    assert tokens["task"] == "r1_relation" and tokens["rows"] == 15 and tokens["prompt_tokens"] == report.prompt_tokens > 0
    assert report.cost["live"] == price.cost(report.prompt_tokens, report.completion_tokens)
    again = dry_run(cfg)  # half answered: the rest is expected at the answers' mean length
    assert again["cached"] == 15 and again["to_send"] == 15
    assert again["by_task"]["r1_relation"]["completion_tokens_expected"] == round(15 * report.completion_tokens / 15) > 0


@pytest.mark.parametrize("model", ["cut500", "cut429"])
def test_a_cut_reply_followed_by_transient_failures_stays_unanswered_for_the_rerun(sample_path, tmp_path, instant_server, model):
    """The last word decides: a request whose unusable reply was followed by 500s or 429s is not a permanent
    bad_reply; it stays unanswered (exit 1 on the command line) and the next run asks again."""
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, model, max_retries=2), progress=False)
    assert not report.rejected and sum(report.unanswered.values()) == 30 and not report.complete
    again = run_synth(http_config(sample_path, tmp_path, instant_server.url, "ok"), progress=False)
    assert again.complete and again.sent == 30 and again.ok == 30


def test_a_dropped_connection_is_named_as_one(sample_path, tmp_path, instant_server):
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, "drop", max_retries=1, timeout_s=60), progress=False)
    assert sum(report.unanswered.values()) == 30
    assert all("connection dropped" in why and "Timeout" not in why for why in report.unanswered), report.unanswered


def test_a_repeated_prompt_whose_first_copy_ends_unanswered_is_not_sent_again_in_the_run(tmp_path):
    """The journal's promise holds for unanswered outcomes too: one run sends a prompt once, its repeats share the
    outcome, and they stay unanswered for the next run to ask."""
    from recot.synth.answering import AnswerStats, answer
    from recot.synth.journal import Journal
    from recot.synth.parse import parse_response
    from recot.teachers.base import Request, Response

    class Unreachable:
        kind, model, sent = "unreachable", "none", 0

        def generate(self, requests):
            for request in requests:  # answers each request before the next one is read, as a slow server would
                self.sent += 1
                yield Response(request.key, error="no answer (connection dropped)", retryable=True)

        def close(self) -> None:
            pass

    def request(key: str) -> Request:
        return Request(key, "r1_relation", [{"role": "user", "content": key}], {}, 0, 0, 0.0, 1.0, 8)

    teacher, stats = Unreachable(), AnswerStats()
    answer(teacher, Journal(tmp_path / "journal.sqlite"), [request("a"), request("b"), request("a"), request("a")],
           lambda req, resp: (parse_response(resp, None), None), stats)
    assert teacher.sent == 2 and stats.sent == 2 and stats.shared == 2
    assert sum(stats.unanswered.values()) == 4 and stats.balanced


def test_dry_run_counts_a_repeated_prompt_once_and_writes_nothing(sample_path, tmp_path, instant_server):
    """With one history item per blind prompt, many users share a prompt: the dry run's to_send is what a run sends."""
    from recot.synth.job import dry_run

    cfg = config(sample_path, tmp_path / "out", tasks=["r3_cot_blind"], limit=300, max_history=1,
                 teacher=OpenAITeacherConfig(model="cot", base_urls=[instant_server.url], backoff_s=0.01))
    plan = dry_run(cfg)
    assert not (tmp_path / "out").exists()
    report = run_synth(cfg, progress=False)
    assert plan["to_send"] == report.sent < plan["requests"] == report.planned


def _queued(instant_server, path: str, limit: str, n: int = 240, model: str = "queue") -> dict:
    """``n`` requests to the instant server's queueing mode (it runs 4 at once) with ``concurrency`` 64 under ``limit``:
    the server's count of requests waiting as each arrived, the answers, and the client-side latency."""
    import httpx

    from recot.teachers.base import Request
    from recot.teachers.openai_http import OpenAITeacher

    base = instant_server.url.removesuffix("/v1")
    httpx.post(base + "/queue")
    before = httpx.get(base + "/stats").json().get(model, 0)
    teacher = OpenAITeacher(model, [base + path], concurrency=64, structured="none", limit=limit)
    requests = [Request(f"{limit}{path}{i}", "r1_relation", [{"role": "user", "content": f"q{i}"}], {}, 0, 0, 0.0, 1.0, 16)
                for i in range(n)]
    answers = list(teacher.generate(requests))
    latency = sorted(a.latency_s for a in answers)
    return {"answers": answers, "keys": sorted(a.key for a in answers), "sent": httpx.get(base + "/stats").json()[model] - before,
            "server": httpx.get(base + "/queue").json(), "p95": latency[int(0.95 * len(latency))], "retries": teacher.retries,
            "peak": teacher.limit.peak if teacher.limit else 0}


@pytest.mark.parametrize("path", ["/v1", "/plain/v1"], ids=["vllm-metrics", "answers-per-second"])
def test_the_adaptive_limit_finds_a_queueing_servers_knee(instant_server, path):
    """A server that queues instead of answering 429 (it runs 4 at once): with a ceiling of 64 the fixed limit keeps ~60
    waiting at the server; the adaptive one, from vLLM's gauges or from the answers per second alone, keeps the queue near
    empty and the latency down, and every request is answered once (nothing lost, nothing sent twice)."""
    fixed, adaptive = _queued(instant_server, path, "fixed"), _queued(instant_server, path, "adaptive")
    for run in (fixed, adaptive):
        assert run["keys"] == sorted(r.key for r in run["answers"]) and len(set(run["keys"])) == 240
        assert all(a.error is None for a in run["answers"]) and run["sent"] == 240 and run["retries"] == 0
    assert fixed["server"]["waiting_mean"] > 40 and fixed["peak"] == 64
    assert adaptive["server"]["waiting_mean"] < fixed["server"]["waiting_mean"] / 10
    assert adaptive["p95"] < fixed["p95"] / 2 and adaptive["peak"] < 64


def test_the_adaptive_limit_keeps_growing_on_a_server_that_batches(instant_server):
    """A server that batches (each request a little slower the more run at once, so answers per second grow with the
    number in flight) is not held back: without vLLM's gauges the limit climbs while the answers per second do, as
    the real vLLM-CPU server needed (a latency rule held it at 16, a quarter of the fixed 64's throughput)."""
    adaptive = _queued(instant_server, "/plain/v1", "adaptive", n=480, model="batch")
    assert adaptive["peak"] >= 32 and all(a.error is None for a in adaptive["answers"]) and adaptive["sent"] == 480


def test_server_load_reads_vllms_gauges():
    from recot.teachers.openai_http import server_load

    page = ('# HELP vllm:num_requests_waiting Number of requests waiting.\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\nvllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\nvllm:num_requests_waiting{engine="1",model_name="m"} 0.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\nvllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
            'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 7.0\n')
    assert server_load(page) == (1.0, 5.0, 0.5)
    assert server_load("# a server that is not vLLM\nhttp_requests_total 12\n") is None


@pytest.mark.parametrize(("model", "reported"), [("think", True), ("thinkold", False), ("thinkinline", False)])
def test_a_thinking_teachers_reasoning_is_provenance_never_the_trace(sample_path, tmp_path, instant_server, model, reported):
    """Whichever way the server sends it (a reasoning field, the older reasoning_content, a leading <think> block), the
    answer alone is parsed against the schema and becomes the trace, and the reasoning is kept beside it with its tokens,
    which count among the completion tokens as they are billed."""
    from recot.testing.instant_server import ANSWER, THOUGHT, THOUGHT_TOKENS

    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, model), progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.ok == 30 and (rows["status"] == "ok").all()
    assert (rows["reasoning"] == THOUGHT).all() and (rows["raw"] == ANSWER).all()
    assert not rows["text"].str.contains("thinks first").any() and not rows["output"].str.contains("thinks first").any()
    assert (rows["completion_tokens"] == 9 + THOUGHT_TOKENS).all()
    tokens = THOUGHT_TOKENS * 30 if reported else 0
    assert report.reasoning_tokens == tokens and rows["reasoning_tokens"].sum() == tokens
    assert rows["reasoning_tokens"].null_count() == (0 if reported else 30)  # not reported is unknown, not zero
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tokens"][0]["reasoning_tokens"] == tokens and summary["completion_tokens"] == 30 * (9 + THOUGHT_TOKENS)


def test_a_reply_cut_inside_the_reasoning_is_named_apart_from_a_cut_answer(sample_path, tmp_path, instant_server):
    report = run_synth(http_config(sample_path, tmp_path, instant_server.url, "thinkcut"), progress=False)
    rows = pl.read_parquet(tmp_path / "traces.parquet")
    assert report.rejected == {"truncated_reasoning": 30} and rows["reasoning"].str.starts_with("The teacher thinks").all()
    assert (rows["detail"] == "stopped inside the reasoning after 21 tokens (21 of them reasoning)").all()


def test_a_reasoning_model_that_refuses_max_tokens_takes_max_completion_tokens(sample_path, tmp_path, instant_server):
    refused = run_synth(http_config(sample_path, tmp_path / "a", instant_server.url, "hidden"), progress=False)
    rows = pl.read_parquet(tmp_path / "a" / "traces.parquet")
    assert refused.rejected == {"request_error": 30} and rows["detail"].str.contains("max_completion_tokens").all()
    answered = run_synth(http_config(sample_path, tmp_path / "b", instant_server.url, "hidden", token_limit="max_completion_tokens"),
                         progress=False)
    rows = pl.read_parquet(tmp_path / "b" / "traces.parquet")
    assert answered.ok == 30 and rows["reasoning"].is_null().all() and answered.reasoning_tokens == 30 * 21


def test_a_journal_of_the_previous_version_resumes_with_the_reasoning_columns(tmp_path):
    """A job started by the recot before thinking teachers keeps its answers: the journal gains the columns in place."""
    import sqlite3

    from recot.synth.journal import COLUMNS, SCHEMA_VERSION, Journal

    old = [c for c in COLUMNS if c not in ("reasoning", "reasoning_tokens")]
    con = sqlite3.connect(tmp_path / "journal.sqlite")
    con.executescript(f"""CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '1');
                          CREATE TABLE answers ({', '.join(c + (' TEXT PRIMARY KEY' if c == 'key' else '') for c in old)});""")
    con.execute(f"INSERT INTO answers ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})", ["k1", *["x"] * (len(old) - 1)])
    con.commit()
    con.close()
    journal = Journal(tmp_path / "journal.sqlite")
    journal.append([{c: "x" for c in COLUMNS} | {"key": "k2", "reasoning": "why", "reasoning_tokens": 3}])
    assert journal.rows(["k1", "k2"], ["status", "reasoning", "reasoning_tokens"]) == {"k1": ("x", None, None), "k2": ("x", "why", 3)}
    assert journal.con.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
