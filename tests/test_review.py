"""Review in a real Argilla server: push, two reviewers, pull, decisions, re-push, errors, a server that goes away."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from recot.curation.argilla_api import Argilla, ReviewError
from recot.curation.export import ExportConfig, export
from recot.curation.judge import run_judge
from recot.curation.review import ReviewConfig, pull, push
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.synth.job import SynthConfig, run_synth
from recot.testing import RECOT

KEY = "argilla.apikey"


@pytest.fixture()
def store(sample_path, sample, tmp_path):
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "s", tasks=["r3_cot_hindsight"], limit=12), progress=False)
    with Store(tmp_path / "c.duckdb") as db:
        db.load_catalog(sample.catalog)
        db.ingest(tmp_path / "s" / "traces.parquet")
        run_rules(db)
        run_judge(db)
        db.con.execute("DELETE FROM verdicts")  # review every trace, whatever the rules said
        yield db


def _name(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


def _reviewer(api: Argilla, workspace: str) -> httpx.Client:
    name = _name("rev")
    user = api.call("POST", "/users", json={"first_name": name, "username": name, "role": "annotator", "password": "12345678"})
    api.call("POST", f"/workspaces/{workspace}/users", json={"user_id": user["id"]})
    return httpx.Client(base_url=api.url + "/api/v1", headers={"X-Argilla-Api-Key": user["api_key"]})


def _answer(client: httpx.Client, record: str, status: str, **values) -> None:
    body = {"status": status, "values": {k: {"value": v} for k, v in values.items()}}
    assert client.post(f"/records/{record}/responses", json=body).status_code == 201


def test_push_review_pull_decide_and_export(argilla, store, tmp_path):
    config = ReviewConfig(dataset=_name("rv"), reviews_per_record=2)
    with Argilla() as api:
        assert push(store, config, api) == {"selected": 12, "sent": 12, "unchanged": 0}
        assert push(store, config, api)["sent"] == 0
        store.con.execute("UPDATE scores SET value = 1 WHERE name = 'judge' AND trace_id = (SELECT min(trace_id) FROM traces)")
        assert push(store, config, api) == {"selected": 12, "sent": 1, "unchanged": 11}
        workspace = api.workspace_id("argilla")
        dataset = api.find_dataset(config.dataset, workspace)["id"]
        records = sorted(api.records(dataset), key=lambda r: r["external_id"])
        assert len(records) == 12 and len({r["external_id"] for r in records}) == 12
        ids = [r["id"] for r in records]
        alice, bob = _reviewer(api, workspace), _reviewer(api, workspace)
        fix = "Persona: a careful buyer\nInterests:\n1. tape (from #1)\nTransition: #1 tape -> interest 1. more tape for the same repair job"
        _answer(alice, ids[0], "submitted", quality=4, verdict="accept", correction=fix)
        _answer(bob, ids[0], "submitted", quality=5, verdict="accept")
        _answer(alice, ids[1], "submitted", quality=2, verdict="reject", wrong_modules=["persona"])
        _answer(bob, ids[1], "submitted", quality=1, verdict="reject", wrong_modules=["persona", "transition"])
        _answer(alice, ids[2], "submitted", quality=4, verdict="accept")
        _answer(bob, ids[2], "submitted", quality=3, verdict="reject")
        _answer(alice, ids[3], "submitted", quality=4, verdict="accept")
        _answer(bob, ids[3], "discarded")
        _answer(alice, ids[4], "submitted", quality=4, verdict="accept")
        _answer(bob, ids[4], "draft", quality=1, verdict="reject")
        report = pull(store, config, api)
        decisions = dict(store.con.execute("SELECT trace_id, decision FROM review_decisions").fetchall())
        strict = pull(store, config.model_copy(update={"policy": "any_reject"}), api)
    names = [r["external_id"] for r in records]
    assert report["responses"] == {"submitted": 8, "discarded": 1, "draft": 1}
    assert [decisions[n] for n in names[:5]] == ["accept", "reject", "pending", "accept", "accept"]
    assert strict["decisions"]["reject"] == 2  # any_reject also rejects the split vote
    agreement = report["agreement"]
    assert agreement["pairs"] == 3 and agreement["verdict"] == pytest.approx(2 / 3)
    assert agreement["quality_exact"] == 0 and agreement["quality_within_one"] == 1
    assert agreement["wrong_modules_jaccard"] == pytest.approx((1 + 0.5 + 1) / 3)
    pull(store, config, Argilla())  # back to the majority policy
    export(store, ExportConfig(name="reviewed", out=tmp_path / "export", formats=["sft"], valid_share=0.0))
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train-*.parquet")
    assert names[1] not in sft["trace_id"].to_list() and sft.height == 11
    corrected = sft.filter(pl.col("trace_id") == names[0])["messages"][0][1]["content"]
    assert "a careful buyer" in corrected and corrected.startswith("<think>\nPersona: a careful buyer")
    assert store.scalar("SELECT corrected_by FROM review_decisions WHERE trace_id = ?", [names[0]]).startswith("rev-")


def test_two_review_datasets_keep_their_own_decisions(argilla, store, tmp_path):
    """Pulling a second dataset over the same traces must not erase the first's decisions: a reject in any
    dataset holds, the latest accepted correction wins, and a split vote keeps the original reasoning."""
    first, second = ReviewConfig(dataset=_name("one")), ReviewConfig(dataset=_name("two"), reviews_per_record=2)
    fix_one = "Persona: from the first review\nInterests:\n1. tape (from #1)\nTransition: #1 -> interest 1. tape for the same repair job"
    fix_two = "Persona: from the second review\nInterests:\n1. tape (from #1)\nTransition: #1 -> interest 1. tape for the same repair job"
    with Argilla() as api:
        workspace = api.workspace_id("argilla")
        push(store, first, api)
        push(store, second, api)
        alice, bob = _reviewer(api, workspace), _reviewer(api, workspace)
        one = {r["external_id"]: r["id"] for r in api.records(api.find_dataset(first.dataset, workspace)["id"])}
        two = {r["external_id"]: r["id"] for r in api.records(api.find_dataset(second.dataset, workspace)["id"])}
        a, b, c = sorted(one)[:3]
        _answer(alice, one[a], "submitted", quality=1, verdict="reject")
        _answer(alice, one[b], "submitted", quality=4, verdict="accept", correction=fix_one)
        _answer(alice, two[a], "submitted", quality=5, verdict="accept")
        _answer(alice, two[b], "submitted", quality=5, verdict="accept", correction=fix_two)  # later: it wins
        _answer(alice, two[c], "submitted", quality=4, verdict="accept", correction=fix_one)  # a split vote: pending
        _answer(bob, two[c], "submitted", quality=2, verdict="reject")
        pull(store, first, api)
        pull(store, second, api)
    kept = dict(store.con.execute("SELECT dataset, count(*) FROM review_decisions GROUP BY ALL").fetchall())
    assert kept == {first.dataset: 12, second.dataset: 12}  # the second pull left the first's decisions alone
    original = dict(store.con.execute("SELECT trace_id, text FROM traces").fetchall())
    export(store, ExportConfig(name="both", out=tmp_path / "export", formats=["sft"], valid_share=0.0))
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train-*.parquet")
    text = {row["trace_id"]: row["messages"][1]["content"] for row in sft.iter_rows(named=True)}
    assert a not in text  # rejected in the first dataset, accepted in the second: the reject holds
    assert "from the second review" in text[b]
    assert text[c].split("</think>")[0] == original[c].split("</think>")[0]  # pending: the original reasoning


def test_connection_errors_name_the_fix_and_never_the_key(argilla, store, tmp_path):
    with pytest.raises(ReviewError) as wrong:
        push(store, ReviewConfig(dataset=_name("k")), Argilla(api_key="not-the-key-123"))
    assert "RECOT_ARGILLA_API_KEY" in str(wrong.value) and "not-the-key-123" not in str(wrong.value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ReviewError, match="cannot reach Argilla"):
        push(store, ReviewConfig(dataset=_name("k")), Argilla(url=f"http://127.0.0.1:{free}"))
    with pytest.raises(ReviewError, match="no workspace 'nowhere'"):
        push(store, ReviewConfig(dataset=_name("k"), workspace="nowhere"))
    with Argilla() as api:  # a dataset of that name made by someone else, with other questions
        name = _name("other")
        other = api.call("POST", "/datasets", json={"name": name, "workspace_id": api.workspace_id("argilla")})
        api.call("POST", f"/datasets/{other['id']}/fields", json={"name": "text", "title": "text", "settings": {"type": "text"}})
        api.call("POST", f"/datasets/{other['id']}/questions",
                 json={"name": "ok", "title": "ok",
                       "settings": {"type": "label_selection", "options": [{"value": "y", "text": "y"}, {"value": "n", "text": "n"}]}})
        with pytest.raises(ReviewError, match="other settings"):
            push(store, ReviewConfig(dataset=name), api)


class _Vanishing(http.server.ThreadingHTTPServer):
    """A forwarding proxy in front of the real server that disappears after ``allow`` bulk pushes, and cuts the
    body of its first ``cut`` GET replies in half."""

    def __init__(self, target: str, allow: int, cut: int = 0) -> None:
        self.target, self.allow, self.cut = target, allow, cut
        super().__init__(("127.0.0.1", 0), _Forward)


class _Forward(http.server.BaseHTTPRequestHandler):
    def _forward(self) -> None:
        server: _Vanishing = self.server
        if "/records/bulk" in self.path:
            if server.allow == 0:
                threading.Thread(target=server.shutdown).start()
                self.connection.close()  # gone mid-push: no answer at all
                return
            server.allow -= 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = httpx.request(self.command, server.target + self.path, content=body,
                              headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")})
        content = reply.content
        if self.command == "GET" and server.cut > 0:
            server.cut -= 1
            content = content[: len(content) // 2]
        self.send_response(reply.status_code)
        self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = _forward

    def log_message(self, *_) -> None:
        pass


def test_server_going_away_mid_push_claims_only_what_landed(argilla, store):
    proxy = _Vanishing(argilla, allow=1)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    config = ReviewConfig(dataset=_name("gone"), batch_size=4)
    with pytest.raises(ReviewError, match="cannot reach"):
        push(store, config, Argilla(url=f"http://127.0.0.1:{proxy.server_address[1]}", timeout=10))
    proxy.server_close()
    assert store.scalar("SELECT count(*) FROM review_pushes WHERE dataset = ?", [config.dataset]) == 4
    with Argilla() as api:
        assert push(store, config, api) == {"selected": 12, "sent": 8, "unchanged": 4}
        dataset = api.find_dataset(config.dataset, api.workspace_id("argilla"))["id"]
        assert len(list(api.records(dataset))) == 12


def test_a_cut_reply_is_retried_and_one_that_stays_cut_is_a_review_error(argilla):
    proxy = _Vanishing(argilla, allow=0, cut=1)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    api = Argilla(url=f"http://127.0.0.1:{proxy.server_address[1]}", timeout=10)
    assert api.me()["username"]  # the first reply was cut: retried
    proxy.cut = 10
    with pytest.raises(ReviewError, match="not JSON"):
        api.me()
    proxy.shutdown()
    proxy.server_close()


def test_a_push_cut_off_while_creating_the_dataset_is_finished_by_the_next(argilla, store):
    config = ReviewConfig(dataset=_name("cut"))
    with Argilla() as api:  # what an interrupted first push leaves: a draft dataset with one field
        workspace = api.workspace_id("argilla")
        draft = api.call("POST", "/datasets", json={"name": config.dataset, "workspace_id": workspace})
        api.call("POST", f"/datasets/{draft['id']}/fields",
                 json={"name": "history", "title": "History", "required": True, "settings": {"type": "text"}})
        assert push(store, config, api) == {"selected": 12, "sent": 12, "unchanged": 0}
        assert api.find_dataset(config.dataset, workspace)["status"] == "ready"


def test_review_commands(argilla, store, tmp_path):
    import json
    import subprocess

    store.close()
    cli = [*RECOT, "review"]
    name = _name("cli")
    done = subprocess.run([*cli, "push", name, "--store", str(tmp_path / "c.duckdb"), "--reviews-per-record", "2", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["sent"] == 12
    done = subprocess.run([*cli, "pull", name, "--store", str(tmp_path / "c.duckdb"), "--policy", "any_reject", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["decisions"] == {"pending": 12}
    done = subprocess.run([*cli, "pull", _name("missing"), "--store", str(tmp_path / "c.duckdb")], capture_output=True, text=True)
    assert done.returncode == 2 and "push it first" in done.stdout + done.stderr


def test_the_record_shows_sids_titles_every_interest_and_triage_metadata(argilla, store):
    """What a reviewer sees, as the server holds it: markdown fields with every SID in a code span (a bare SID is an HTML
    tag to Argilla, and vanishes; tests/test_review_ui.py looks at the screen), each item as SID and title, every
    interest of a multi-interest trace, failed rules and grounding to filter by, the judge's score as metadata (no
    pre-selected rating) and the correction box starting from the trace's reasoning."""
    config = ReviewConfig(dataset=_name("view"))
    with Argilla() as api:
        push(store, config, api)
        dataset = api.find_dataset(config.dataset, api.workspace_id("argilla"))["id"]
        fields = {f["name"]: f["settings"] for f in api.call("GET", f"/datasets/{dataset}/fields")["items"]}
        questions = {q["id"]: q["name"] for q in api.call("GET", f"/datasets/{dataset}/questions")["items"]}
        records = api.call("GET", f"/datasets/{dataset}/records", params={"include": ["suggestions"], "limit": 100})["items"]
        metadata = {m["name"] for m in api.call("GET", f"/me/datasets/{dataset}/metadata-properties")["items"]}
    assert all(settings["use_markdown"] for settings in fields.values())
    texts = dict(store.con.execute("SELECT trace_id, text FROM traces").fetchall())
    multi = [r for r in records if texts[r["external_id"]].count(" (from #") > 1]
    assert multi, "the sample should hold traces with several interests"
    for record in multi:
        assert record["fields"]["interests"] != "-" and record["fields"]["interests"].count("\n") >= 1
    for record in records:
        assert "1. `<a_" in record["fields"]["history"] and record["fields"]["answer"].startswith("`<a_")
        assert {"failed_rules", "ehr", "cov_rate", "judge"} <= set(record["metadata"])
        suggested = {questions[s["question_id"]]: s["value"] for s in record.get("suggestions") or []}
        assert "quality" not in suggested
        assert suggested["correction"].startswith("Persona: ") and "</think>" not in suggested["correction"]
    assert {"failed_rules", "ehr", "cov_rate"} <= metadata


