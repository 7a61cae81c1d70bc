"""Near-duplicate detection: recot's signatures + LSH against datasketch's MinHash.bulk + MinHashLSH.

Traces: R2/R3 traces the rules teacher writes for the full Industrial set (../shared/data; the
bundled sample otherwise), plus one lightly edited copy of every tenth trace. Both sides find
the same thing: word 3-gram sets, 128 permutations, threshold 0.8. Time is CPU seconds on one core
(POLARS_MAX_THREADS=1). recot: ``shingles`` + ``signatures`` + ``clusters``. datasketch: Python
shingling (its input), ``MinHash.bulk``, ``MinHashLSH`` insert and query. Quality: precision,
recall and F1 of the pairs each finds against exact Jaccard >= 0.8 on a random sample of traces.
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"

import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
THRESHOLD, PERMS, SAMPLE = 0.8, 128, 1500


def traces() -> list[str]:
    from synth.job import SynthConfig, run_synth

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


def run_recot(texts: list[str]) -> tuple[float, list[int]]:
    from curation.dedup import clusters, shingles, signatures

    start = time.process_time()
    grams = shingles(pl.Series(texts))
    labels = clusters(signatures(grams, len(texts), PERMS), grams, THRESHOLD)
    return time.process_time() - start, labels.tolist()


def run_datasketch(texts: list[str]) -> tuple[float, dict[int, list[int]]]:
    from datasketch import MinHash, MinHashLSH

    start = time.process_time()
    sets = [[g.encode() for g in gram_set(t)] for t in texts]
    hashes = MinHash.bulk(sets, num_perm=PERMS)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMS)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    found = {i: [j for j in lsh.query(m) if j != i] for i, m in enumerate(hashes)}
    return time.process_time() - start, found


def score(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> str:
    tp = len(found & truth)
    p, r = tp / max(len(found), 1), tp / max(len(truth), 1)
    return f"precision {p:.3f}, recall {r:.3f}, F1 {2 * p * r / max(p + r, 1e-9):.3f}"


def main() -> None:
    texts = traces()
    n = len(texts)
    recot_s, labels = run_recot(texts)
    sketch_s, found = run_datasketch(texts)
    sample = sorted(random.Random(1).sample(range(n), min(SAMPLE, n)))
    grams = {i: gram_set(texts[i]) for i in sample}
    truth = {(a, b) for x, a in enumerate(sample) for b in sample[x + 1:]
             if len(grams[a] & grams[b]) / len(grams[a] | grams[b]) >= THRESHOLD}
    members = defaultdict(list)
    for i in sample:
        members[labels[i]].append(i)
    recot_pairs = {(a, b) for m in members.values() for x, a in enumerate(m) for b in m[x + 1:]}
    in_sample = set(sample)
    sketch_pairs = {(min(i, j), max(i, j)) for i in sample for j in found[i] if j in in_sample}
    print(f"{n} traces, 3-gram sets, {PERMS} permutations, threshold {THRESHOLD}, one core")
    print(f"recot       {n / recot_s:>9.0f} traces/s  ({recot_s:.2f} CPU s)")
    print(f"datasketch  {n / sketch_s:>9.0f} traces/s  ({sketch_s:.2f} CPU s)")
    print(f"speed-up {sketch_s / recot_s:.1f}x")
    print(f"quality on {len(sample)} sampled traces, {len(truth)} true pairs:")
    print(f"  recot       {score(recot_pairs, truth)}")
    print(f"  datasketch  {score(sketch_pairs, truth)}")


if __name__ == "__main__":
    main()
