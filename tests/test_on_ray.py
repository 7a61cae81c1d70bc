"""Synthesis shards on a real local Ray cluster (2 CPUs): the merged output equals a single-process run
(the same rows, request hashes, no duplicates), and a shard whose worker is SIGKILLed mid-job (through the
installed CLI, which starts its own local cluster) is retried by Ray and resumes from its journal, losing and
repeating nothing."""

from __future__ import annotations

import os
import signal
import time

import polars as pl
import pytest

from recot.synth.job import SynthConfig, run_synth
from recot.teachers import OpenAITeacherConfig, Sampling
from recot.testing import journal_rows

ray = pytest.importorskip("ray")
ALL_TASKS = ["r0_caption", "r1_relation", "r2_interests", "r3_cot_blind", "r3_cot_slate", "r3_cot_hindsight"]
VOLATILE = ["created_at", "latency_s"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def same_rows(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    key = ["task", "request_hash", "subject_id", "sample"]
    return a.drop(VOLATILE).sort(key).equals(b.drop(VOLATILE).sort(key))


def test_shards_on_ray_merge_into_the_single_process_output(cluster, sample_path, tmp_path):
    from recot.synth.on_ray import run_on_ray

    config = SynthConfig(dataset=sample_path, out=tmp_path / "ray", tasks=ALL_TASKS, limit=40)
    merged = run_on_ray(config, shards=3, progress=False)
    single = run_synth(config.model_copy(update={"out": tmp_path / "single"}), progress=False)
    rows, alone = pl.read_parquet(tmp_path / "ray" / "traces.parquet"), pl.read_parquet(tmp_path / "single" / "traces.parquet")
    assert merged.complete and merged.planned == single.planned == rows.height == alone.height
    assert rows.select("request_hash", "subject_id", "sample").is_duplicated().sum() == 0
    assert same_rows(rows, alone)
    for name in ("split.json", "tasks.json", "summary.json", "catalog.parquet"):
        assert (tmp_path / "ray" / name).exists()
    again = run_on_ray(config, shards=3, progress=False)  # a rerun answers everything from the shards' journals
    assert again.sent == 0 and again.cached + again.shared == again.planned



def test_a_cluster_nothing_answers_at_is_one_named_error(sample_path, tmp_path):
    """`--ray-address` where no cluster listens: one error line naming the address and the fix, exit 2, no traceback."""
    import subprocess

    from recot.testing import RECOT

    config = tmp_path / "synth.toml"
    config.write_text(f'dataset = "{sample_path}"\nout = "{tmp_path / "out"}"\ntasks = ["r1_relation"]\nlimit = 4\n')
    done = subprocess.run([*RECOT, "synth", "run", str(config), "--ray", "2", "--ray-address", "127.0.0.1:1", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cannot connect to the Ray cluster" in done.stderr and "ray start --head" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_killed_worker_loses_nothing_and_stdout_holds_only_the_report(sample_path, tmp_path, vllm_server):
    """`recot synth run --ray 2 --json` with a worker SIGKILLed mid-job: Ray retries the shard, which resumes from its
    journal, so every planned request is answered once (the same requests as a single-process run, none repeated);
    Ray's messages about the death go to stderr, and stdout is the report alone (it parses as JSON)."""
    import json
    import subprocess

    import psutil

    from recot.testing import RECOT

    config = tmp_path / "synth.toml"
    config.write_text(f'dataset = "{sample_path}"\nout = "{tmp_path / "out"}"\ntasks = ["r1_relation"]\nlimit = 80\n'
                      f'commit_rows = 4\n[teacher]\nkind = "openai"\nmodel = "teacher"\nbase_urls = ["{vllm_server.url}"]\n'
                      'concurrency = 2\n[sampling]\nmax_tokens = 48\n')
    job = subprocess.Popen([*RECOT, "synth", "run", str(config), "--ray", "2", "--no-progress", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = [], time.monotonic() + 240
    while job.poll() is None and not killed and time.monotonic() < deadline:
        if any(journal_rows(tmp_path / "out" / f"shard-{i}-of-2") >= 8 for i in range(2)):
            for process in psutil.process_iter(["pid", "cmdline"]):  # Ray titles a busy worker ray::<task>
                if any("ray::_run_shard" in part for part in process.info["cmdline"] or []):
                    os.kill(process.info["pid"], signal.SIGKILL)
                    killed.append(process.info["pid"])
        time.sleep(0.2)
    out, err = job.communicate(timeout=600)
    assert killed and job.returncode == 0, err[-2000:]
    report = json.loads(out)
    assert report["planned"] == 80 and report["ok"] + sum(report["rejected"].values()) == 80 and not report["unanswered"]
    rows = pl.read_parquet(tmp_path / "out" / "traces.parquet")
    assert rows.height == 80 and rows["request_hash"].n_unique() == rows.height
    assert sum(journal_rows(tmp_path / "out" / f"shard-{i}-of-2") for i in range(2)) == 80
    settings = SynthConfig(dataset=sample_path, out=tmp_path / "single", tasks=["r1_relation"], limit=80,
                           teacher=OpenAITeacherConfig(model="teacher", base_urls=[vllm_server.url], concurrency=2),
                           sampling=Sampling(max_tokens=48))
    single = run_synth(settings, progress=False)
    alone = pl.read_parquet(tmp_path / "single" / "traces.parquet")
    assert single.complete and set(rows["request_hash"]) == set(alone["request_hash"])
