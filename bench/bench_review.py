"""Review push and pull throughput against a real Argilla 2.8 server: batched against one call per record.

    scripts/argilla.sh start && .venv/bin/python bench/bench_review.py [--records 10000] [--single 1000]

recot's ``push`` sends bulk upserts of 500 records; the baseline is the same push with
``batch_size = 1`` (one request per record). ``pull`` reads pages of 1,000 records with their
responses; the baseline reads each record on its own (``GET /records/{id}``). The one-per-record
paths run on the first ``--single`` records (their rate is per record, so it compares directly).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=1_000)
    args = parser.parse_args()
    os.environ.setdefault("RECOT_ARGILLA_API_KEY", "argilla.apikey")
    from recot.curation.argilla_api import Argilla
    from recot.curation.review import ReviewConfig, push
    from recot.curation.store import Store
    from recot.data.loaders import load_dataset
    from recot.synth.job import SynthConfig, run_synth

    dataset = INDUSTRIAL if (INDUSTRIAL / "items.json").exists() else ROOT / "examples" / "amazon18-industrial-sample"
    work = Path(tempfile.mkdtemp(prefix="bench-review-"))
    run_synth(SynthConfig(dataset=dataset, out=work / "s", tasks=["r3_cot_hindsight", "r3_cot_blind"], limit=args.records),
              progress=False)
    stamp = time.time_ns()
    with Store(work / "c.duckdb") as store, Argilla() as api:
        store.load_catalog(load_dataset(dataset).catalog)
        store.ingest(work / "s" / "traces.parquet")
        store.con.execute(f"DELETE FROM traces WHERE trace_id NOT IN (SELECT trace_id FROM traces ORDER BY trace_id LIMIT {args.records})")
        n = store.scalar("SELECT count(*) FROM traces")
        rates = {}
        started = time.perf_counter()
        sent = push(store, ReviewConfig(dataset=f"bench-batched-{stamp}"), api)["sent"]
        rates["push batched"] = sent / (time.perf_counter() - started)
        store.con.execute(f"DELETE FROM traces WHERE trace_id NOT IN (SELECT trace_id FROM traces ORDER BY trace_id LIMIT {args.single})")
        started = time.perf_counter()
        sent_single = push(store, ReviewConfig(dataset=f"bench-single-{stamp}", batch_size=1), api)["sent"]
        rates["push one per record"] = sent_single / (time.perf_counter() - started)
        dataset_id = api.find_dataset(f"bench-batched-{stamp}", api.workspace_id("argilla"))["id"]
        started = time.perf_counter()
        records = list(api.records(dataset_id))
        rates["pull batched"] = len(records) / (time.perf_counter() - started)
        started = time.perf_counter()
        for record in records[:args.single]:
            api.call("GET", f"/records/{record['id']}", params={"include": "responses"})
        rates["pull one per record"] = min(args.single, len(records)) / (time.perf_counter() - started)
    print(f"{n} records pushed and pulled batched; {sent_single} one per record")
    for name, rate in rates.items():
        print(f"{name:22s} {rate:8.0f} records/s")
    print(f"push speed-up {rates['push batched'] / rates['push one per record']:.1f}x, "
          f"pull speed-up {rates['pull batched'] / rates['pull one per record']:.1f}x")


if __name__ == "__main__":
    main()
