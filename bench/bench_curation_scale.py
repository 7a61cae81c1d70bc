"""The full curation pass (ingest, every rule, dedup, export in all formats) at 1M to 10M traces.

Traces are generated once per scale into bench/.data/ from the real Industrial catalog (../shared/data),
one million at a time: per million, 100k users with 3-10 item histories, R3 CoT texts in recot's
format built from the items' titles and SIDs (personas, interests named by title words, transitions
from the latest item), blind and hindsight, plus a lightly edited copy of every twentieth trace.
Each pass runs in a fresh process with the store's memory limit; it prints the seconds of each
step and the peak memory (VmHWM). Targets: 10M traces within 20 minutes at a peak of 8 GB.

    python bench/bench_curation_scale.py 1 2 5 10            # millions of traces (each plus 5% copies)
    python bench/bench_curation_scale.py 10 --memory-limit 6.5GB  # DuckDB's share of the 8 GB budget
    python bench/bench_curation_scale.py 1 --keep DIR         # keep the stores (DIR/1m.duckdb) for --compare
    python bench/bench_curation_scale.py --compare A.duckdb B.duckdb   # same verdicts and clusters, row by row
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
DATA = ROOT / "bench" / ".data"
CHILD = r"""
import json, sys, time
from pathlib import Path
from recot.curation.dedup import run_dedup
from recot.curation.export import ExportConfig, export
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.data.loaders import load_dataset
store_path, work = Path(sys.argv[2]), Path(sys.argv[3])
times = {}
start = time.perf_counter()
with Store(store_path) as store:
    store.load_catalog(load_dataset(sys.argv[4]).catalog)
    def done(step):
        times[step] = time.perf_counter() - start - sum(times.values())
        print(f"  {step} {times[step]:.1f} s", file=sys.stderr, flush=True)
    store.ingest(Path(sys.argv[1])); done("ingest")
    run_rules(store); done("rules")
    dedup = run_dedup(store); done("dedup")
    card = export(store, ExportConfig(name="bench", out=work / "export")); done("export")
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": times, "total": time.perf_counter() - start, "peak_mb": peak / 1024, "dedup": dedup,
                  "kept": card["funnel"]["kept"], "sft_rows": sum(card["formats"]["sft"].values())}))
"""
PER_MILLION_USERS = 100_000


def _million(catalog, part: int):
    """One million traces (plus 5% edited copies) whose users and request hashes are this part's own."""
    import numpy as np
    import polars as pl

    from recot.formats.schemas import ECOMMERCE_PERSONAS
    from recot.formats.traces import TRACES_SCHEMA

    per_user = 10
    items = catalog.items.select("item_id", "title").with_columns(sid=catalog.sid_text()).with_row_index("i")
    rng = np.random.default_rng(part)
    n = PER_MILLION_USERS * per_user
    lengths = rng.integers(3, 11, n)
    picks = rng.integers(0, items.height, (n, 11))
    ids, titles, sids = (items[c].to_numpy() for c in ("item_id", "title", "sid"))
    words = items.select(pl.col("title").str.to_lowercase().str.extract_all(r"[a-z]{4,}").list.head(2).list.join(" "))["title"].to_numpy()
    history = [ids[p[:k]].tolist() for p, k in zip(picks, lengths)]
    frame = pl.DataFrame({
        "user_id": [f"u{i // per_user + part * PER_MILLION_USERS}" for i in range(n)],
        "history": history,
        "target": ids[picks[:, 10]],
        "persona": np.array(ECOMMERCE_PERSONAS)[rng.integers(0, len(ECOMMERCE_PERSONAS), n)],
        "kw1": words[picks[:, 0]], "kw2": words[picks[:, 1]], "last": titles[picks[np.arange(n), lengths - 1]],
        "target_sid": sids[picks[:, 10]], "k": lengths,
        "task": np.where(rng.random(n) < 0.75, "r3_cot_hindsight", "r3_cot_blind"),
    })
    text = pl.format("<think>\nPersona: {}. items #1 and #2 point to it\nInterests:\n1. {} (from #1, #2)\n2. {} (from #3)\n"
                     "Transition: #{} {} -> interest 1. the latest purchase continues this interest\n</think>\n{}",
                     "persona", "kw1", "kw2", "k", "last", "target_sid")
    row = pl.col("r") + part * n
    traces = frame.with_row_index("r").select(
        request_hash=row.cast(pl.Utf8).str.pad_start(64, "0"), task="task",
        subject_id=pl.col("user_id") + "@" + row.cast(pl.Utf8), user_id="user_id", part=pl.lit("train"),
        history="history", history_ts=pl.col("history").list.eval(pl.int_range(pl.len())),
        target="target", target_ts=pl.col("k").cast(pl.Int64) + 1, cutoff_ts=pl.lit(1_000, pl.Int64),
        items=pl.lit(None, pl.List(pl.Utf8)), sample=pl.lit(0, pl.Int32), seed=pl.lit(0, pl.Int64), status=pl.lit("ok"),
        reason=pl.lit(None, pl.Utf8), detail=pl.lit(None, pl.Utf8),
        output=pl.format('{{"persona": {{"prototype": "{}", "evidence": "x"}}, "interests": [{{"name": "a", "evidence": [1, 2]}}], "answer": "{}"}}',
                         "persona", "target_sid"),
        text=text)
    copies = traces.gather_every(20).with_columns(
        request_hash=pl.col("request_hash").str.replace("^0", "c"), subject_id=pl.col("subject_id") + "#copy",
        text=pl.col("text").str.replace("continues", "extends"))
    full = pl.concat([traces, copies]).with_columns(
        raw=pl.lit(None, pl.Utf8), finish_reason=pl.lit("stop"), prompt_tokens=pl.lit(0, pl.Int64),
        completion_tokens=pl.lit(0, pl.Int64), latency_s=pl.lit(0.0), messages=pl.lit("[]"),
        template=pl.col("task") + ".j2", template_version=pl.lit(1, pl.Int32), template_hash=pl.lit("bench"),
        teacher=pl.lit("bench"), model=pl.lit("generated"), params=pl.lit("{}"), created_at=pl.lit("2026-11-23T00:00:00"),
        popular_rank=pl.lit(None, pl.Int32), reasoning=pl.lit(None, pl.Utf8), reasoning_tokens=pl.lit(None, pl.Int64))
    return full.select([f.name for f in TRACES_SCHEMA]).to_arrow().cast(TRACES_SCHEMA)


