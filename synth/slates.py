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
grow with the catalog, not with the number of samples; each slate is drawn from a generator seeded
by the job's seed and the sample's id, so a rerun (or another shard) draws the same slate.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recot.synth.catalog import Catalog
from recot.synth.errors import DataError

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


class SlateSampler:
    """Draws slates for one job from the catalog (items with a SID) and the training samples."""

    def __init__(self, config: SlateConfig, catalog: Catalog, train: pl.LazyFrame, work: Path | None = None) -> None:
        self.config = config
        items = catalog.items.filter(pl.col("sid").is_not_null()).select("item_id", "sid")
        if items.height < config.size:
            raise DataError("slate", f"size = {config.size} but the catalog has {items.height} items with a SID",
                            "lower slate.size")
        self.ids: list[str] = items["item_id"].to_list()
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}
        counts = train.group_by("target").agg(n=pl.len()).collect()
        self.popularity = [0] * len(self.ids)
        for item_id, n in counts.iter_rows():
            if item_id in self.index:
                self.popularity[self.index[item_id]] = n
        self._cumulative = list(accumulate(n + 1 for n in self.popularity))  # +1: never-bought items stay drawable
        self._pools: dict[str, Any] = {"popularity": self._by_popularity, "uniform": self._uniform}
        if "prefix" in config.samplers:
            self._groups: dict[tuple, list[int]] = {}
            for i, sid in enumerate(items["sid"].to_list()):
                self._groups.setdefault(tuple(sid[: config.prefix_levels]), []).append(i)
            self._prefix_of = [tuple(sid[: config.prefix_levels]) for sid in items["sid"].to_list()]
            self._pools["prefix"] = self._same_prefix
        if "cooccurrence" in config.samplers:
            self._followers = self._cooccurrence(train, config.size * _HARD_POOL)
            self._pools["cooccurrence"] = self._co_occurring
        if "embedding" in config.samplers:
            self._neighbours = _neighbours(self._embeddings(catalog, work), config.size * _HARD_POOL)
            self._pools["embedding"] = self._nearest

    def draw(self, subject_id: str, history: list[str], target: str) -> Slate:
        """The slate of one sample: reproducible from the job's seed and ``subject_id``."""
        rng = random.Random(f"{self.config.seed}|{subject_id}")
        t = self.index[target]
        taken = {t} | {self.index[h] for h in history if h in self.index}
        history_index = [self.index[h] for h in reversed(history) if h in self.index]
        chosen: list[int] = []
        owed = 0
        for name, count in [*self.config.quotas(), ("uniform", 0)]:
            want = count + owed
            got = self._take(self._pools[name](t, history_index, rng, want), want, taken) if want else []
            chosen += got
            owed = want - len(got)
        if owed:
            raise DataError(subject_id, f"only {len(chosen)} negatives could be drawn for a slate of {self.config.size}",
                            "lower slate.size")
        slate = [*chosen, t]
        rng.shuffle(slate)
        shown_first = slate.index(t)
        rank = 1 + sum(self.popularity[i] > self.popularity[t] or (self.popularity[i] == self.popularity[t] and k < shown_first)
                       for k, i in enumerate(slate) if i != t)
        return Slate([self.ids[i] for i in slate], rank)

    @staticmethod
    def _take(candidates: list[int], want: int, taken: set[int]) -> list[int]:
        got = []
        for i in candidates:
            if i not in taken:
                taken.add(i)
                got.append(i)
                if len(got) == want:
                    break
        return got

    def _by_popularity(self, t: int, history: list[int], rng: random.Random, want: int) -> list[int]:
        total = self._cumulative[-1]
        return [bisect_right(self._cumulative, rng.random() * total) for _ in range(want * 3 + len(history) + 1)]

    def _uniform(self, t: int, history: list[int], rng: random.Random, want: int) -> list[int]:
        if want * 4 + len(history) >= len(self.ids):
            return rng.sample(range(len(self.ids)), len(self.ids))
        return [rng.randrange(len(self.ids)) for _ in range(want * 3 + len(history) + 1)]

    def _same_prefix(self, t: int, history: list[int], rng: random.Random, want: int) -> list[int]:
        group = self._groups[self._prefix_of[t]]
        return rng.sample(group, min(len(group), want + len(history) + 1))

    def _co_occurring(self, t: int, history: list[int], rng: random.Random, want: int) -> list[int]:
        pool = list(dict.fromkeys(i for h in history for i in self._followers.get(h, ())))
        return _hard(pool, want, rng)

    def _nearest(self, t: int, history: list[int], rng: random.Random, want: int) -> list[int]:
        return _hard(self._neighbours[t].tolist(), want, rng)

    def _cooccurrence(self, train: pl.LazyFrame, keep: int) -> dict[int, list[int]]:
        """Per history item, the items that followed it in training samples, most often first (at most ``keep``)."""
        index = pl.DataFrame({"item_id": self.ids, "i": range(len(self.ids))})
        pairs = (
            train.select(h="history", t="target").explode("h")
            .group_by("h", "t").agg(n=pl.len()).filter(pl.col("h") != pl.col("t"))
            .join(index.lazy().rename({"item_id": "h", "i": "hi"}), on="h")
            .join(index.lazy().rename({"item_id": "t", "i": "ti"}), on="t")
            .sort("hi", "n", "ti", descending=[False, True, False])
            .group_by("hi", maintain_order=True).agg(pl.col("ti").head(keep))
            .collect()
        )
        return dict(zip(pairs["hi"].to_list(), pairs["ti"].to_list()))

    def _embeddings(self, catalog: Catalog, work: Path | None) -> np.ndarray:
        """Rows for the items with a SID: from ``config.embeddings``, else MiniLM over the catalog text (cached in ``work``)."""
        from recot.synth.embeddings import embed_texts, load_embeddings

        with_sid = catalog.items["sid"].is_not_null().to_numpy()
        if self.config.embeddings:
            return load_embeddings(self.config.embeddings, catalog.items["item_id"])[with_sid]
        texts = catalog.text().to_list()
        digest = hashlib.sha256("\n".join(catalog.items["item_id"].to_list() + texts).encode()).hexdigest()[:16]
        cached = work / f"item-embeddings-{digest}.npy" if work else None
        if cached and cached.exists():
            return np.load(cached)[with_sid]
        vectors = embed_texts(texts)
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, vectors)
        return vectors[with_sid]


def _hard(pool: list[int], want: int, rng: random.Random) -> list[int]:
    """A random draw from the best ``want x _HARD_POOL`` of a ranked pool (hard, but not the same every time)."""
    head = pool[: want * _HARD_POOL]
    return rng.sample(head, len(head))


def _neighbours(vectors: np.ndarray, keep: int, chunk: int = 2048) -> np.ndarray:
    """Each item's ``keep`` nearest other items by cosine similarity, nearest first (rows in chunks)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    keep = min(keep, len(unit) - 1)
    out = np.empty((len(unit), keep), dtype=np.int64)
    for start in range(0, len(unit), chunk):
        scores = unit[start:start + chunk] @ unit.T
        rows = np.arange(scores.shape[0])
        scores[rows, rows + start] = -np.inf
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        order = np.argsort(-scores[rows[:, None], top], axis=1, kind="stable")
        out[start:start + chunk] = top[rows[:, None], order]
    return out
