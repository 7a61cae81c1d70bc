"""A sharded store curated on a real local Ray cluster (2 CPUs) gives the one-node store's rows: the same traces,
verdicts, scores, duplicate clusters and keepers, funnel and export, on rules-teacher traces with duplicates planted
across shards, in a local folder and on an S3 endpoint; a job killed half way resumes without redoing what finished,
and a Ray worker killed mid-run costs only its task.

The S3 endpoint is moto's server on loopback: no real object store is reachable from CI, and moto answers S3's REST
API over HTTP, so the store's code goes through the same client (s3fs, botocore) as against AWS or MinIO."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from recot.curation import sharded_dedup
from recot.curation import shards as sharding
from recot.curation.dedup import run_dedup
from recot.curation.export import ExportConfig, export
from recot.curation.report import funnel
from recot.curation.rules import run_rules
from recot.curation.shard_fs import COMPLETE, location, publish, published, reuse
from recot.curation.store import Store
from recot.errors import DataError
from recot.synth.job import SynthConfig, run_synth
from recot.testing import RECOT
from recot.testing.planted import planted_traces
from recot.testing.servers import s3_server

ray = pytest.importorskip("ray")
TABLES = ("traces", "verdicts", "scores", "dup_clusters", "ingest_rejects")


@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    """A bucket on a loopback S3 endpoint, ``s3://recot-test``; its settings are the AWS variables, set before the Ray
    cluster starts, so its workers inherit them as a user's local cluster does."""
    server = s3_server(tmp_path_factory.mktemp("s3") / "moto.log").start(60)
    settings = {"AWS_ACCESS_KEY_ID": "recot", "AWS_SECRET_ACCESS_KEY": "recot", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": server.endpoint}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    location("s3://recot-test").mkdir()
    yield "s3://recot-test"
    server.stop()
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def cluster(object_store):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def planted(sample_path, tmp_path_factory) -> Path:
    """Rules-teacher traces of four tasks and 4 copies of each: exact, near and unrelated twins in every shard."""
    work = tmp_path_factory.mktemp("planted")
    run_synth(SynthConfig(dataset=sample_path, out=work / "synth", limit=60,
                          tasks=["r1_relation", "r2_interests", "r3_cot_blind", "r3_cot_hindsight"]), progress=False)
    path = planted_traces(work / "synth" / "traces.parquet", work / "planted", copies=4)
    # three rows without provenance (rejected at ingest, with their row), and row groups of 500 rows: the file is
    # read a few row groups per task, so a row's number must count the groups before it
    frame = pl.read_parquet(path).with_row_index("i")
    frame = frame.with_columns(template=pl.when(pl.col("i").is_in([7, 555, 1101])).then(None).otherwise(pl.col("template")))
    frame.drop("i").write_parquet(path, row_group_size=500)
    return path


@pytest.fixture(scope="module")
def one_node(planted, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("one") / "curation.duckdb"
    with Store(store) as db:
        db.ingest(planted)
        db.ingest(planted)  # twice, as the sharded store is: the second adds only its rejects again
        run_rules(db)
        run_dedup(db)
    return store


def rows(store: Store) -> dict[str, pl.DataFrame]:
    """Every shard table, in one order (ingested_at is the clock's)."""
    found = {}
    for table in TABLES:
        frame = pl.from_arrow(store.con.sql(f"SELECT * FROM {table}").to_arrow_table()).drop("ingested_at", strict=False)
        found[table] = frame.sort(frame.columns)
    return found


def exported(folder: Path) -> dict[str, pl.DataFrame]:
    return {str(f.relative_to(folder)): pl.read_parquet(f) for f in sorted(folder.rglob("*.parquet"))}


def test_a_sharded_store_on_ray_curates_as_one_node_does(cluster, planted, one_node, tmp_path):
    store = sharding.ShardedStore.create(tmp_path / "sharded", 3)
    reports = sharding.ingest(store, [planted], cluster)
    with Store.existing(one_node) as db:
        total = db.scalar("SELECT count(*) FROM traces")
        expected, expected_funnel = rows(db), funnel(db)
        export(db, ExportConfig(name="one", out=tmp_path / "export-one"))
    assert [(r.rows, r.new, r.already_in_store, r.rejected) for r in reports] == [(total + 3, total, 0, 3)]
    assert sharding.ingest(store, [planted], cluster)[0].already_in_store == total  # ingesting again adds nothing
    assert expected["ingest_rejects"]["location"].sort().to_list() == ["row 1102"] * 2 + ["row 556"] * 2 + ["row 8"] * 2  # twice ingested
    with Store.existing(one_node) as db:
        assert sharding.run_rules(store, ray=cluster) == run_rules(db)
        assert sharded_dedup.run_dedup(store, ray=cluster) == run_dedup(db)
    with store.view() as view:
        got = rows(view)
        assert {t: f.height for t, f in got.items()} == {t: f.height for t, f in expected.items()}
        assert all(got[t].equals(expected[t]) for t in TABLES), [t for t in TABLES if not got[t].equals(expected[t])]
        assert funnel(view) == expected_funnel
        assert expected_funnel["rules"]["dedup"]["failed"] > 0  # there were duplicates to find, across shards
        export(view, ExportConfig(name="one", out=tmp_path / "export-sharded"))
    one, sharded = exported(tmp_path / "export-one"), exported(tmp_path / "export-sharded")
    assert one.keys() == sharded.keys() and all(one[name].equals(sharded[name]) for name in one)
    traces = [pl.read_parquet(f) for f in store.files("traces")]
    assert all(t.height for t in traces) and sum(t.height for t in traces) == total  # every shard holds its own share


def test_a_sharded_store_on_object_storage_curates_as_one_node_does(cluster, object_store, planted, one_node, tmp_path):
    """The store's root in a bucket: ingest, report and export through the installed CLI (``--store s3://...``), rules
    and dedup as Ray tasks whose workers read and write the bucket. Every row, the funnel and the export equal one
    node's, and the bucket holds the store and nothing of the work."""
    url = f"{object_store}/{tmp_path.name}"
    ingests = [subprocess.run([*RECOT, "curate", "ingest", str(planted), "--store", url, *shards, "--json"],
                              capture_output=True, text=True, timeout=300) for shards in (["--shards", "3"], [])]
    assert all(i.returncode == 0 for i in ingests), [i.stderr[-2000:] for i in ingests]
    store = sharding.ShardedStore.open(url)
    with Store.existing(one_node) as db:
        total = db.scalar("SELECT count(*) FROM traces")
        first, again = (json.loads(i.stdout)["files"][0] for i in ingests)
        assert (first["new"], again["new"], again["already_in_store"]) == (total, 0, total)  # twice, as one node was
        assert sharding.run_rules(store, ray=cluster) == run_rules(db)
        assert sharded_dedup.run_dedup(store, ray=cluster) == run_dedup(db)
        expected, expected_funnel = rows(db), funnel(db)
        export(db, ExportConfig(name="one", out=tmp_path / "export-one"))
    with store.view() as view:
        got = rows(view)
        assert all(got[t].equals(expected[t]) for t in TABLES), [t for t in TABLES if not got[t].equals(expected[t])]
    report = subprocess.run([*RECOT, "curate", "report", "--store", url, "--json"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and json.loads(report.stdout) == json.loads(json.dumps(expected_funnel)), report.stderr[-2000:]
    exported_s3 = subprocess.run([*RECOT, "export", "one", "--out", str(tmp_path / "export-s3"), "--store", url],
                                 capture_output=True, text=True, timeout=300)
    assert exported_s3.returncode == 0, exported_s3.stderr[-2000:]
    one, sharded = exported(tmp_path / "export-one"), exported(tmp_path / "export-s3")
    assert one.keys() == sharded.keys() and all(one[name].equals(sharded[name]) for name in one)
    root = location(url)
    kept = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert {name.split("/")[0] for name in kept} == {"head.duckdb", "sharded.json", "shards"}  # no incoming/, no work/
    assert len(kept) == 2 + 3 * (len(TABLES) + 1)  # each shard: one generation, its tables and DONE
    assert not Path("s3:").exists()  # the URL was never taken for a local path


def test_an_upload_cut_short_is_never_taken_for_a_finished_output(object_store):
    """Object storage has no rename: a task's folder is its files, then its marker. A task that failed leaves nothing; a
    worker killed between its files and the marker leaves a folder that is not finished, and the rerun replaces it
    whole. A file is one upload; a reused file is a server-side copy."""
    root = location(f"{object_store}/publish")
    target = root / "scatter" / "s00000"
    with pytest.raises(OSError, match="killed"), publish(target) as tmp:
        tmp.mkdir()
        (tmp / "p00000.parquet").write_bytes(b"half")
        raise OSError("killed")
    assert not target.exists() and not published(target)
    (target / "p00000.parquet").write_bytes(b"half")  # the files of a task killed before its marker
    assert not published(target)
    with publish(target) as tmp:
        tmp.mkdir()
        (tmp / "p00001.parquet").write_bytes(b"whole")
    assert published(target) and sorted(p.name for p in target.iterdir()) == [COMPLETE, "p00001.parquet"]
    order = root / "order.parquet"
    with publish(order) as tmp:
        tmp.write_bytes(b"rows")
    assert published(order) and order.read_bytes() == b"rows"
    reuse(order, root / "g2" / "order.parquet")
    assert (root / "g2" / "order.parquet").read_bytes() == b"rows"


def test_a_generation_another_worker_finished_is_seen_at_once(object_store):
    """fsspec caches listings per process; a shard's newest generation is written by whichever worker ran the step, so
    the store lists it afresh every time."""
    import s3fs

    store = sharding.ShardedStore.create(f"{object_store}/fresh", 1)
    assert store.generation(0).name == store.generations()[0].name == "g000000"
    other = s3fs.S3FileSystem(skip_instance_cache=True)  # another process's client
    other.pipe(f"{store.root.path}/shards/00000/g000001/DONE", b"")  # a step's new generation, then the old one removed
    other.rm(f"{store.root.path}/shards/00000/g000000", recursive=True)
    assert store.generation(0).name == "g000001" and store.generations()[0].name == "g000001"


def test_a_dedup_killed_half_way_resumes_without_redoing_finished_work(planted, one_node, tmp_path, monkeypatch):
    """A job that dies in stage 5 (attach) reruns from there: the sketches it wrote are not rewritten; a job that
    dies while writing the shards' verdicts leaves each shard whole (old or new) and the rerun starts afresh."""
    store = sharding.ShardedStore.create(tmp_path / "sharded", 2)
    sharding.ingest(store, [planted])
    sharding.run_rules(store)
    attach = sharded_dedup._attach

    def dies_on_shard_1(work, shard, *args):
        if shard == 1:
            raise OSError("killed")
        return attach(work, shard, *args)

    monkeypatch.setattr(sharded_dedup, "_attach", dies_on_shard_1)
    with pytest.raises(OSError, match="killed"):
        sharded_dedup.run_dedup(store)
    sketches = {f: f.stat().st_mtime_ns for f in (store.root / "work").glob("dedup-*/sketch/*.parquet")}
    assert len(sketches) == 2
    monkeypatch.setattr(sharded_dedup, "_attach", attach)
    record = sharded_dedup._record_shard

    def dies_while_recording(local, index, shards, args):
        record(local, index, shards, args)
        if index == 1:
            raise OSError("killed while writing")

    monkeypatch.setattr(sharded_dedup, "_record_shard", dies_while_recording)
    with pytest.raises(OSError, match="killed while writing"):
        sharded_dedup.run_dedup(store)
    assert {f: f.stat().st_mtime_ns for f in sketches} == sketches  # stages 1-4 were not redone
    assert [len(list(store.generation(i).parent.glob("g*"))) for i in range(2)] == [1, 1]  # shard 0 moved on, 1 did not
    monkeypatch.setattr(sharded_dedup, "_record_shard", record)
    found = sharded_dedup.run_dedup(store)
    with Store.existing(one_node) as db, store.view() as view:
        assert found == run_dedup(db)
        assert rows(view)["dup_clusters"].equals(rows(db)["dup_clusters"])
        assert rows(view)["verdicts"].equals(rows(db)["verdicts"])
    assert not list((store.root / "work").iterdir())  # nothing left behind


def test_a_ray_worker_killed_mid_dedup_costs_only_its_task(planted, one_node, tmp_path):
    """`recot curate dedup --ray` (the installed CLI, its own local cluster) with a busy worker SIGKILLed: Ray retries
    the task, which finds its shard as it was, and the verdicts are the one-node verdicts."""
    import psutil

    folder = tmp_path / "sharded"
    store = sharding.ShardedStore.create(folder, 4)
    sharding.ingest(store, [planted])
    sharding.run_rules(store)
    job = subprocess.Popen([*RECOT, "curate", "dedup", "--store", str(folder), "--ray", "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    killed, deadline = [], time.monotonic() + 240
    while job.poll() is None and not killed and time.monotonic() < deadline:
        for process in psutil.process_iter(["pid", "cmdline"]):  # Ray titles a busy worker ray::<task>
            if any(part.startswith(("ray::run_step", "ray::_scatter", "ray::_link", "ray::_attach", "ray::_check"))
                   for part in process.info["cmdline"] or []):
                os.kill(process.info["pid"], signal.SIGKILL)
                killed.append(process.info["pid"])
                break
        time.sleep(0.05)
    out, err = job.communicate(timeout=600)
    assert killed and job.returncode == 0, err[-2000:]
    with Store.existing(one_node) as db, sharding.ShardedStore.open(folder).view() as view:
        assert json.loads(out) == run_dedup(db)
        assert rows(view)["dup_clusters"].equals(rows(db)["dup_clusters"])


def test_a_sharded_store_names_what_it_cannot_do(planted, one_node, tmp_path):
    store = sharding.ShardedStore.create(tmp_path / "sharded", 2)
    with pytest.raises(DataError, match="has 2 shards, not 3"):
        sharding.ShardedStore.create(tmp_path / "sharded", 3)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a sharded curation store"):
        sharding.ShardedStore.create(tmp_path / "other", 2)
    with pytest.raises(DataError, match="a sharded store: this step runs on a one-node store"):
        Store.existing(store.root)
    with pytest.raises(DataError, match="(?s)not a URL.*--shards N"):
        Store("s3://bucket/curation.duckdb")
    for url in ("nosuchfs://bucket/store", "gcs://bucket/store"):  # no such protocol; a protocol whose package is missing
        report = subprocess.run([*RECOT, "curate", "report", "--store", url], capture_output=True, text=True, timeout=120)
        assert report.returncode == 2 and "no filesystem for this location" in report.stderr, report.stderr[-2000:]
        assert "install its fsspec package" in report.stderr and "Traceback" not in report.stderr
    from recot.curation.dedup import DedupConfig

    with pytest.raises(DataError, match="runs on one node only"):
        sharded_dedup.run_dedup(store, DedupConfig(engine="datasketch"))
    judge = subprocess.run([*RECOT, "curate", "judge", "--store", str(store.root)], capture_output=True, text=True, timeout=120)
    assert judge.returncode == 2 and "a sharded store" in judge.stderr and "Traceback" not in judge.stderr
    one = subprocess.run([*RECOT, "curate", "dedup", "--store", str(one_node), "--ray"], capture_output=True, text=True, timeout=120)
    assert one.returncode == 2 and "--shards N" in one.stderr and "Traceback" not in one.stderr


def test_shards_an_older_recot_wrote_read_with_the_newer_columns_empty(planted, tmp_path):
    """A sharded store made before thinking teachers: one shard's traces lack the reasoning columns, and the whole-store
    view (report, page, export) still reads every trace, with those columns NULL."""
    store = sharding.ShardedStore.create(tmp_path / "sharded", 2)
    sharding.ingest(store, [planted])
    older = Path(store.files("traces")[0])
    pq.write_table(pq.read_table(older).drop(["reasoning", "reasoning_tokens"]), older)
    with store.view() as view:
        assert view.scalar("SELECT count(*) FROM traces") == sum(pq.read_metadata(f).num_rows for f in store.files("traces"))
        assert view.scalar("SELECT count(reasoning) + count(reasoning_tokens) FROM traces") == 0
        assert funnel(view)["traces"] == view.scalar("SELECT count(*) FROM traces")
