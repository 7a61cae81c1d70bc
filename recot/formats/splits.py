"""Leakage-safe splits. A split carries its cut-offs so later stages can refuse future information.

Every sample is (history, target) where the history holds only events strictly before the target
in the user's order. The split also defines, per user, a *training cut-off*: the time of the first
event held out for validation or test. Nothing at or after it may appear in training material.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from recot.errors import DataError

PARTS = ("train", "valid", "test")
SPLIT_FILE = "split.json"  # written by synthesis next to traces.parquet, recorded by ingest, read by export and eval


class SplitSpec(BaseModel):
    """The split a job used: decided once by synthesis, written as ``split.json`` next to its output,
    recorded in the curation store at ingest, and read (never re-chosen) by export, judge and evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["leave_last_out", "temporal"]
    max_history: int
    valid_start: int | None = None
    test_start: int | None = None

    @classmethod
    def choose(cls, boundaries: dict[str, int], kind: str, max_history: int, where: str = "the dataset") -> SplitSpec:
        """The split a config names; ``auto`` is temporal when the dataset has boundaries."""
        has_bounds = {"valid_start", "test_start"} <= boundaries.keys()
        if kind == "temporal" or (kind == "auto" and has_bounds):
            if not has_bounds:
                raise DataError(where, "a temporal split needs valid_start and test_start",
                                "set them in the dataset config, or use split = 'leave_last_out'")
            return cls(kind="temporal", max_history=max_history, valid_start=boundaries["valid_start"],
                       test_start=boundaries["test_start"])
        return cls(kind="leave_last_out", max_history=max_history)

    def build(self, seqs: pl.LazyFrame) -> Split:
        """The samples and cut-offs of this split over a dataset's sequences."""
        if self.kind == "temporal":
            assert self.valid_start is not None and self.test_start is not None  # choose() sets both for a temporal split
            return temporal(seqs, self.valid_start, self.test_start, self.max_history)
        return leave_last_out(seqs, self.max_history)

    def save(self, folder: Path) -> Path:
        path = folder / SPLIT_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> SplitSpec:
        """A split from ``split.json`` (or the synthesis output folder holding it)."""
        path = path / SPLIT_FILE if path.is_dir() else path
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(path, "no split file here", "point at the split.json a synthesis job wrote next to traces.parquet") from None
        except ValueError as exc:
            raise DataError(path, f"not a recot split file ({exc})", "use the split.json a synthesis job wrote") from None


@dataclass(frozen=True)
class Split:
    """Samples (``user_id``, ``part``, ``history``, ``history_ts``, ``target``, ``target_ts``) and cut-offs.

    ``cutoff`` is the global training cut-off for temporal splits (None for leave-last-out, where
    each user has their own: see :meth:`cutoffs`).
    """

    kind: Literal["leave_last_out", "temporal"]
    samples: pl.LazyFrame
    max_history: int
    cutoff: int | None = None

    def part(self, name: str) -> pl.LazyFrame:
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}; choose one of {PARTS}")
        return self.samples.filter(pl.col("part") == name)

    def cutoffs(self) -> pl.LazyFrame:
        """Per user, the earliest time training material must not reach (``cutoff_ts``, null: none held out)."""
        held_out = self.samples.filter(pl.col("part") != "train").group_by("user_id").agg(cutoff_ts=pl.col("target_ts").min())
        users = self.samples.select("user_id").unique()
        joined = users.join(held_out, on="user_id", how="left")
        if self.cutoff is not None:
            joined = joined.with_columns(cutoff_ts=pl.min_horizontal(pl.col("cutoff_ts"), pl.lit(self.cutoff)))
        return joined.sort("user_id")

    def future_events(self, events: pl.LazyFrame) -> pl.LazyFrame:
        """Rows of ``events`` (``user_id``, ``ts``) at or after their user's cut-off: leaks into training material."""
        return events.join(self.cutoffs(), on="user_id", how="left").filter(
            pl.col("cutoff_ts").is_not_null() & (pl.col("ts") >= pl.col("cutoff_ts"))
        )


def _windows(seqs: pl.LazyFrame, max_history: int) -> pl.LazyFrame:
    """Every (history of at most ``max_history`` events, target) pair with a non-empty history."""
    start = pl.max_horizontal(pl.col("p") - max_history, pl.lit(0))
    return (
        seqs.with_columns(p=pl.int_ranges(1, pl.col("length")))
        .explode("p")
        .filter(pl.col("p").is_not_null())
        .select(
            "user_id", "p", "length",
            history=pl.col("items").list.slice(start, pl.col("p") - start),
            history_ts=pl.col("ts").list.slice(start, pl.col("p") - start),
            target=pl.col("items").list.get(pl.col("p")),
            target_ts=pl.col("ts").list.get(pl.col("p")),
        )
    )


def leave_last_out(seqs: pl.LazyFrame, max_history: int = 10) -> Split:
    """Each user's last event is test, the one before it valid, the rest train."""
    samples = _windows(seqs, max_history).with_columns(
        part=pl.when(pl.col("p") == pl.col("length") - 1).then(pl.lit("test"))
        .when(pl.col("p") == pl.col("length") - 2).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    return Split("leave_last_out", samples.drop("p", "length"), max_history)


def temporal(seqs: pl.LazyFrame, valid_start: int, test_start: int, max_history: int = 10) -> Split:
    """Targets before ``valid_start`` train, before ``test_start`` valid, the rest test (one global clock)."""
    if valid_start > test_start:
        raise ValueError(f"valid_start ({valid_start}) must not come after test_start ({test_start})")
    samples = _windows(seqs, max_history).with_columns(
        part=pl.when(pl.col("target_ts") < valid_start).then(pl.lit("train"))
        .when(pl.col("target_ts") < test_start).then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    return Split("temporal", samples.drop("p", "length"), max_history, cutoff=valid_start)
