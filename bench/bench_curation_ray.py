"""Curation of a sharded store on a local Ray cluster against the one-node store, on the same generated traces.

Baseline: the one-node pass (``Store``: ingest, rules, dedup, export), in a fresh process. Measured: the sharded
pass (``ShardedStore`` with ``--shards`` shards: the same steps, shard by shard as Ray tasks on a local cluster of
``--workers`` CPUs), in a fresh process. Both print seconds per step; the ratio is sharded / one node (target: at
most 1.2 on 2 workers: the engine's overhead, the gain comes with more machines). Peak memory: the one-node
process, and for the sharded pass its driver and the largest Ray worker (sampled every 0.2 s), against the target
of no process above 4 GB at 10M traces. The verdicts and clusters of both must be the same (order-free digests).
Traces come from bench_curation_scale.py's generator (real Industrial catalog, 5% edited copies).

``--object-store`` adds a third pass: the sharded store's root in a bucket of moto's S3-compatible server on loopback
(no real object store is reachable here), with its ratio against the local sharded pass. moto is one Python process
on the same CPUs, answering each request far slower than S3 does, so the ratio bounds the cost of the requests from
above; the requests it served, by method (its log), are what carries over to a real store.

    python bench/bench_curation_ray.py 1                 # 1M traces (plus copies), 2 workers, 200k traces a shard
    python bench/bench_curation_ray.py 10 --shards 50 --sharded-only   # memory per process at 10M
    python bench/bench_curation_ray.py 1 --sharded-only --object-store  # local folder against a bucket
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_curation_scale import INDUSTRIAL, ROOT, generate  # noqa: E402

DIGEST = """SELECT count(*), bit_xor(hash(trace_id, rule, passed, reason, detail)) FROM verdicts
            UNION ALL SELECT count(*), bit_xor(hash(trace_id, cluster_id, kind, size, keep)) FROM dup_clusters"""
COMMON = r"""
import json, sys, threading, time
from pathlib import Path
from recot.curation.export import ExportConfig, export
from recot.data.loaders import load_dataset
traces, work, dataset = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
times, start = {}, time.perf_counter()
def done(step):
    times[step] = time.perf_counter() - start - sum(times.values())
    print(f"  {step} {times[step]:.1f} s", file=sys.stderr, flush=True)
def peak_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
"""
ONE_NODE = COMMON + r"""
from recot.curation.dedup import run_dedup
from recot.curation.rules import run_rules
from recot.curation.store import Store
with Store(work / "one.duckdb") as store:
    store.load_catalog(load_dataset(dataset).catalog)
    store.ingest(traces); done("ingest")
    run_rules(store); done("rules")
    run_dedup(store); done("dedup")
    export(store, ExportConfig(name="bench", out=work / "export")); done("export")
    digest = store.con.execute(sys.argv[4]).fetchall()
print(json.dumps({"seconds": times, "total": time.perf_counter() - start, "peak_mb": peak_mb(), "digest": digest}))
"""
SHARDED = COMMON + r"""
import psutil, ray
from recot.curation import shards, sharded_dedup
workers = {}
def watch():
    while True:
        for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            if any(part.startswith("ray::") for part in p.info["cmdline"] or []) and p.info["memory_info"]:
                workers[p.info["pid"]] = max(workers.get(p.info["pid"], 0), p.info["memory_info"].rss / 2**20)
        time.sleep(0.2)
ray.init(num_cpus=int(sys.argv[6]), include_dashboard=False, log_to_driver=False)
threading.Thread(target=watch, daemon=True).start()
start = time.perf_counter()
store = shards.ShardedStore.create(sys.argv[7] if len(sys.argv) > 7 else work / "sharded", int(sys.argv[5]))
with store.head() as head:
    head.load_catalog(load_dataset(dataset).catalog)
shards.ingest(store, [traces], ray); done("ingest")
shards.run_rules(store, ray=ray); done("rules")
sharded_dedup.run_dedup(store, ray=ray); done("dedup")
with store.view() as view:
    export(view, ExportConfig(name="bench", out=work / "export")); done("export")
    digest = view.con.execute(sys.argv[4]).fetchall()
print(json.dumps({"seconds": times, "total": time.perf_counter() - start, "peak_mb": peak_mb(), "digest": digest,
                  "worker_peak_mb": max(workers.values(), default=0), "workers_seen": len(workers)}))
"""


def run(script: str, traces: Path, *extra: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-curation-ray-") as work:
        done = subprocess.run([sys.executable, "-c", script, str(traces), work, str(INDUSTRIAL), DIGEST, *extra],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ)  # stderr shows each step as it ends
    if done.returncode:
        sys.exit(f"the pass exited with {done.returncode} (negative: killed by that signal)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_a_bucket(traces: Path, shards: int, workers: int) -> dict:
    """The sharded pass with its root in a bucket of a loopback S3 server (the Ray workers inherit its settings)."""
    from recot.curation.shard_fs import location
    from recot.testing.servers import s3_server

    with tempfile.TemporaryDirectory(prefix="bench-s3-") as logs:
        server = s3_server(Path(logs) / "moto.log").start(60)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": server.endpoint})
        try:
            location("s3://recot-bench").mkdir()
            result = run(SHARDED, traces, str(shards), str(workers), "s3://recot-bench/sharded")
        finally:
            server.stop()
        methods = re.findall(r'"(?:\x1b\[[0-9;]*m)?(GET|PUT|POST|HEAD|DELETE) ', (Path(logs) / "moto.log").read_text())
    return {**result, "requests": dict(Counter(methods).most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("millions", type=int, nargs="?", default=1)
    parser.add_argument("--shards", type=int, help="default: one per 200k traces")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--sharded-only", action="store_true", help="the sharded pass alone (its memory at a scale where "
                        "both passes take too long)")
    parser.add_argument("--object-store", action="store_true", help="also the sharded pass with its root on a loopback S3 server")
    args = parser.parse_args()
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    traces = generate(args.millions)
    import pyarrow.parquet as pq

    n = pq.read_metadata(traces).num_rows
    shards = args.shards or max(2, math.ceil(n / 200_000))
    print(f"{n:,} traces; one node, then {shards} shards on {args.workers} Ray workers", flush=True)
    one = None if args.sharded_only else run(ONE_NODE, traces)
    sharded = run(SHARDED, traces, str(shards), str(args.workers))
    remote = in_a_bucket(traces, shards, args.workers) if args.object_store else None
    for name, result in (("one node", one), (f"sharded ({shards} shards, {args.workers} workers)", sharded),
                         ("sharded, root on S3 (moto)", remote)):
        if result is None:
            continue
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items()) +
              f"; total {result['total']:.1f} s; peak {result['peak_mb']:.0f} MB" +
              (f" (driver), largest worker {result['worker_peak_mb']:.0f} MB" if "worker_peak_mb" in result else ""))
    if remote is not None:
        print(f"ratio S3 root / local root: {remote['total'] / sharded['total']:.2f}; per step: " +
              ", ".join(f"{k} {remote['seconds'][k] / sharded['seconds'][k]:.2f}" for k in sharded["seconds"]) +
              f"; same verdicts and clusters: {remote['digest'] == sharded['digest']}; requests {remote['requests']}")
    if one is None:
        return
    print(f"ratio sharded / one node: {sharded['total'] / one['total']:.2f} (target <= 1.2); per step: " +
          ", ".join(f"{k} {sharded['seconds'][k] / one['seconds'][k]:.2f}" for k in one["seconds"]))
    print(f"same verdicts and clusters: {one['digest'] == sharded['digest']} {one['digest']}")


if __name__ == "__main__":
    main()
