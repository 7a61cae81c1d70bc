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

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curation.store import Store

_MIX = np.uint64(0x9E3779B97F4A7C15)
_PRIME = 0x100000001B3
_EMPTY = np.iinfo(np.uint32).max
_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[[*range(ord("0"), ord("9") + 1), *range(ord("a"), ord("z") + 1), ord("_"), *range(0x80, 0x100)]] = True


@dataclass(frozen=True)
class Grams:
    """Distinct hashed word n-grams of ``n`` texts: text i owns ``h[offsets[i]:offsets[i + 1]]``, sorted.
    Hashes are 32-bit: two texts of a few hundred n-grams share a false one with odds near 1e-5."""

    offsets: np.ndarray
    h: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), self.sizes)


def _spread(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``starts[i] : starts[i] + lengths[i]`` as one index array."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1] if len(ends) else 0)


def _power_table(base: int, n: int) -> np.ndarray:
    """``base ** i`` modulo 2^64 for i < n: an outer product of two short tables, not a long cumprod."""
    with np.errstate(over="ignore"):
        low = np.cumprod(np.concatenate([[np.uint64(1)], np.full(1023, base, dtype=np.uint64)]))
        high = np.cumprod(np.concatenate([[np.uint64(1)], np.full(n >> 10, pow(base, 1024, 1 << 64), dtype=np.uint64)]))
        return (high[:, None] * low[None, :]).ravel()[:n]


def _word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(text index, 64-bit hash) of every word (a run of ASCII letters, digits, ``_`` or non-ASCII bytes,
    after lower-casing), in order. A polynomial hash over the raw Arrow bytes: prefix sums of
    ``byte * P^i`` give any word's hash from two lookups, scaled back by ``P^-start`` (P is odd, so it
    has an inverse modulo 2^64); no Python string per word."""
    arrow = texts.fill_null("").str.to_lowercase().to_arrow().cast(pa.large_string())
    _, offsets_buffer, data_buffer = arrow.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[arrow.offset:arrow.offset + len(arrow) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buffer else np.zeros(0, np.uint8)
    offsets = offsets - offsets[0]
    word = _WORD_BYTES[data]
    boundary = np.zeros(len(data) + 1, dtype=bool)
    boundary[offsets] = True
    starts = np.flatnonzero(word & (boundary[:-1] | ~np.concatenate([[False], word[:-1]])))
    ends = np.flatnonzero(word & (boundary[1:] | ~np.concatenate([word[1:], [False]]))) + 1
    with np.errstate(over="ignore"):
        prefix = np.concatenate([[np.uint64(0)], np.cumsum(data.astype(np.uint64) * _power_table(_PRIME, len(data)))])
        hashes = _spread((prefix[ends] - prefix[starts]) * _power_table(pow(_PRIME, -1, 1 << 64), len(data))[starts])
    return np.searchsorted(offsets, starts, side="right") - 1, hashes


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


def shingles(texts: pl.Series, ngram: int = 3, seed: int = 0, chunk: int = 20_000) -> Grams:
    """Distinct hashed word n-grams of each text (its words, when it has fewer than ``ngram``),
    ``chunk`` texts at a time so memory stays bounded; n-grams are combined from word hashes."""
    seed_mix = np.uint64(seed) * _MIX
    sizes, hashes = [], []
    for start in range(0, len(texts), chunk):
        part = texts.slice(start, chunk)
        doc, h = _word_hashes(part)
        words = np.bincount(doc, minlength=len(part))[doc]
        grams, valid = h.copy(), words < ngram
        if len(h) >= ngram:
            tail = len(h) - ngram + 1
            with np.errstate(over="ignore"):
                combined = h[:tail].copy()
                for k in range(1, ngram):
                    combined = (combined * _MIX) ^ h[k:k + tail]
            grams[:tail] = np.where(words[:tail] < ngram, h[:tail], combined)
            valid[:tail] |= doc[ngram - 1:] == doc[:tail]
        with np.errstate(over="ignore"):
            keys = np.sort((doc[valid].astype(np.uint64) << np.uint64(32)) | (_spread(grams[valid] ^ seed_mix) >> np.uint64(32)))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
        sizes.append(np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(part)))
        hashes.append((keys & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    sizes_all = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return Grams(np.concatenate([[0], np.cumsum(sizes_all)]).astype(np.int64),
                 np.concatenate(hashes) if hashes else np.zeros(0, np.uint32))


def signatures(grams: Grams, num_perm: int = 128, chunk: int = 1 << 16) -> np.ndarray:
    """One-permutation MinHash (n, num_perm) of uint32 from :func:`shingles`: each n-gram's hash picks
    a bin and the bin keeps its smallest value; an empty bin takes the next filled bin's value
    (wrapping) mixed with the distance, so texts with fewer n-grams than bins still compare.
    One hash per n-gram instead of ``num_perm``: the signatures only propose candidates, which
    :func:`jaccard` then checks exactly."""
    n = len(grams.offsets) - 1
    sig = np.full(n * num_perm, _EMPTY, dtype=np.uint32)
    np.minimum.at(sig, grams.doc() * num_perm + (grams.h % np.uint32(num_perm)).astype(np.int64), grams.h // np.uint32(num_perm))
    sig = sig.reshape(n, num_perm)
    for start in range(0, n, chunk):
        sig[start:start + chunk] = _densify(sig[start:start + chunk])
    sig[grams.sizes == 0] = _EMPTY
    return sig


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the next filled one of its row, wrapping: the row is laid out twice
    and flattened, so one reversed running minimum over positions finds every source at once."""
    rows, k = sig.shape
    doubled = np.concatenate([sig, sig], axis=1).ravel()
    position = np.where(doubled != _EMPTY, np.arange(len(doubled)), len(doubled) - 1)
    source = np.minimum.accumulate(position[::-1])[::-1].reshape(rows, 2 * k)[:, :k]
    distance = (source - (np.arange(rows)[:, None] * 2 * k + np.arange(k))).astype(np.uint32)
    with np.errstate(over="ignore"):
        return np.where(sig != _EMPTY, sig, doubled[source] + distance * np.uint32(0x9E3779B9))


