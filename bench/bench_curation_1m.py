"""The full curation pass over 1M realistic traces: ingest, every rule, dedup, export (all formats).

Traces are generated once into bench/.data/ from the real Industrial catalog (../shared/data): 100k
users with 3-10 item histories, R3 CoT texts in recot's format built from the items' titles and
SIDs (personas, interests named by title words, transitions from the latest item), blind and
hindsight, plus a lightly edited copy of every twentieth trace. The pass runs in a fresh process;
it prints the seconds of each step and the peak memory (VmHWM). Target: within 2 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
DATA = ROOT / "bench" / ".data" / "traces1m.parquet"
CHILD = r"""
import json, sys, time
from pathlib import Path
from recot.curation.dedup import run_dedup
from recot.curation.export import ExportConfig, export
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.synth.loaders import load_dataset
work = Path(sys.argv[2])
times = {}
start = time.perf_counter()
with Store(work / "c.duckdb") as store:
    store.load_catalog(load_dataset(sys.argv[3]).catalog)
    store.ingest(Path(sys.argv[1]))
    times["ingest"] = time.perf_counter() - start
    run_rules(store); times["rules"] = time.perf_counter() - start - sum(times.values())
    dedup = run_dedup(store); times["dedup"] = time.perf_counter() - start - sum(times.values())
    card = export(store, ExportConfig(name="bench", out=work / "export")); times["export"] = time.perf_counter() - start - sum(times.values())
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": times, "total": time.perf_counter() - start, "peak_mb": peak / 1024, "dedup": dedup,
                  "kept": card["funnel"]["kept"], "sft_rows": sum(card["formats"]["sft"].values())}))
"""


def generate(n_users: int = 100_000, per_user: int = 10) -> Path:
    import numpy as np
    import polars as pl

    from recot.synth.journal import OUTPUT_SCHEMA
    from recot.synth.loaders import load_dataset
    from recot.synth.schemas import ECOMMERCE_PERSONAS

    if DATA.exists():
        return DATA
    catalog = load_dataset(INDUSTRIAL).catalog
    items = catalog.items.select("item_id", "title").with_columns(sid=catalog.sid_text()).with_row_index("i")
    rng = np.random.default_rng(0)
    n = n_users * per_user
    lengths = rng.integers(3, 11, n)
    picks = rng.integers(0, items.height, (n, 11))
    ids, titles, sids = (items[c].to_numpy() for c in ("item_id", "title", "sid"))
    words = items.select(pl.col("title").str.to_lowercase().str.extract_all(r"[a-z]{4,}").list.head(2).list.join(" "))["title"].to_numpy()
    history = [ids[p[:k]].tolist() for p, k in zip(picks, lengths)]
    frame = pl.DataFrame({
        "user_id": [f"u{i // per_user}" for i in range(n)],
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
    traces = frame.with_row_index("r").select(
        request_hash=pl.col("r").cast(pl.Utf8).str.pad_start(64, "0"), task="task",
        subject_id=pl.col("user_id") + "@" + pl.col("r").cast(pl.Utf8), user_id="user_id", part=pl.lit("train"),
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
        teacher=pl.lit("bench"), model=pl.lit("generated"), params=pl.lit("{}"), created_at=pl.lit("2026-11-23T00:00:00"))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    full.select([f.name for f in OUTPUT_SCHEMA]).write_parquet(DATA)
    return DATA


def main() -> None:
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    sys.path.insert(0, str(ROOT))
    path = generate()
    with tempfile.TemporaryDirectory(prefix="bench-curation-") as work:
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), work, str(INDUSTRIAL)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"the curation pass exited with {done.returncode} (negative: killed by that signal)\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    print(f"{pq.read_metadata(path).num_rows} traces; steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    print(f"total {result['total']:.1f} s (target <= 120), peak {result['peak_mb']:.0f} MB; dedup {result['dedup']}; "
          f"kept {result['kept']}, SFT rows {result['sft_rows']}")


if __name__ == "__main__":
    main()