def test_a_correction_is_normalised_and_held_to_the_rules(argilla, store, tmp_path):
    """A fix typed in the UI (the editor's newline, Windows line ends) becomes the trace's reasoning in the CoT layout;
    free text in the correction box is refused with its reason and never becomes a training completion; a correction
    left as the box started is no correction."""
    config = ReviewConfig(dataset=_name("fix"))
    with Argilla() as api:
        push(store, config, api)
        workspace = api.workspace_id("argilla")
        records = sorted(api.records(api.find_dataset(config.dataset, workspace)["id"]), key=lambda r: r["external_id"])
        alice = _reviewer(api, workspace)
        good = ("Persona: a careful buyer\r\nInterests:\r\n1. tape (from #1)   \r\n\r\n"
                "Transition: #1 tape -> interest 1. more tape for the same repair job\r\n")
        _answer(alice, records[0]["id"], "submitted", quality=4, verdict="accept", correction=good)
        _answer(alice, records[1]["id"], "submitted", quality=4, verdict="accept", correction="looks fine to me, maybe shorter")
        reasoning = store.scalar("SELECT text FROM traces WHERE trace_id = ?", [records[2]["external_id"]])
        unchanged = reasoning.split("</think>")[0].removeprefix("<think>").strip() + "\n"
        _answer(alice, records[2]["id"], "submitted", quality=5, verdict="accept", correction=unchanged)
        pull(store, config, api)
    first, second, third = (r["external_id"] for r in records[:3])
    decisions = {row[0]: row[1:] for row in store.con.execute(
        "SELECT trace_id, decision, correction_error, corrected_text, corrected_by FROM review_decisions").fetchall()}
    assert decisions[first][0] == "accept" and decisions[first][1] is None
    assert decisions[first][2].startswith("<think>\nPersona: a careful buyer\nInterests:\n1. tape (from #1)\nTransition: ")
    assert decisions[second][0] == "pending" and "cot_format" in decisions[second][1]
    assert decisions[third][0] == "accept" and decisions[third][2] is None and decisions[third][3] is None
    export(store, ExportConfig(name="fixed", out=tmp_path / "export", formats=["sft"], valid_share=0.0))
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train-*.parquet")
    completions = dict(zip(sft["trace_id"], (m[1]["content"] for m in sft["messages"])))
    assert completions[first].startswith("<think>\nPersona: a careful buyer\n")
    assert "looks fine to me" not in " ".join(completions.values())
    assert completions[second] == texts_of(store, second)