def jaccard(grams: Grams, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Exact Jaccard of the n-gram sets of row pairs (a[i], b[i]): each pair's keys ``pair << 32 | h``
    are sorted because each text's hashes are, so a's keys are looked up in b's by binary search.
    ``chunk`` pairs at a time keep memory bounded."""
    sizes = grams.sizes
    out = np.zeros(len(a))
    for start in range(0, len(a), chunk):
        pa, pb = a[start:start + chunk], b[start:start + chunk]
        sa, sb = sizes[pa], sizes[pb]
        pair = np.arange(len(pa), dtype=np.uint64) << np.uint64(32)
        keys_a = np.repeat(pair, sa) | grams.h[_gather(grams.offsets[pa], sa)]
        keys_b = np.repeat(pair, sb) | grams.h[_gather(grams.offsets[pb], sb)]
        found = np.minimum(np.searchsorted(keys_b, keys_a), max(len(keys_b) - 1, 0))
        hit = keys_b[found] == keys_a if len(keys_b) else np.zeros(len(keys_a), dtype=bool)
        inter = np.bincount(np.repeat(np.arange(len(pa)), sa)[hit], minlength=len(pa))
        union = sa + sb - inter
        out[start:start + chunk] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def candidates(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct row pairs (a < b) that share an LSH bucket, with bands and rows chosen for ``threshold``.
    Each bucket links its members to its first member and to the previous one: enough to connect a
    bucket, and linear in its size where all pairs would be quadratic for templated traces."""
    n, k = sig.shape
    bands, rows = lsh_params(threshold, k)
    codes = []
    for band in range(bands):
        key = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in sig[:, band * rows:(band + 1) * rows].T:
                key = (key ^ column.astype(np.uint64)) * _MIX
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
        linked = np.flatnonzero(~starts)
        for other in (first[linked], order[linked - 1]):
            member = order[linked]
            codes.append(np.minimum(member, other).astype(np.int64) * n + np.maximum(member, other))
    pairs = np.sort(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if len(pairs) else pairs
    return pairs // max(n, 1), pairs % max(n, 1)


def estimate(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Jaccard estimated from the signatures: the share of equal positions."""
    return np.concatenate([(sig[a[i:i + chunk]] == sig[b[i:i + chunk]]).mean(axis=1) for i in range(0, len(a), chunk)]) \
        if len(a) else np.zeros(0)


def clusters(sig: np.ndarray, grams: Grams, threshold: float, margin: float = 0.1) -> np.ndarray:
    """Cluster label (the leading row) for each row; rows come in priority order (the first of a
    cluster is kept). Candidates are banded for ``threshold - margin`` (more recall), candidates whose
    signature estimate is below ``threshold - 2 * margin`` are dropped unread, and the rest are linked
    only when their exact Jaccard reaches ``threshold``, so estimation noise adds no false pairs."""
    a, b = candidates(sig, max(threshold - margin, 0.05))
    likely = estimate(sig, a, b) >= threshold - 2 * margin
    a, b = a[likely], b[likely]
    keep = jaccard(grams, a, b) >= threshold
    return _leaders(len(sig), a[keep], b[keep])


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
    for row in np.flatnonzero(np.diff(starts)):
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
        labels = clusters(signatures(grams, config.num_perm), grams, config.threshold, config.margin)
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
