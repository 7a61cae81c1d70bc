"""Loading plus sequence building: recot (polars, lazy) against a plain pandas implementation.

Two cases, each implementation in its own fresh process so peak memory (VmHWM) is its own:
  industrial  the full MiniOneRec Industrial set under ../shared/data (windows merged into sequences)
  events10m   a generated table of 10M interactions (parquet) plus a 200k-item catalog
Each pair runs interleaved, best of --repeat; the ratio printed is pandas / recot (above 1: recot wins).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
DATA = ROOT / "bench" / ".data"


def make_events(n_events: int = 10_000_000, n_users: int = 500_000, n_items: int = 200_000) -> Path:
    """A synthetic log with string ids and epoch-second times, written once and reused."""
    import numpy as np
    import polars as pl

    folder = DATA / f"events{n_events // 1_000_000}m"
    if (folder / "ds.toml").exists():
        return folder / "ds.toml"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pl.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]}) \
        .write_parquet(folder / "items.parquet")
    pl.DataFrame({
        "user_id": pl.Series(rng.integers(0, n_users, n_events)).cast(pl.Utf8).str.replace("^", "u"),
        "item_id": pl.Series(rng.zipf(1.3, n_events) % n_items).cast(pl.Utf8).str.replace("^", "i"),
        "ts": rng.integers(1_500_000_000, 1_700_000_000, n_events),
    }).write_parquet(folder / "events.parquet")
    (folder / "ds.toml").write_text('[items]\npath = "items.parquet"\n[interactions]\npath = "events.parquet"\n')
    return folder / "ds.toml"


def run_recot(case: str, path: Path) -> int:
    from recot.data.loaders import load_dataset

    return load_dataset(path).sequences().collect().height


def run_pandas(case: str, path: Path) -> int:
    """What one writes without recot: pandas frames, ast for the list columns, a groupby to lists."""
    import ast

    import pandas as pd

    if case == "industrial":
        items = pd.read_json(path / "items.json", orient="index")
        rows = pd.concat([pd.read_csv(path / "valid.csv").assign(period=1), pd.read_csv(path / "test.csv").assign(period=2)])
        rows["history"] = rows["history_item_id"].map(ast.literal_eval)
        known = set(items.index.astype(str))
        seqs = {}
        for user, group in rows.groupby("user_id", sort=True):
            seq: list = []
            for hist, item in zip(group["history"], group["item_id"]):
                hist = [str(h) for h in hist]
                if not seq:
                    seq = hist
                elif len(hist) > len(seq):
                    seq = hist[: len(hist) - len(seq)] + seq
                assert all(h in known for h in hist)
                seq.append(str(item))
            seqs[user] = seq
        return len(seqs)
    folder = path.parent
    items = pd.read_parquet(folder / "items.parquet")
    events = pd.read_parquet(folder / "events.parquet")
    events = events[events["item_id"].isin(items["item_id"])]
    events = events.sort_values(["user_id", "ts"], kind="stable")
    return len(events.groupby("user_id", sort=True)["item_id"].agg(list))


def child(impl: str, case: str, path: str) -> None:
    start = time.perf_counter()
    users = (run_recot if impl == "recot" else run_pandas)(case, Path(path))
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would include the parent's peak.
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    print(json.dumps({"impl": impl, "case": case, "users": users, "seconds": seconds, "peak_mb": peak_mb}))


def measure(impl: str, case: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", impl, case, str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "CASE", "PATH"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    cases = {"events10m": make_events(args.events)}
    if (INDUSTRIAL / "items.json").exists():
        cases = {"industrial": INDUSTRIAL, **cases}
    for case, path in cases.items():
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for impl in ("recot", "pandas"):
                result = measure(impl, case, path)
                if impl not in best or result["seconds"] < best[impl]["seconds"]:
                    best[impl] = result
        r, p = best["recot"], best["pandas"]
        assert r["users"] == p["users"], (r, p)
        print(f"{case:11s} users={r['users']:>8,}  recot {r['seconds']:7.2f}s {r['peak_mb']:7.0f} MB | "
              f"pandas {p['seconds']:7.2f}s {p['peak_mb']:7.0f} MB | "
              f"time ratio pandas/recot {p['seconds'] / r['seconds']:.2f}x, memory ratio {p['peak_mb'] / r['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
