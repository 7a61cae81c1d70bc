"""What training and evaluation read from a recot export, the hand-off between curation and the trainer.

An export folder holds every training format, and beside them what the trainer must never re-derive:
``catalog.parquet`` (SIDs and titles: the vocabulary and the trie), ``split.json`` (the split synthesis chose),
``tasks.json`` and ``next_item/PART.parquet`` (every part's next-item rows in the student's prompt: evaluation,
baselines). The trainer reads these instead of reopening the dataset.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recot.curation.next_item import NEXT_ITEM
from recot.data.catalog import CATALOG_FILE, Catalog
from recot.errors import DataError
from recot.formats.splits import SPLIT_FILE, SplitSpec


def load_export(path: str | Path, name: str):
    """The ``train`` (and ``validation``, when present) splits of format ``name`` of a recot export, as a
    ``datasets.DatasetDict`` read from exactly the files that export wrote.

    ``datasets.load_dataset(folder, name=...)`` caches by folder name, so a second export into the
    same folder (or one of the same name elsewhere) could be served the earlier rows; reading the
    parquet files into memory leaves no cache to go stale."""
    import datasets
    import pyarrow.parquet as pq

    folder = Path(path) / name
    # train-<content hash>.parquet (train.parquet from an export of recot before content-named files)
    files = {part: found[0] for part in ("train", "validation")
             if (found := sorted(folder.glob(f"{part}-*.parquet")) or sorted(folder.glob(f"{part}.parquet")))}
    if "train" not in files:
        raise DataError(folder, f"no {name}/train-*.parquet here",
                        f"point at a folder written by `recot export` with the {name!r} format (and training rows)")
    return datasets.DatasetDict({part: datasets.Dataset(pq.read_table(file)) for part, file in files.items()})


def as_prompt_completion(dataset):
    """Conversational ``messages`` rows as TRL prompt/completion rows (the last message is the completion), so that the
    loss falls on the answer alone under any chat template: TRL's assistant-only loss on ``messages`` needs
    ``{% generation %}`` markers, which most models' own templates lack. Other rows are returned as they are."""
    if "messages" not in dataset.column_names:
        return dataset
    return dataset.map(lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}, remove_columns=["messages"])


def check_template(tokenizer, row: dict, model: str | Path) -> None:
    """Raise unless the model's chat template renders a conversational prompt/completion ``row`` as the prompt evaluation
    renders (the generation prompt) followed by the completion's text unchanged: a template that drops or moves the
    think block (some strip ``<think>`` from assistant turns) would train on text the model is never asked for."""
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    if not text.startswith(prompt) or row["completion"][0]["content"] not in text[len(prompt):]:
        raise DataError(model, "its chat template does not render a training row as the prompt evaluation sends followed by "
                        "the completion unchanged (the think block is dropped or moved)",
                        "give the tokenizer a chat template that keeps assistant content as written (tokenizer.chat_template)")


def export_catalog(path: str | Path) -> Catalog:
    """The catalog an export carries (``catalog.parquet``, or that file itself): the SIDs a model must speak."""
    file = Path(path)
    file = file / CATALOG_FILE if file.is_dir() else file
    if not file.exists():
        raise DataError(file, "no catalog here", "point at a folder written by `recot export` (it writes catalog.parquet)")
    return Catalog.from_sid_text(pl.read_parquet(file))


def export_split(path: str | Path) -> SplitSpec:
    """The split an export's rows were made on (its ``split.json``)."""
    return SplitSpec.load(Path(path) / SPLIT_FILE)


def export_rows(path: str | Path, part: str) -> pl.DataFrame:
    """An export's next-item rows of ``part`` (train, valid, test): ``prompt``, ``think_prompt``, ``target_sid``,
    ``history_sids``, ``user_id``, ``target``, ``history``."""
    file = Path(path) / NEXT_ITEM / f"{part}.parquet"
    if not file.exists():
        raise DataError(file, "the export holds no next-item rows",
                        "export with the dataset set (`recot export --dataset PATH`): it writes every part's rows for evaluation")
    return pl.read_parquet(file)
