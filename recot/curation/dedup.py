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

The store's traces are read a chunk at a time and their sketches spilled to disk (band keys, signature
bytes, n-gram hashes); bands are read back one at a time and pairs checked a chunk at a time, so memory
stays flat from thousands to tens of millions of traces (bench/bench_curation_scale.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from recot.curation.store import Store
from recot.errors import DataError
from recot.formats.student import sql_text
from recot.formats.text import plain_text
from recot.io import frame_of

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


def spread(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
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
            hashes[todo] = spread(hashes[todo] * _MIX ^ chunk)
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
            keys = np.sort((doc[valid].astype(np.uint64) << np.uint64(32)) | (spread(grams[valid] ^ seed_mix) >> np.uint64(32)))
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
        np.minimum.at(part, (local * num_perm + (h % np.uint32(num_perm))).astype(np.int64), h // np.uint32(num_perm))
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
        keys_a = np.repeat(pair, sa) | grams.h[gather(grams.offsets[pa], sa)]
        keys_b = np.repeat(pair, sb) | grams.h[gather(grams.offsets[pb], sb)]
        found = np.minimum(np.searchsorted(keys_b, keys_a), max(len(keys_b) - 1, 0))
        hit = keys_b[found] == keys_a if len(keys_b) else np.zeros(len(keys_a), dtype=bool)
        inter = np.zeros(len(pa), dtype=np.int64)
        filled = sa > 0
        inter[filled] = np.add.reduceat(hit.astype(np.int64), (np.cumsum(sa) - sa)[filled]) if len(hit) else 0
        union = sa + sb - inter
        out[start:start + chunk] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def candidates(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct row pairs (a < b) that share an LSH bucket, with bands and rows chosen for ``threshold``."""
    return bucket_pairs(_band_keys(sig, *lsh_params(threshold, sig.shape[1])), len(sig))


def bucket_pairs(band_keys: Iterable[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct row pairs (a < b) that share a bucket in any band (one key per row and band). Each bucket
    links its members to its first member and to the previous one: enough to connect a bucket, and
    linear in its size where all pairs would be quadratic for templated traces."""
    codes = []
    for key in band_keys:
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
        linked = np.flatnonzero(~starts)
        for other in (first[linked], order[linked - 1]):
            member = order[linked]
            codes.append(np.minimum(member, other).astype(np.int64) * n + np.maximum(member, other))
    return distinct_pairs(codes, n)


def distinct_pairs(codes: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs among pair codes ``a * n + b``, as (a, b) in order."""
    pairs = np.sort(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if len(pairs) else pairs  # np.unique: 80x slower here
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
    return leaders(len(grams.offsets) - 1, a[keep], b[keep])


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


def leaders(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


# Answered traces with the keys of the keep policy: traces that pass every rule first, then the best judge
# score, then the shortest text, then the trace id. Ordered by task first, a task's traces are contiguous, and
# within a task the first of a cluster is the one kept.
KEYED_SQL = """
    WITH failures AS (SELECT trace_id, count(*) AS n FROM verdicts WHERE NOT passed AND rule <> 'dedup' GROUP BY trace_id),
         judge AS (SELECT trace_id, value FROM scores WHERE name = 'judge')
    SELECT t.trace_id, t.task, coalesce(f.n, 0) AS failures, j.value AS judge, length(t.text) AS text_length, t.text
    FROM traces t LEFT JOIN failures f USING (trace_id) LEFT JOIN judge j USING (trace_id)
    WHERE t.status = 'ok'"""
KEEP_ORDER = "task, failures, judge DESC NULLS LAST, text_length, trace_id"
_ORDERED_SQL = f"SELECT trace_id, task, text FROM ({KEYED_SQL}) ORDER BY {KEEP_ORDER}"


@dataclass(frozen=True)
class Sketch:
    """One chunk of traces as dedup sees them: n-grams, the low byte of each signature position, LSH band keys
    (bands x rows, not yet salted by task) and the key of the exact text."""

    grams: Grams
    sig8: np.ndarray
    keys: np.ndarray
    exact: pl.Series


def sketch(texts: pl.Series, config: DedupConfig, bands: int, rows: int) -> Sketch:
    """The sketch of ``texts`` (plain text first: twins that read the same are the same)."""
    texts = pl.DataFrame({"text": texts}).select(plain_text(pl.col("text"))).to_series()
    grams = shingles(texts, config.ngram, config.seed)
    sig = signatures(grams, config.num_perm)
    exact = texts.str.to_lowercase().str.replace_all(r"\s+", " ").hash()
    return Sketch(grams, sig.astype(np.uint8), _band_keys(sig, bands, rows), exact)


def salted(keys: np.ndarray, task: np.ndarray) -> np.ndarray:
    """Band keys of a task's own: buckets never mix tasks, so each task links as if alone."""
    return keys ^ spread(task.astype(np.uint64) + np.uint64(1))


def clusters_sql(rows: str, found: str) -> str:
    """``dup_clusters`` rows from ``rows`` (row, trace_id, exact_key) and ``found`` (row, label, size): a cluster is
    exact when its texts are equal after lower-casing and collapsing white space."""
    return f"""
        WITH c AS (SELECT r.trace_id, r.exact_key, f.label, f.size FROM {found} f JOIN {rows} r USING (row)),
             exact AS (SELECT label, count(DISTINCT exact_key) = 1 AS exact FROM c WHERE size > 1 GROUP BY label)
        SELECT c.trace_id, lead.trace_id AS cluster_id,
               CASE WHEN c.size = 1 THEN 'unique' WHEN e.exact THEN 'exact' ELSE 'near' END AS kind, c.size,
               c.trace_id = lead.trace_id AS keep
        FROM c JOIN {rows} AS lead ON lead.row = c.label LEFT JOIN exact e USING (label)"""


def record_clusters(store: Store, clusters: str) -> None:
    """Replace the store's ``dup_clusters`` by the rows of ``clusters`` (of its traces) and its ``dedup`` verdicts."""
    with store.transaction():
        store.con.execute("DELETE FROM dup_clusters")
        store.con.execute("DELETE FROM verdicts WHERE rule = 'dedup'")
        store.con.execute(f"INSERT INTO dup_clusters SELECT trace_id, cluster_id, kind, size, keep FROM ({clusters})")
        store.con.execute("""
            INSERT INTO verdicts SELECT trace_id, 'dedup', keep, CASE WHEN NOT keep THEN 'duplicate' END,
                   CASE WHEN size = 1 THEN 'no duplicate' ELSE printf('%s duplicate of cluster %s (%d traces)', kind, cluster_id, size) END
            FROM dup_clusters""")


def cluster_counts(con, clusters: str) -> dict[str, int]:
    """Clusters of more than one trace, and the traces dropped as exact and as near duplicates."""
    counts = con.execute(f"""SELECT count(DISTINCT cluster_id) FILTER (WHERE size > 1),
                                    count(*) FILTER (WHERE NOT keep AND kind = 'exact'),
                                    count(*) FILTER (WHERE NOT keep AND kind = 'near') FROM {clusters}""").fetchall()[0]
    return {"clusters": counts[0], "exact_dropped": counts[1], "near_dropped": counts[2]}


class _Sketches:
    """Per-row data of one dedup run, written a chunk of traces at a time to files under the store's spill
    folder and read back a band or a chunk of pairs at a time, so memory stays flat in the number of traces:
    ``keys.bin`` (bands x n bucket keys), ``sig8.bin`` (n x num_perm low signature bytes), ``grams.bin``
    (the n-gram hashes) and ``rows.parquet`` (trace id and exact-text key per row); offsets and task
    numbers stay in memory (9 bytes a row)."""

    def __init__(self, store: Store, config: DedupConfig, n: int, batch_rows: int) -> None:
        self.folder = store.spill("dedup")
        self.folder.mkdir(exist_ok=True)
        self.n, self.num_perm = n, config.num_perm
        self.bands, self.rows = lsh_params(max(config.threshold - config.margin, 0.05), config.num_perm)
        sizes, tasks = [], []
        names: dict[str, int] = {}
        schema = pa.schema([("trace_id", pa.string()), ("exact_key", pa.uint64())])
        with (open(self.folder / "keys.bin", "w+b") as keys, open(self.folder / "sig8.bin", "wb") as sig8,
              open(self.folder / "grams.bin", "wb") as grams_file, pq.ParquetWriter(self.folder / "rows.parquet", schema) as rows):
            keys.truncate(self.bands * n * 8)
            start = 0
            for batch in store.stream(_ORDERED_SQL, batch_rows):
                frame = frame_of(batch)
                for task in frame["task"].unique(maintain_order=True):
                    names.setdefault(task, len(names))
                tasks.append(frame["task"].replace_strict(names, return_dtype=pl.Int16).to_numpy())
                part = sketch(frame["text"], config, self.bands, self.rows)
                if config.engine == "recot":
                    part.sig8.tofile(sig8)
                    for band, key in enumerate(salted(part.keys, tasks[-1])):
                        keys.seek((band * n + start) * 8)
                        key.tofile(keys)
                part.grams.h.tofile(grams_file)
                sizes.append(part.grams.sizes)
                rows.write_table(pa.table({"trace_id": frame["trace_id"].to_arrow(), "exact_key": part.exact.to_arrow()}, schema=schema))
                start += frame.height
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(sizes or [np.zeros(0, np.int64)]))]).astype(np.int64)
        self.task = np.concatenate(tasks or [np.zeros(0, np.int16)])

    def band_keys(self) -> Iterator[np.ndarray]:
        for band in range(self.bands):
            yield np.fromfile(self.folder / "keys.bin", dtype=np.uint64, count=self.n, offset=band * self.n * 8)

    def grams(self) -> Grams:
        """The n-gram hashes mapped from disk: map them again per chunk of pairs, so the pages a chunk
        reads leave memory with it."""
        return Grams(self.offsets, np.memmap(self.folder / "grams.bin", dtype=np.uint32, mode="r", shape=(int(self.offsets[-1]),))
                     if self.offsets[-1] else np.zeros(0, np.uint32))

    def sig8(self) -> np.ndarray:
        return np.memmap(self.folder / "sig8.bin", dtype=np.uint8, mode="r", shape=(self.n, self.num_perm))


def _chunked(a: np.ndarray, b: np.ndarray, test: Callable[[np.ndarray, np.ndarray], np.ndarray], chunk: int = 1 << 16) -> np.ndarray:
    """``test(a, b)`` (a boolean per pair) ``chunk`` pairs at a time."""
    return np.concatenate([test(a[i:i + chunk], b[i:i + chunk]) for i in range(0, len(a), chunk)] or [np.zeros(0, bool)])


def _likely_pairs(sketches: _Sketches, config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Bucket pairs whose signature estimate reaches ``threshold - margin``, one band at a time: templated
    traces share buckets by the million, and only a band's pairs are held before the cut."""
    n, kept = sketches.n, []
    for key in sketches.band_keys():
        a, b = bucket_pairs([key], n)
        # the low byte of each position is enough for this coarse cut (b-bit MinHash: it adds (1 - J) / 256
        # to the estimate) and a quarter of the memory traffic
        likely = _chunked(a, b, lambda x, y: estimate(sketches.sig8(), x, y) >= config.threshold - config.margin)
        kept.append(a[likely] * n + b[likely])
    return distinct_pairs(kept, n)


def run_dedup(store: Store, config: DedupConfig = DedupConfig(), batch_rows: int = 1 << 17) -> dict[str, int]:
    """Cluster each task's answered traces; write ``dup_clusters`` and a ``dedup`` verdict per trace.
    Traces are read ``batch_rows`` at a time in keep-policy order and their sketches spilled to disk."""
    n = store.scalar("SELECT count(*) FROM traces WHERE status = 'ok'")
    sketches = _Sketches(store, config, n, batch_rows)
    if config.engine == "datasketch":
        a, b = datasketch_candidates(sketches.grams(), max(config.threshold - config.margin, 0.05), config.num_perm, config.seed)
    else:
        a, b = _likely_pairs(sketches, config)
    # datasketch's buckets span tasks; recot's keys are salted per task, so for it only a hash collision is dropped here
    same_task = sketches.task[a] == sketches.task[b]
    a, b = a[same_task], b[same_task]
    keep = _chunked(a, b, lambda x, y: jaccard(sketches.grams(), x, y) >= config.threshold)
    labels = leaders(n, a[keep], b[keep])
    sizes = np.bincount(labels, minlength=n)[labels]
    store.con.register("found", pa.table({"row": np.arange(n), "label": labels, "size": sizes}))
    rows = sql_text(str(sketches.folder / "rows.parquet"))
    rows = f"(SELECT file_row_number AS row, trace_id, exact_key FROM read_parquet({rows}, file_row_number = true))"
    record_clusters(store, clusters_sql(rows, "found"))
    store.con.unregister("found")
    shutil.rmtree(sketches.folder)
    return cluster_counts(store.con, "dup_clusters")
