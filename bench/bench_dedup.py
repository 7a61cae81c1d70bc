"""Near-duplicate detection: recot's signatures + LSH against datasketch's MinHash.bulk + MinHashLSH and rensa.

Traces: R2/R3 traces the rules teacher writes for the full Industrial set (../shared/data; the
bundled sample otherwise), plus one lightly edited copy of every tenth trace. Both sides find
the same thing: word 3-gram sets, 128 permutations, threshold 0.8. Time is CPU seconds on one core
(POLARS_MAX_THREADS=1), the best of three runs per side. recot: ``shingles`` + ``signatures`` + ``clusters``. datasketch: Python
shingling (its input), ``MinHash.bulk``, ``MinHashLSH`` insert and query. Quality: precision,
recall and F1 of each side's dedup decision (row order is the keep policy for both; datasketch's
query results feed the same leader clustering) against exact Jaccard >= 0.8 on a random sample.
rensa (Rust, the fastest peer that installs here): its bulk digest matrix from recot's n-gram hashes
and its LSH with recot's bands, then recot's exact check, so only the MinHash + LSH engines differ.
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"

import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
THRESHOLD, PERMS, SAMPLE, ROUNDS, MARGIN = 0.8, 128, 1500, 3, 0.1


def traces() -> list[str]:
    from recot.synth.job import SynthConfig, run_synth

    dataset = INDUSTRIAL if (INDUSTRIAL / "items.json").exists() else ROOT / "examples" / "amazon18-industrial-sample"
    out = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    run_synth(SynthConfig(dataset=dataset, out=out, tasks=["r2_interests", "r3_cot_blind", "r3_cot_hindsight"]), progress=False)
    texts = pl.read_parquet(out / "traces.parquet")["text"].to_list()
    rng = random.Random(0)
    for text in texts[::10]:
        words = text.split(" ")
        words[rng.randrange(len(words))] = "edited"
        texts.append(" ".join(words))
    return texts


def gram_set(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)} or {" ".join(words)}


def run_recot(texts: list[str]) -> tuple[float, np.ndarray]:
    from recot.curation.dedup import clusters, shingles, signatures

    start = time.process_time()
    grams = shingles(pl.Series(texts))
    labels = clusters(signatures(grams, PERMS), grams, THRESHOLD)
    return time.process_time() - start, labels


def run_datasketch(texts: list[str]) -> tuple[float, np.ndarray]:
    """datasketch's index proposes the pairs; the same leader policy as recot's (row order) decides."""
    from datasketch import MinHash, MinHashLSH

    from recot.curation.dedup import _leaders

    start = time.process_time()
    sets = [[g.encode() for g in gram_set(t)] for t in texts]
    hashes = MinHash.bulk(sets, num_perm=PERMS)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMS)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    pairs = np.array([(i, j) for i, m in enumerate(hashes) for j in lsh.query(m) if j > i], dtype=np.int64).reshape(-1, 2)
    return time.process_time() - start, _leaders(len(texts), pairs[:, 0], pairs[:, 1])


def run_rensa(texts: list[str]) -> tuple[float, np.ndarray]:
    """rensa on recot's n-gram hashes (4-byte tokens), its LSH banded like recot's (threshold - margin),
    every row inserted and queried for its pairs; the same exact check and leaders decide."""
    from rensa import RMinHash, RMinHashLSH

    from recot.curation.dedup import link, lsh_params, shingles

    start = time.process_time()
    grams = shingles(pl.Series(texts))
    tokens = grams.h.view("S4")
    minhashes = RMinHash.from_token_sets([tokens[a:b].tolist() for a, b in zip(grams.offsets[:-1], grams.offsets[1:])], PERMS, 0)
    bands, _ = lsh_params(THRESHOLD - MARGIN, PERMS)  # 14 x 9; rensa needs bands dividing num_perm: 16 x 8, the
    bands = min((b for b in range(1, PERMS + 1) if PERMS % b == 0), key=lambda b: abs(b - bands))  # nearest such split
    lsh = RMinHashLSH(THRESHOLD - MARGIN, PERMS, bands)
    lsh.insert_pairs(list(enumerate(minhashes)))
    found = lsh.query_all(minhashes)
    pairs = np.array([(i, j) for i, keys in enumerate(found) for j in keys if j > i], dtype=np.int64).reshape(-1, 2)
    return time.process_time() - start, link(grams, pairs[:, 0], pairs[:, 1], THRESHOLD)


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def quality(labels: np.ndarray, sample: list[int], truth: set[tuple[int, int]], texts: list[str]) -> str:
    """Precision: sampled traces dropped whose kept trace is a true duplicate (exact Jaccard >= the
    threshold). Recall: true duplicate pairs among the sampled traces of which at most one is kept."""
    dropped = [i for i in sample if labels[i] != i]
    right = sum(jaccard(gram_set(texts[i]), gram_set(texts[labels[i]])) >= THRESHOLD for i in dropped)
    removed = sum(labels[a] != a or labels[b] != b for a, b in truth)
    p, r = right / max(len(dropped), 1), removed / max(len(truth), 1)
    return f"precision {p:.3f} ({len(dropped)} dropped), recall {r:.3f}, F1 {2 * p * r / max(p + r, 1e-9):.3f}"


def main() -> None:
    texts = traces()
    n = len(texts)
    recot_runs = [run_recot(texts) for _ in range(ROUNDS)]
    sketch_runs = [run_datasketch(texts) for _ in range(ROUNDS)]
    rensa_runs = [run_rensa(texts) for _ in range(ROUNDS)]
    recot_s, recot_labels = min(recot_runs, key=lambda run: run[0])
    sketch_s, sketch_labels = min(sketch_runs, key=lambda run: run[0])
    rensa_s, rensa_labels = min(rensa_runs, key=lambda run: run[0])
    sample = sorted(random.Random(1).sample(range(n), min(SAMPLE, n)))
    grams = {i: gram_set(texts[i]) for i in sample}
    truth = {(a, b) for x, a in enumerate(sample) for b in sample[x + 1:] if jaccard(grams[a], grams[b]) >= THRESHOLD}
    print(f"{n} traces, 3-gram sets, {PERMS} permutations, threshold {THRESHOLD}, one core")
    print(f"recot       {n / recot_s:>9.0f} traces/s  ({recot_s:.2f} CPU s)")
    print(f"datasketch  {n / sketch_s:>9.0f} traces/s  ({sketch_s:.2f} CPU s)")
    print(f"rensa       {n / rensa_s:>9.0f} traces/s  ({rensa_s:.2f} CPU s)")
    print(f"speed-up over datasketch {sketch_s / recot_s:.1f}x, over rensa {rensa_s / recot_s:.2f}x (target 1.5x)")
    print(f"quality on {len(sample)} sampled traces, {len(truth)} true pairs:")
    print(f"  recot       {quality(recot_labels, sample, truth, texts)}")
    print(f"  datasketch  {quality(sketch_labels, sample, truth, texts)}")
    print(f"  rensa       {quality(rensa_labels, sample, truth, texts)}")


if __name__ == "__main__":
    main()
