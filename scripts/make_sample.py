"""Cut the bundled sample out of the full MiniOneRec Industrial set (run once; output is committed).

Keeps every valid/test row of 300 users chosen by a stable hash, and the items those rows name,
with their original SIDs, in the same layout as the source.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import polars as pl

USERS = 300


def main(source: Path, target: Path) -> None:
    frames = {name: pl.read_csv(source / f"{name}.csv", infer_schema=False) for name in ("valid", "test")}
    users = sorted(set(frames["valid"]["user_id"]) | set(frames["test"]["user_id"]),
                   key=lambda u: hashlib.sha1(u.encode()).hexdigest())[:USERS]
    target.mkdir(parents=True, exist_ok=True)
    item_ids: set[str] = set()
    for name, frame in frames.items():
        rows = frame.filter(pl.col("user_id").is_in(users))
        rows.write_csv(target / f"{name}.csv")
        item_ids |= set(rows["item_id"])
        item_ids |= {i for h in rows["history_item_id"].str.extract_all(r"\d+").to_list() for i in h}
    for name in ("items", "sids"):
        full = json.loads((source / f"{name}.json").read_text(encoding="utf-8"))
        kept = {k: v for k, v in full.items() if k in item_ids}
        (target / f"{name}.json").write_text(json.dumps(kept, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{len(users)} users, {len(item_ids)} items -> {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