def texts_of(store, trace_id: str) -> str:
    return store.scalar("SELECT text FROM traces WHERE trace_id = ?", [trace_id])


def test_an_admins_key_pulls_and_a_lost_publish_reply_is_done(argilla, store):
    from recot.curation.review import _finish_draft

    config = ReviewConfig(dataset=_name("admin"))
    with Argilla() as api:
        push(store, config, api)
        workspace = api.workspace_id("argilla")
        name = _name("adm")
        admin = api.call("POST", "/users", json={"first_name": name, "username": name, "role": "admin", "password": "12345678"})
        api.call("POST", f"/workspaces/{workspace}/users", json={"user_id": admin["id"]})
        dataset = api.find_dataset(config.dataset, workspace)["id"]
        _finish_draft(api, dataset)  # a retried publish (its first reply lost) finds the dataset published: done
        alice = _reviewer(api, workspace)
        first = sorted(api.records(dataset), key=lambda r: r["external_id"])[0]
        _answer(alice, first["id"], "submitted", quality=4, verdict="reject")
    with Argilla(api_key=admin["api_key"]) as as_admin:
        report = pull(store, config, as_admin)
    assert report["decisions"]["reject"] == 1
    assert store.scalar("SELECT reviewer FROM reviews WHERE dataset = ?", [config.dataset]).startswith("rev-")


