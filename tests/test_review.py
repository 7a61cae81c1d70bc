"""Review in a real Argilla server: push, two reviewers, pull, decisions, re-push, errors, a server that goes away."""

from __future__ import annotations

import http.server
import socket
import threading
import time

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
        fix = "Persona: a careful buyer\nInterests:\n1. tape (from #1)\nTransition: #1 tape -> interest 1. more tape"
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
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train.parquet")
    assert names[1] not in sft["trace_id"].to_list() and sft.height == 11
    corrected = sft.filter(pl.col("trace_id") == names[0])["messages"][0][1]["content"]
    assert "a careful buyer" in corrected and corrected.startswith("<think>\nPersona: a careful buyer")
    assert store.scalar("SELECT corrected_by FROM review_decisions WHERE trace_id = ?", [names[0]]).startswith("rev-")


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
    """A forwarding proxy in front of the real server that disappears after ``allow`` bulk pushes."""

    def __init__(self, target: str, allow: int) -> None:
        self.target, self.allow = target, allow
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
        self.send_response(reply.status_code)
        self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

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
