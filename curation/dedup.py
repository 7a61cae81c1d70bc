"""Exact and near-duplicate traces: MinHash signatures computed column-wise, LSH banding, clusters.

Words are hashed straight from the Arrow bytes and n-grams combined from word hashes in numpy;
signatures use one-permutation hashing (one hash per n-gram, binned, empty bins densified), so
there is no Python loop per text, which is what limits datasketch. LSH bands and rows come from
the target threshold (the split that minimises false positives plus false negatives, as datasketch
chooses them). Each band links the members of a bucket to its first and previous member; a link
is kept only when the two texts' exact n-gram Jaccard reaches the threshold (a chunked binary
search over sorted n-gram hashes), so estimation noise adds no false pairs. Clusters form around
leaders taken in keep-policy order, so the kept trace is the leader and every other member is a
checked duplicate of it. The keep policy is deterministic: traces that pass every rule first, then
the best judge score, then the shortest text, then the trace id.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from recot.curation.store import Store
from recot.synth.errors import DataError

_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.iinfo(np.uint32).max
_LOW_BYTES = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [(1 << 64) - 1], dtype=np.uint64)  # masks of the low r bytes


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


def _word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(text index, 64-bit hash) of every word (a run of ASCII letters, digits, ``_`` or non-ASCII bytes,
    after lower-casing), in order. Read straight from the Arrow bytes, 8 bytes of every word at a time
    (most words take one round), so no Python string is made per word."""
    arrow = texts.fill_null("").str.to_lowercase().to_arrow().cast(pa.large_string())
    _, offsets_buffer, data_buffer = arrow.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[arrow.offset:arrow.offset + len(arrow) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buffer else np.zeros(0, np.uint8)
    offsets = offsets - offsets[0]
    word = (data - np.uint8(ord("a")) < 26) | (data - np.uint8(ord("0")) < 10) | (data >= 0x80) | (data == ord("_"))
    boundary = np.zeros(len(data) + 1, dtype=bool)
    boundary[offsets] = True
    starts = np.flatnonzero(word & (boundary[:-1] | ~np.concatenate([[False], word[:-1]])))
    lengths = np.flatnonzero(word & (boundary[1:] | ~np.concatenate([word[1:], [False]]))) + 1 - starts
    # row i of `windows` is the 8 bytes from position i (a view, no copy); word bytes are never 0, so
    # a word's first 8 bytes with the rest zeroed tell words of up to 8 bytes apart exactly
    windows = np.lib.stride_tricks.as_strided(np.concatenate([data, np.zeros(8, np.uint8)]), shape=(len(data) + 1, 8), strides=(1, 1))
    with np.errstate(over="ignore"):
        hashes = (windows[starts].view(np.uint64).ravel() & _LOW_BYTES[np.minimum(lengths, 8)]) * _MIX  # n-grams are spread later
        todo, step = np.flatnonzero(lengths > 8), 8
        while len(todo):
            chunk = windows[starts[todo] + step].view(np.uint64).ravel() & _LOW_BYTES[np.minimum(lengths[todo] - step, 8)]
            hashes[todo] = _spread(hashes[todo] * _MIX ^ chunk)
            step += 8
            todo = todo[lengths[todo] > step]
    per_text = np.diff(np.searchsorted(starts, offsets))
    return np.repeat(np.arange(len(per_text)), per_text), hashes


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard of word n-grams at which two traces are duplicates")
    num_perm: int = Field(128, ge=16, le=4096, description="MinHash signature length")
    ngram: int = Field(3, ge=1, description="word n-grams compared")
    margin: float = Field(0.1, ge=0, lt=1, description="LSH bands for threshold - margin: recall up, exact Jaccard keeps precision")
    seed: int = Field(0, description="seed of the hash functions")
    engine: Literal["recot", "datasketch"] = Field(
        "recot", description="what proposes candidate pairs: recot's one-permutation MinHash and banding (fast), or datasketch's "
        "MinHash and MinHashLSH (pip install 'recot[datasketch]'); exact Jaccard decides either way")


@cache
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


def shingles(texts: pl.Series, ngram: int = 3, seed: int = 0, chunk: int = 5_000) -> Grams:
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


def signatures(grams: Grams, num_perm: int = 128, chunk: int = 1 << 13) -> np.ndarray:
    """One-permutation MinHash (n, num_perm) of uint32 from :func:`shingles`: each n-gram's hash picks
    a bin and the bin keeps its smallest value; an empty bin takes the next filled bin's value
    (wrapping) mixed with the distance, so texts with fewer n-grams than bins still compare.
    One hash per n-gram instead of ``num_perm``: the signatures only propose candidates, which
    :func:`jaccard` then checks exactly. ``chunk`` rows at a time: small temporaries are reused by
    the allocator where large ones cost a page fault per 4 KiB on every call."""
    n = len(grams.offsets) - 1
    sig = np.empty((n, num_perm), dtype=np.uint32)
    sizes = grams.sizes
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        h = grams.h[grams.offsets[start]:grams.offsets[start + rows]]
        part = np.full(rows * num_perm, _EMPTY, dtype=np.uint32)
        local = np.repeat(np.arange(rows, dtype=np.int64), sizes[start:start + rows])
        np.minimum.at(part, local * num_perm + (h % np.uint32(num_perm)), h // np.uint32(num_perm))
        sig[start:start + rows] = _densify(part.reshape(rows, num_perm))
    sig[sizes == 0] = _EMPTY
    return sig


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the next filled one of its row, wrapping: a reversed running minimum of
    filled column numbers along each row (int16) finds every source at once."""
    rows, k = sig.shape
    empty = sig == _EMPTY
    column = np.arange(k, dtype=np.int16)
    following = np.minimum.accumulate(np.where(empty, np.int16(2 * k), column)[:, ::-1], axis=1)[:, ::-1]
    wrap = following >= k  # past the row's last filled bin: its first filled bin, one lap on
    first = following[:, :1]
    source = np.minimum(np.where(wrap, first, following), k - 1)  # in range for a row with no filled bin (the caller empties it)
    distance = (np.where(wrap, first + k, following) - column).astype(np.uint32)
    with np.errstate(over="ignore"):
        return np.where(empty, np.take_along_axis(sig, source, axis=1) + distance * np.uint32(0x9E3779B9), sig)


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
        inter = np.zeros(len(pa), dtype=np.int64)
        filled = sa > 0
        inter[filled] = np.add.reduceat(hit.astype(np.int64), (np.cumsum(sa) - sa)[filled]) if len(hit) else 0
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
    for key in _band_keys(sig, bands, rows):
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


def _band_keys(sig: np.ndarray, bands: int, rows: int, chunk: int = 1 << 13) -> np.ndarray:
    """(bands, n) bucket keys: each band's ``rows`` positions folded into one 64-bit hash. Computed
    ``chunk`` rows at a time for every band at once, reading each row's positions contiguously."""
    keys = np.empty((bands, len(sig)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(sig), chunk):
            block = sig[start:start + chunk, :bands * rows].reshape(-1, bands, rows)
            key = np.zeros(block.shape[:2], dtype=np.uint64)
            for position in range(rows):
                key = (key ^ block[:, :, position]) * _MIX
            keys[:, start:start + chunk] = key.T
    return keys


def estimate(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """Jaccard estimated from the signatures: the share of equal positions (``chunk`` pairs at a time,
    small enough for the comparison to stay in cache)."""
    if not len(a):
        return np.zeros(0)
    equal = [(sig[a[i:i + chunk]] == sig[b[i:i + chunk]]).sum(axis=1, dtype=np.int32) for i in range(0, len(a), chunk)]
    return np.concatenate(equal) / sig.shape[1]


def clusters(sig: np.ndarray, grams: Grams, threshold: float, margin: float = 0.1) -> np.ndarray:
    """Cluster label (the leading row) for each row; rows come in priority order (the first of a
    cluster is kept). Candidates are banded for ``threshold - margin`` (more recall), candidates whose
    signature estimate is below ``threshold - margin`` are dropped unread, and the rest are linked
    only when their exact Jaccard reaches ``threshold``, so estimation noise adds no false pairs."""
    a, b = candidates(sig, max(threshold - margin, 0.05))
    # the low byte of each position is enough for this coarse cut (b-bit MinHash: it adds (1 - J) / 256
    # to the estimate) and a quarter of the memory traffic
    likely = estimate(sig.astype(np.uint8), a, b) >= threshold - margin
    return link(grams, a[likely], b[likely], threshold)


def link(grams: Grams, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels from candidate pairs: only pairs whose exact Jaccard reaches ``threshold`` are linked."""
    keep = jaccard(grams, a, b) >= threshold
    return _leaders(len(grams.offsets) - 1, a[keep], b[keep])


def datasketch_candidates(grams: Grams, threshold: float, num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) that datasketch's MinHashLSH puts in a common bucket, from MinHash signatures of the
    same n-gram hashes (the design's named engine; recot's own path is many times faster, see bench/)."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        raise DataError("dedup.engine", "datasketch is not installed", "pip install 'recot[datasketch]', or use engine = 'recot'") from None
    n = len(grams.offsets) - 1
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures = []
    for i in range(n):
        minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)  # the n-grams are hashed already
        minhash.update_batch(grams.h[grams.offsets[i]:grams.offsets[i + 1]].tolist())
        lsh.insert(i, minhash)
        signatures.append(minhash)
    pairs = [(i, j) for i, minhash in enumerate(signatures) for j in lsh.query(minhash) if j > i]
    found = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return found[:, 0], found[:, 1]


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
    parts = [_task_clusters(group, config) for _, group in frame.group_by("task", maintain_order=True)]
    found = pl.concat(parts).to_arrow() if parts else None
    with store.transaction():
        store.con.execute("DELETE FROM dup_clusters")
        store.con.execute("DELETE FROM verdicts WHERE rule = 'dedup'")
        if found is not None:
            store.con.execute("INSERT INTO dup_clusters SELECT trace_id, cluster_id, kind, size, keep FROM found")
        store.con.execute("""
            INSERT INTO verdicts SELECT trace_id, 'dedup', keep, CASE WHEN NOT keep THEN 'duplicate' END,
                   CASE WHEN size = 1 THEN 'no duplicate' ELSE printf('%s duplicate of cluster %s (%d traces)', kind, cluster_id, size) END
            FROM dup_clusters""")
    counts = store.con.execute("""SELECT count(DISTINCT cluster_id) FILTER (WHERE size > 1),
                                         count(*) FILTER (WHERE NOT keep AND kind = 'exact'),
                                         count(*) FILTER (WHERE NOT keep AND kind = 'near') FROM dup_clusters""").fetchall()[0]
    return {"clusters": counts[0], "exact_dropped": counts[1], "near_dropped": counts[2]}


def _task_clusters(group: pl.DataFrame, config: DedupConfig) -> pl.DataFrame:
    """One task's rows (in keep-policy order) with their cluster, its size and kind, and whether each is kept.
    A cluster is ``exact`` when its texts are equal after lower-casing and collapsing white space
    (hashed only for rows that have a duplicate), ``near`` otherwise; a trace without one is ``unique``."""
    grams = shingles(group["text"], config.ngram, config.seed)
    if config.engine == "datasketch":
        labels = link(grams, *datasketch_candidates(grams, max(config.threshold - config.margin, 0.05), config.num_perm, config.seed),
                      config.threshold)
    else:
        labels = clusters(signatures(grams, config.num_perm), grams, config.threshold, config.margin)
    sizes = np.bincount(labels, minlength=len(labels))[labels]
    shared = np.flatnonzero(sizes > 1)
    keys = group["text"].gather(shared).str.to_lowercase().str.replace_all(r"\s+", " ").hash()
    exact = pl.DataFrame({"label": labels[shared], "key": keys}).group_by("label").agg(exact=pl.col("key").n_unique() == 1)
    ids = group["trace_id"]
    return (pl.DataFrame({"trace_id": ids, "cluster_id": ids.gather(labels), "label": labels, "size": sizes})
            .join(exact, on="label", how="left", maintain_order="left")
            .select("trace_id", "cluster_id",
                    kind=pl.when(pl.col("size") == 1).then(pl.lit("unique")).when(pl.col("exact")).then(pl.lit("exact")).otherwise(pl.lit("near")),
                    size="size", keep=pl.col("trace_id") == pl.col("cluster_id")))
