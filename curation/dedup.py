"""Exact and near-duplicate traces: MinHash signatures computed column-wise, LSH banding, clusters.

Words are hashed in polars (Rust) and n-grams combined from word hashes in numpy, and signatures use one-permutation
hashing (one hash per n-gram, binned; no Python loop per text, which is what limits datasketch). LSH bands and rows come from the target threshold (the
split that minimises false positives plus false negatives, as datasketch chooses them). Each band
links the members of a bucket to its first member; a link is kept only when the two texts' exact
n-gram Jaccard reaches the threshold (a join in polars), so estimation noise adds no false pairs;
clusters form around leaders taken in keep-policy order, so the kept trace is the leader and
every other member is a checked duplicate of it. The keep policy is deterministic: traces that
pass every rule first, then the best judge score, then the shortest text, then the trace id.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curation.store import Store

_MIX = np.uint64(0x9E3779B97F4A7C15)


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard of word n-grams at which two traces are duplicates")
    num_perm: int = Field(128, ge=16)
    ngram: int = Field(3, ge=1)
    margin: float = Field(0.1, ge=0, lt=1, description="LSH bands for threshold - margin: recall up, exact Jaccard keeps precision")
    seed: int = 0


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the false-positive plus false-negative area."""
    grid = np.linspace(0, 1, 1001)
    best, best_cost = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        hit = 1 - (1 - grid ** rows) ** bands
        cost = np.trapezoid(np.where(grid < threshold, hit, 0), grid) + np.trapezoid(np.where(grid >= threshold, 1 - hit, 0), grid)
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def shingles(texts: pl.Series, ngram: int = 3, seed: int = 0, chunk: int = 100_000) -> pl.DataFrame:
    """Distinct hashed word n-grams per text: ``doc`` (row number), ``h`` (uint64). Texts shorter than
    ``ngram`` words contribute their words. Words are hashed in polars and n-grams combined from the
    word hashes in numpy (no n-gram strings), ``chunk`` texts at a time, so memory stays bounded."""
    parts = []
    for start in range(0, len(texts), chunk):
        words = (pl.DataFrame({"text": texts.slice(start, chunk).fill_null("")}).with_row_index("doc", offset=start)
                 .select("doc", w=pl.col("text").str.to_lowercase().str.extract_all(r"\w+"))
                 .with_columns(size=pl.col("w").list.len())
                 .explode("w", keep_nulls=False, empty_as_null=False)
                 .select("doc", "size", h=pl.col("w").hash(seed)))
        doc, size, h = (words[c].to_numpy() for c in ("doc", "size", "h"))
        grams = h.copy()
        valid = size < ngram
        if len(h) >= ngram:
            tail = len(h) - ngram + 1
            combined = h[:tail].copy()
            for k in range(1, ngram):
                combined = (combined * _MIX) ^ h[k:k + tail]
            grams[:tail] = np.where(size[:tail] < ngram, h[:tail], combined)
            valid[:tail] |= doc[ngram - 1:] == doc[:tail]
        parts.append(pl.DataFrame({"doc": doc[valid].astype(np.uint32), "h": grams[valid]}).unique(maintain_order=True))
    return pl.concat(parts) if parts else pl.DataFrame(schema={"doc": pl.UInt32, "h": pl.UInt64})


def signatures(grams: pl.DataFrame, n: int, num_perm: int = 128) -> np.ndarray:
    """One-permutation MinHash (n, num_perm) of uint64 from :func:`shingles`: each n-gram's hash picks
    a bin and the bin keeps its smallest value; an empty bin takes the next filled bin's value
    (wrapping) mixed with the distance, so texts with fewer n-grams than bins still compare.
    One hash per n-gram instead of ``num_perm``: the signatures only propose candidates, which
    :func:`jaccard` then checks exactly."""
    mins = (grams.select("doc", bin=(pl.col("h") % num_perm).cast(pl.Int64), v=pl.col("h") // num_perm)
            .group_by("doc", "bin").agg(pl.col("v").min()))
    empty = np.iinfo(np.uint64).max
    sig = np.full((n, num_perm), empty, dtype=np.uint64)
    sig[mins["doc"].to_numpy(), mins["bin"].to_numpy()] = mins["v"].to_numpy()
    filled = sig != empty
    columns = np.arange(num_perm)
    index = np.where(np.concatenate([filled, filled], axis=1), np.arange(2 * num_perm), 2 * num_perm - 1)
    source = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1][:, :num_perm]
    borrowed = np.take_along_axis(np.concatenate([sig, sig], axis=1), source, axis=1)
    return np.where(filled, sig, borrowed + (source - columns).astype(np.uint64) * _MIX)