def generate(millions: int) -> Path:
    """bench/.data/traces{millions}m.parquet, written one million traces at a time (memory stays flat)."""
    import pyarrow.parquet as pq

    from recot.data.loaders import load_dataset
    from recot.formats.splits import SPLIT_FILE, SplitSpec
    from recot.formats.traces import TRACES_SCHEMA

    path = DATA / f"traces{millions}m.parquet"
    DATA.mkdir(parents=True, exist_ok=True)
    # the split the generated samples follow (export refuses traces whose split it cannot tell)
    (DATA / SPLIT_FILE).write_text(SplitSpec(kind="leave_last_out", max_history=10).model_dump_json())
    if path.exists():
        return path
    catalog = load_dataset(INDUSTRIAL).catalog
    partial = path.with_suffix(".partial")
    with pq.ParquetWriter(partial, TRACES_SCHEMA) as writer:
        for part in range(millions):
            writer.write_table(_million(catalog, part), row_group_size=128 * 1024)
    partial.rename(path)
    return path


def run(millions: int, keep: Path | None, memory_limit: str | None = None) -> dict:
    """One curation pass over the generated traces in a fresh process (DuckDB under ``memory_limit``, else the store's default)."""
    path = generate(millions)
    with tempfile.TemporaryDirectory(prefix="bench-curation-") as work:
        store = (keep or Path(work)) / f"{millions}m.duckdb"
        store.unlink(missing_ok=True)
        limit = {"RECOT_MEMORY_LIMIT": memory_limit} if memory_limit else {}
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(store), work, str(INDUSTRIAL)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ | limit)  # its stderr shows each step as it ends
    if done.returncode:
        sys.exit(f"the curation pass exited with {done.returncode} (negative: killed by that signal)")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    result["traces"] = pq.read_metadata(path).num_rows
    return result


def compare(a: Path, b: Path) -> dict[str, int]:
    """Rows of verdicts and dup_clusters in one store and not in the other (0 and 0: the same decisions).
    Clusters compare by their members' grouping and kept trace, not by how a cluster is named."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY); ATTACH '{b}' AS b (READ_ONLY)")
    found = {}
    for table, columns in (("verdicts", "trace_id, rule, passed, reason, detail"),
                           ("dup_clusters", "trace_id, cluster_id, kind, size, keep")):
        for left, right in (("a", "b"), ("b", "a")):
            found[f"{table} only in {left}"] = con.execute(
                f"SELECT count(*) FROM (SELECT {columns} FROM {left}.{table} EXCEPT ALL SELECT {columns} FROM {right}.{table})").fetchall()[0][0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("millions", nargs="*", type=int, default=[1])
    parser.add_argument("--keep", type=Path, help="keep each store as DIR/{N}m.duckdb")
    parser.add_argument("--memory-limit", help="DuckDB's memory limit for the pass (default: the store's, 4GB)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar="STORE")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    for millions in args.millions:
        result = run(millions, args.keep, args.memory_limit)
        print(f"{result['traces']:,} traces; steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()) +
              f"; total {result['total']:.1f} s, peak {result['peak_mb']:.0f} MB; dedup {result['dedup']}; kept {result['kept']}, "
              f"SFT rows {result['sft_rows']}", flush=True)


if __name__ == "__main__":
    main()