def test_the_review_tests_run_on_the_worker_that_owns_argilla(request):
    """Under ``--dist loadgroup`` (make test) every test that talks to Argilla is in one group, so one worker starts
    the server: two workers starting it at once on a fresh machine raced in its install and CI failed."""
    if not request.config.getvalue("loadgroup"):
        pytest.skip("not under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@argilla"), request.node.nodeid


def test_a_mistyped_store_is_an_error_for_every_command_but_ingest(tmp_path):
    import subprocess

    missing = tmp_path / "nope.duckdb"
    for command in (["curate", "report"], ["curate", "rules"], ["review", "push", "x"], ["review", "pull", "x"],
                    ["export", "x", "--out", str(tmp_path / "x")]):
        done = subprocess.run([*RECOT, *command, "--store", str(missing)], capture_output=True, text=True)
        assert done.returncode == 2 and "no curation store here" in done.stderr and "recot curate ingest" in done.stderr, command
    assert not missing.exists()


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (nothing reaps orphans in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_the_argilla_script_starts_what_died_and_stop_ends_everything(tmp_path):
    """`scripts/argilla.sh start` twice starts nothing twice; after the server crashes, start brings back only the
    server (pid files never point at dead processes, one worker); stop ends every process it started."""
    import os
    import signal
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "argilla.sh"
    env = {**os.environ, "ARGILLA_STATE": str(tmp_path / "state"), "ARGILLA_PORT": "6921", "ARGILLA_ES_PORT": "9221",
           "ARGILLA_REDIS_PORT": "6401"}

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), command], capture_output=True, text=True, env=env, timeout=600)

    def pids() -> dict[str, int]:
        return {f.stem: int(f.read_text()) for f in (tmp_path / "state").glob("*.pid")}

    try:
        assert run("start").returncode == 0
        first = pids()
        assert set(first) == {"redis", "search", "server", "worker"} and all(_running(p) for p in first.values())
        again = run("start")
        assert again.returncode == 0 and "already answers" in again.stdout and pids() == first
        os.kill(first["server"], signal.SIGKILL)
        restarted = run("start")
        assert restarted.returncode == 0, restarted.stderr
        after = pids()
        assert after["server"] != first["server"] and {k: v for k, v in after.items() if k != "server"} == \
            {k: v for k, v in first.items() if k != "server"}
        assert all(_running(p) for p in after.values())
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0 and not pids()
    assert not any(_running(p) for p in {**first, **after}.values())