def jaccard(grams: pl.DataFrame, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the n-gram sets of row pairs (a[i], b[i]), by a join in polars."""
    pairs = pl.DataFrame({"a": a, "b": b}, schema={"a": pl.UInt32, "b": pl.UInt32}).with_row_index("pair")
    sizes = grams.group_by("doc").len().rename({"len": "size"})
    left = pairs.join(grams.rename({"doc": "a"}), on="a")
    inter = (left.join(grams.rename({"doc": "b"}), on=["b", "h"]).group_by("pair").len())
    result = (pairs.join(inter, on="pair", how="left").join(sizes.rename({"doc": "a", "size": "sa"}), on="a", how="left")
              .join(sizes.rename({"doc": "b", "size": "sb"}), on="b", how="left").sort("pair")
              .select(j=pl.col("len").fill_null(0) / (pl.col("sa") + pl.col("sb") - pl.col("len").fill_null(0))))
    return result["j"].fill_null(0.0).to_numpy()


def clusters(sig: np.ndarray, grams: pl.DataFrame, threshold: float, margin: float = 0.1) -> np.ndarray:
    """Cluster label (the leading row) for each row; rows come in priority order (the first of a
    cluster is kept). LSH candidates whose exact Jaccard reaches ``threshold`` are linked. Candidates
    are banded for ``threshold - margin``: more candidates, more recall; the exact check keeps precision."""
    n, k = sig.shape
    bands, rows = lsh_params(max(threshold - margin, 0.05), k)
    sources, targets = [], []
    for band in range(bands):
        key = np.zeros(n, dtype=np.uint64)
        for column in sig[:, band * rows:(band + 1) * rows].T:
            key = (key ^ column) * _MIX
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
        linked = np.flatnonzero(~starts)
        sources += [order[linked], order[linked]]
        targets += [first[linked], order[linked - 1]]  # to the bucket's first member and to the previous one
    edges = np.unique(np.stack([np.concatenate(sources), np.concatenate(targets)], axis=1), axis=0) \
        if sum(len(s) for s in sources) else np.zeros((0, 2), dtype=np.int64)
    a, b = edges[:, 0], edges[:, 1]
    keep = jaccard(grams, a, b) >= threshold if len(a) else np.zeros(0, dtype=bool)
    return _leaders(n, a[keep], b[keep])


def _leaders(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Greedy leader clustering in row order: the first unassigned row leads and takes its unassigned
    neighbours. Every member is a checked duplicate of its leader (no a~b~c chains that would join
    a and c below the threshold); the leader is the row the caller ranked first."""
    labels = np.arange(n)
    if not len(a):
        return labels
    ends = np.concatenate([a, b])
    others = np.concatenate([b, a])
    order = np.argsort(ends, kind="stable")
    ends, others = ends[order], others[order]
    starts = np.searchsorted(ends, np.arange(n + 1))
    assigned = np.zeros(n, dtype=bool)
    for row in np.unique(ends):
        if assigned[row]:
            continue
        assigned[row] = True
        neighbours = others[starts[row]:starts[row + 1]]
        free = neighbours[~assigned[neighbours]]
        labels[free] = row
        assigned[free] = True
    return labels


def run_dedup(store: Store, config: DedupConfig = DedupConfig()) -> dict[str, int]:
    """Cluster each task's answered traces; write ``dup_clusters`` and a ``dedup`` verdict per trace."""
    frame = pl.from_arrow(store.con.sql("""
        WITH failures AS (SELECT trace_id, count(*) AS n FROM verdicts WHERE NOT passed AND rule <> 'dedup' GROUP BY trace_id),
             judge AS (SELECT trace_id, value FROM scores WHERE name = 'judge')
        SELECT t.trace_id, t.task, t.text FROM traces t LEFT JOIN failures f USING (trace_id) LEFT JOIN judge j USING (trace_id)
        WHERE t.status = 'ok'
        ORDER BY t.task, coalesce(f.n, 0), j.value DESC NULLS LAST, length(t.text), t.trace_id""").to_arrow_table())
    parts = []
    for (task,), group in frame.group_by("task", maintain_order=True):
        grams = shingles(group["text"], config.ngram, config.seed)
        labels = clusters(signatures(grams, group.height, config.num_perm), grams, config.threshold,
                          config.margin)
        ids = group["trace_id"]
        parts.append(pl.DataFrame({"trace_id": ids, "cluster_id": ids.gather(labels),
                                   "exact_key": group["text"].str.to_lowercase().str.replace_all(r"\s+", " ").hash()}))
    found = pl.concat(parts) if parts else pl.DataFrame(schema={"trace_id": pl.Utf8, "cluster_id": pl.Utf8, "exact_key": pl.UInt64})
    arrow = found.to_arrow()
    with store.transaction():
        store.con.execute("DELETE FROM dup_clusters")
        store.con.execute("DELETE FROM verdicts WHERE rule = 'dedup'")
        store.con.execute("""
            INSERT INTO dup_clusters
            WITH c AS (SELECT f.trace_id, f.cluster_id, f.exact_key, count(*) OVER (PARTITION BY f.cluster_id) AS size,
                              count(DISTINCT f.exact_key) OVER (PARTITION BY f.cluster_id) AS keys
                       FROM arrow f)
            SELECT trace_id, cluster_id, CASE WHEN keys = 1 THEN 'exact' ELSE 'near' END, size, trace_id = cluster_id FROM c""")
        store.con.execute("""
            INSERT INTO verdicts SELECT trace_id, 'dedup', keep, CASE WHEN NOT keep THEN 'duplicate' END,
                   printf('%s duplicate of cluster %s (%d traces)', kind, cluster_id, size)
            FROM dup_clusters""")
    counts = store.con.execute("""SELECT count(DISTINCT cluster_id) FILTER (WHERE size > 1),
                                         count(*) FILTER (WHERE NOT keep AND kind = 'exact'),
                                         count(*) FILTER (WHERE NOT keep AND kind = 'near') FROM dup_clusters""").fetchall()[0]
    return {"clusters": counts[0], "exact_dropped": counts[1], "near_dropped": counts[2]}
