"""Candidate slates for blind R3: the real next item among N-1 negatives, in a seeded shuffled order.

A teacher LLM has never seen the catalog's other SIDs, so "predict the next SID" asks it to invent
one. Over a slate it picks (or ranks) among items it is shown, which it can do, and rejection
sampling keeps the traces whose pick was right.

Negatives come from samplers mixed by weight (the N-1 places are shared by largest remainder, and a
sampler whose pool runs dry leaves its places to the next ones, then to uniform):

- ``popularity``: drawn in proportion to training popularity;
- ``prefix``: items sharing the target's first SID codes (hard: the same semantic cluster);
- ``cooccurrence``: items that followed the history's items in training samples (hard);
- ``embedding``: the target's nearest neighbours in item-embedding space (hard);
- ``uniform``: any catalog item.

Popularity and co-occurrence count training samples only, which lie before every user's cut-off.
Negatives are never the target or an item of the history. The tables are built once per job and
grow with the catalog, not with the number of samples (the embedding neighbours, quadratic in the catalog,
are kept in the job's work folder for its reruns); each slate is drawn from a generator seeded
by the job's seed and the sample's id, so a rerun (or another shard) draws the same slate.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recot.data.catalog import Catalog
from recot.errors import DataError

Sampler = Literal["popularity", "prefix", "cooccurrence", "embedding", "uniform"]
_HARD_POOL = 4  # hard negatives are drawn at random from the best (places x this) of their ranked pool


class SlateConfig(BaseModel):
    """How slates are drawn and answered; used by slate tasks (``r3_cot_slate``)."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(20, ge=2, description="candidates per slate: the real next item plus size - 1 negatives")
    top_k: int = Field(1, ge=1, description="1: the teacher picks one candidate; k > 1: it ranks its top k (a hit is the item among them)")
    samplers: dict[Sampler, float] = Field(
        {"popularity": 1.0, "prefix": 1.0, "cooccurrence": 1.0},
        description="negative samplers and their weights: popularity, prefix, cooccurrence, embedding, uniform")
    prefix_levels: int = Field(1, ge=1, description="leading SID codes a prefix negative shares with the target")
    embeddings: Path | None = Field(None, description="item embeddings for the embedding sampler (.npy in catalog order or "
                                    ".parquet with item_id, embedding); none: the bundled MiniLM embeds the catalog text")
    seed: int = Field(0, description="seed of every slate's draw (with the sample's id)")

    @model_validator(mode="after")
    def _check(self) -> SlateConfig:
        if self.top_k >= self.size:
            raise ValueError(f"top_k = {self.top_k} must be below size = {self.size}: otherwise every answer hits")
        if not self.samplers or any(w < 0 for w in self.samplers.values()) or not sum(self.samplers.values()):
            raise ValueError("samplers need at least one positive weight and no negative one")
        return self

    def quotas(self) -> list[tuple[str, int]]:
        """Places per sampler for ``size - 1`` negatives, by largest remainder (ties in listing order)."""
        places, total = self.size - 1, sum(self.samplers.values())
        exact = {name: places * w / total for name, w in self.samplers.items()}
        counts = {name: int(x) for name, x in exact.items()}
        by_remainder = sorted(exact, key=lambda n: -(exact[n] - counts[n]))
        for name in by_remainder[: places - sum(counts.values())]:
            counts[name] += 1
        return [(name, counts[name]) for name in self.samplers if counts[name]]


@dataclass(frozen=True)
class Slate:
    items: list[str]  # item ids in the order the prompt shows them
    popular_rank: int  # the target's rank by training popularity among the candidates (1 = most popular; ties in shown order)


@dataclass(frozen=True)
class SlateBatch:
    """The slates of a batch of samples, in sample order; ``batch[i]`` is sample i's :class:`Slate`."""

    items: list[list[str]]  # per sample, the item ids in shown order
    popular_rank: list[int]
    rows: np.ndarray  # (samples x size) the candidates' rows in the catalog: what per-item text is picked by

    def __getitem__(self, i: int) -> Slate:
        return Slate(self.items[i], self.popular_rank[i])


class SlateSampler:
    """Draws slates for one job from the catalog (items with a SID) and the training samples.

    Slates are drawn a batch at a time with numpy: each sampler proposes a few times its places per
    sample, a proposal counts when it is not the target, not in the history and not proposed before
    in that row, and each sampler keeps its first valid ones up to its places plus what earlier
    samplers could not fill. The random numbers of a sample come from a hash of the seed and its id
    (splitmix64), so a sample gets the same slate in any batch, shard or rerun.
    """

    def __init__(self, config: SlateConfig, catalog: Catalog, train: pl.LazyFrame, work: Path | None = None,
                 max_history: int = 10) -> None:
        self.config = config
        self.max_history = max_history  # sizes each sampler's proposals: a sample's random numbers never depend on its batch
        self._quotas = [*config.quotas(), ("uniform", 0)]  # uniform last: it takes what the others could not fill
        with_sid = catalog.items["sid"].is_not_null()
        items = catalog.items.filter(with_sid).select("item_id", "sid")
        if items.height < config.size:
            raise DataError("slate", f"size = {config.size} but the catalog has {items.height} items with a SID",
                            "lower slate.size")
        self.ids = np.array(items["item_id"].to_list(), dtype=object)
        self._catalog_row = np.flatnonzero(with_sid.to_numpy())  # sampler index -> catalog row
        self.index = {item_id: i for i, item_id in enumerate(items["item_id"].to_list())}
        index = pl.DataFrame({"item_id": items["item_id"], "i": np.arange(items.height)})
        train = train.select("history", "target").collect().lazy()  # the split is windowed once for both tables
        counts = train.group_by("target").agg(n=pl.len()).collect().join(index, left_on="target", right_on="item_id")
        self.popularity = np.zeros(items.height, dtype=np.int64)
        self.popularity[counts["i"].to_numpy()] = counts["n"].to_numpy()
        self._cumulative = np.cumsum(self.popularity + 1)  # +1: never-bought items stay drawable
        # items that share a SID (a collision the SID build left) are one candidate to a teacher that answers in SIDs:
        # a slate holds at most one of them, and none beside a target or history item of that SID
        self._same_sid = catalog.sid_text().filter(with_sid).rank("dense").to_numpy().astype(np.int64) - 1
        places = dict(self._quotas)  # a ranked pool is read up to its sampler's places x _HARD_POOL: keep no more
        if "prefix" in config.samplers:
            prefixes = items.select(pl.col("sid").list.head(config.prefix_levels)).to_series()
            group = prefixes.rank("dense").to_numpy().astype(np.int64) - 1
            self._by_group = np.argsort(group, kind="stable")  # item indices, grouped
            sizes = np.bincount(group)
            self._group, self._group_start, self._group_size = group, np.cumsum(sizes) - sizes, sizes
        if "cooccurrence" in config.samplers:
            self._follow_ptr, self._follow = self._cooccurrence_table(train, index, max(1, places.get("cooccurrence", 0) * _HARD_POOL))
        if "embedding" in config.samplers:
            vectors, keep = self._embeddings(catalog, work), max(1, places.get("embedding", 0) * _HARD_POOL)
            self._neighbours = _cached(work, lambda: f"item-neighbours-{_digest(np.ascontiguousarray(vectors, dtype=np.float32).data)}-{keep}",
                                       lambda: _neighbours(vectors, keep))

    def draw(self, subject_id: str, history: list[str], target: str) -> Slate:
        """The slate of one sample (see :meth:`draw_batch`)."""
        return self.draw_batch([subject_id], [history], [target])[0]

    def draw_batch(self, subject_ids: list[str], histories: list[list[str]], targets: list[str]) -> SlateBatch:
        """One slate per sample: reproducible from the job's seed and each ``subject_id``."""
        size = self.config.size
        keys = np.array([int.from_bytes(hashlib.blake2b(f"{self.config.seed}|{s}".encode(), digest_size=8).digest(), "little")
                         for s in subject_ids], dtype=np.uint64)
        t = self._indices(targets)
        if (t < 0).any():
            raise DataError(subject_ids[int(np.argmax(t < 0))], "the sample's next item has no SID, so it cannot be a candidate",
                            "build SIDs for every item")
        history, lengths = self._recent_first(histories)
        spare = max(self.max_history, history.shape[1])  # room for proposals that fall on the history
        counts = [(places + size) * 2 + spare if name == "uniform" else places * 3 + spare + 2 for name, places in self._quotas]
        # the samplers but uniform first, for every row; uniform (last) fills only rows they left short, so it is
        # drawn for those rows alone: a row's proposals and picks are the same either way
        negatives = np.empty((len(t), size - 1), dtype=np.int64)
        candidates, chosen, owed = self._choose(t, history, lengths, keys, counts[:-1])
        full = owed == 0
        negatives[full] = candidates[full][chosen[full]].reshape(-1, size - 1)
        if not full.all():
            short = np.flatnonzero(~full)
            candidates, chosen, owed = self._choose(t[short], history[short], lengths[short], keys[short], counts)
            if owed.any():
                self._fill(candidates, chosen, owed, t[short], history[short], keys[short])
            negatives[short] = candidates[chosen].reshape(-1, size - 1)
        offset = sum(counts)
        slates = np.concatenate([negatives, t[:, None]], axis=1)
        order = np.argsort(_uniforms(keys, offset, size), axis=1)
        slates = np.take_along_axis(slates, order, axis=1)
        return SlateBatch(self.ids[slates].tolist(), self._popular_rank(slates, t), self._catalog_row[slates])

    def _indices(self, item_ids: Iterable[str], count: int = -1) -> np.ndarray:
        """The items' indices in the sampler, -1 for an item without a SID."""
        return np.fromiter(map(self.index.get, item_ids, repeat(-1)), dtype=np.int64, count=count)

    def _recent_first(self, histories: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The histories' items that have a SID, most recent first, one row per history, -1 padded to the longest;
        and how many each row holds."""
        sizes = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
        flat = self._indices(chain.from_iterable(histories), int(sizes.sum()))
        grid = np.full((len(histories), max(1, int(sizes.max(initial=0)))), -1, dtype=np.int64)
        grid[np.repeat(np.arange(len(histories)), sizes), np.repeat(np.cumsum(sizes), sizes) - 1 - np.arange(len(flat))] = flat
        grid = np.take_along_axis(grid, np.argsort(grid < 0, axis=1, kind="stable"), axis=1)  # items without a SID leave no gap
        lengths = (grid >= 0).sum(axis=1)
        return grid[:, : max(1, int(lengths.max(initial=0)))], lengths

    def _choose(self, t: np.ndarray, history: np.ndarray, lengths: np.ndarray, keys: np.ndarray,
                counts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first ``len(counts)`` samplers' proposals (``counts`` uniforms each, in order along each row's stream),
        which of them each row takes, and how many places each row still lacks. A proposal is valid when it is not the
        target, not in the history and not proposed earlier in its row; a sampler takes its first valid ones, up to its
        places plus what earlier samplers could not fill."""
        proposals, offset = [], 0
        for (name, places), count in zip(self._quotas, counts):
            proposals.append(getattr(self, "_" + name)(t, history, lengths, _uniforms(keys, offset, count), places))
            offset += count
        candidates = np.concatenate(proposals, axis=1)
        seen = 1 + history.shape[1]  # the target and the history stand before the proposals: repeating them is invalid
        row = np.concatenate([t[:, None], history, candidates], axis=1)
        valid = (candidates >= 0) & ~_repeats(np.where(row >= 0, self._same_sid[np.maximum(row, 0)], -1))[:, seen:]
        chosen, owed, start = [], np.zeros(len(t), dtype=np.int64), 0
        for (_, places), block in zip(self._quotas, proposals):
            ok = valid[:, start:start + block.shape[1]]
            want = places + owed
            taken = ok & (np.cumsum(ok, axis=1) <= want[:, None])
            chosen.append(taken)
            owed = want - taken.sum(axis=1)
            start += block.shape[1]
        return candidates, np.concatenate(chosen, axis=1), owed

    def _popular_rank(self, slates: np.ndarray, t: np.ndarray) -> list[int]:
        pop, target_pop = self.popularity[slates], self.popularity[t][:, None]
        shown_before = np.arange(slates.shape[1])[None, :] < np.argmax(slates == t[:, None], axis=1)[:, None]
        return (1 + (pop > target_pop).sum(axis=1) + ((pop == target_pop) & shown_before).sum(axis=1)).tolist()

    def _fill(self, candidates: np.ndarray, chosen: np.ndarray, owed: np.ndarray, t: np.ndarray, history: np.ndarray,
              keys: np.ndarray) -> None:
        """Rows the samplers left short (a small catalog): the rest from a seeded permutation of every item,
        written over unused proposal cells of the row."""
        for row in np.flatnonzero(owed):
            taken = [*candidates[row, chosen[row]].tolist(), int(t[row]), *(i for i in history[row].tolist() if i >= 0)]
            used = {int(self._same_sid[i]) for i in taken}
            extra: list[int] = []
            for i in np.argsort(_uniforms(keys[row:row + 1], 1 << 20, len(self.ids))[0]).tolist():
                if len(extra) == owed[row]:
                    break
                if (sid := int(self._same_sid[i])) not in used:
                    used.add(sid)
                    extra.append(i)
            if len(extra) < owed[row]:
                raise DataError("slate", f"only {self.config.size - 1 - owed[row] + len(extra)} negatives could be drawn "
                                f"for a slate of {self.config.size}", "lower slate.size")
            free = np.flatnonzero(~chosen[row])[: len(extra)]
            candidates[row, free], chosen[row, free] = extra, True

    def _popularity(self, t: np.ndarray, history: np.ndarray, lengths: np.ndarray, u: np.ndarray, places: int) -> np.ndarray:
        return np.searchsorted(self._cumulative, u * self._cumulative[-1], side="right")

    def _uniform(self, t: np.ndarray, history: np.ndarray, lengths: np.ndarray, u: np.ndarray, places: int) -> np.ndarray:
        return (u * len(self.ids)).astype(np.int64)

    def _prefix(self, t: np.ndarray, history: np.ndarray, lengths: np.ndarray, u: np.ndarray, places: int) -> np.ndarray:
        group = self._group[t][:, None]
        return self._by_group[self._group_start[group] + (u * self._group_size[group]).astype(np.int64)]

    def _embedding(self, t: np.ndarray, history: np.ndarray, lengths: np.ndarray, u: np.ndarray, places: int) -> np.ndarray:
        pool = min(places * _HARD_POOL, self._neighbours.shape[1])
        return self._neighbours[t[:, None], (u * pool).astype(np.int64)]

    def _cooccurrence(self, t: np.ndarray, history: np.ndarray, lengths: np.ndarray, u: np.ndarray, places: int) -> np.ndarray:
        """The j-th proposal follows the (j mod length)-th most recent history item: one of the ``places x
        _HARD_POOL`` items that most often came next after it in training; -1 where there is none."""
        column = np.arange(u.shape[1])[None, :] % np.maximum(lengths, 1)[:, None]
        source = np.take_along_axis(history, column, axis=1)
        start = self._follow_ptr[np.maximum(source, 0)]
        degree = np.where(source >= 0, self._follow_ptr[np.maximum(source, 0) + 1] - start, 0)
        if not len(self._follow):
            return np.full(u.shape, -1, dtype=np.int64)
        pick = (u * np.minimum(degree, places * _HARD_POOL)).astype(np.int64)
        return np.where(degree > 0, self._follow[np.minimum(start + pick, len(self._follow) - 1)], -1)

    @staticmethod
    def _cooccurrence_table(train: pl.LazyFrame, index: pl.DataFrame, keep: int) -> tuple[np.ndarray, np.ndarray]:
        """Per item, the items that followed it in training samples, most often first (at most ``keep``), as CSR."""
        pairs = (
            train.select(h="history", t="target").explode("h")
            .group_by("h", "t").agg(n=pl.len()).filter(pl.col("h") != pl.col("t"))
            .join(index.lazy().rename({"item_id": "h", "i": "hi"}), on="h")
            .join(index.lazy().rename({"item_id": "t", "i": "ti"}), on="t")
            .sort("hi", "n", "ti", descending=[False, True, False])
            .group_by("hi", maintain_order=True).head(keep)
            .collect()
        )
        ptr = np.zeros(index.height + 1, dtype=np.int64)
        np.add.at(ptr, pairs["hi"].to_numpy() + 1, 1)
        return np.cumsum(ptr), pairs["ti"].to_numpy().astype(np.int64)

    def _embeddings(self, catalog: Catalog, work: Path | None) -> np.ndarray:
        """Rows for the items with a SID: from ``config.embeddings``, else MiniLM over the catalog text (cached in ``work``)."""
        from recot.data.embeddings import embed_texts, load_embeddings

        with_sid = catalog.items["sid"].is_not_null().to_numpy()
        if self.config.embeddings:
            return load_embeddings(self.config.embeddings, catalog.items["item_id"])[with_sid]
        texts = catalog.text().to_list()
        return _cached(work, lambda: "item-embeddings-" + _digest("\n".join(catalog.items["item_id"].to_list() + texts).encode()),
                       lambda: embed_texts(texts))[with_sid]


def _cached(work: Path | None, name: Callable[[], str], build: Callable[[], np.ndarray]) -> np.ndarray:
    """``build()``, saved as ``work/{name()}.npy`` and read from there on the job's reruns (written under a temporary
    name first: a killed job leaves no half-written table). ``name`` hashes the inputs, so it runs only with a work folder."""
    if work is None:
        return build()
    path = work / f"{name()}.npy"
    if path.exists():
        return np.load(path)
    array = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with partial.open("wb") as handle:
        np.save(handle, array)
    partial.replace(path)
    return array


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _uniforms(keys: np.ndarray, offset: int, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) per key, numbers ``offset ..`` of its splitmix64 stream: they depend on
    the key alone, never on the batch or shard the sample falls in."""
    z = keys[:, None] + (np.arange(offset + 1, offset + count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))[None, :]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _repeats(values: np.ndarray) -> np.ndarray:
    """True where a row repeats a value that stands earlier in that row (values >= -1, rows sorted once: each cell's
    value and column are packed in one integer, so equal values sort by column)."""
    width = values.shape[1]
    ranked = np.sort(values * width + np.arange(width), axis=1)
    rows, at = np.nonzero(ranked[:, 1:] // width == ranked[:, :-1] // width)
    out = np.zeros(values.shape, dtype=bool)
    out[rows, ranked[rows, at + 1] % width] = True
    return out


def _neighbours(vectors: np.ndarray, keep: int, chunk: int = 512) -> np.ndarray:
    """Each item's ``keep`` nearest other items by cosine similarity, nearest first (rows in chunks of 512: the fastest here)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    keep = min(keep, len(unit) - 1)
    out = np.empty((len(unit), keep), dtype=np.int64)
    for start in range(0, len(unit), chunk):
        scores = unit[start:start + chunk] @ unit.T
        rows = np.arange(scores.shape[0])
        scores[rows, rows + start] = -np.inf
        top = np.argpartition(scores, -keep, axis=1)[:, -keep:]  # (selecting the largest is ~5x faster than the smallest of -scores)
        order = np.argsort(-scores[rows[:, None], top], axis=1, kind="stable")
        out[start:start + chunk] = top[rows[:, None], order]
    return out
