"""Itemic alignment and item-text pre-training on TRL's SFTTrainer, from the export's ``align`` format.

:class:`RecAlignConfig` is :class:`RecSFTConfig` on the align rows (all five kinds by default, see
:mod:`recot.formats.align`): the SID vocabulary is added and initialised from titles as for SFT, training
stops on the held-out items' validation loss, and the perception probe (:mod:`recot.trainer.probe`) is
written next to the checkpoint as ``probe.json``. :class:`RecPretrainConfig` is the same trainer on the
``item_text`` rows alone, without SIDs and without a probe: plain causal LM on the catalog's language, a
stand-in for a pretrained LLM where none can be had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from recot.errors import DataError
from recot.formats.align import KINDS
from recot.trainer.sft import RecSFTConfig, RecSFTTrainer, train_sft


@dataclass
class RecAlignConfig(RecSFTConfig):
    dataset_config: str | None = field(default="align", metadata={"help": "the export's format to train on"})
    kinds: list[str] | None = field(default=None, metadata={"help": f"align row kinds trained on, of {', '.join(KINDS)} "
                                                                     "(default: all)"})
    probe_items: int = field(default=200, metadata={"help": "items per role (trained, held out) the perception probe "
                                                            "asks about after training (0: no probe)"})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds or ()) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown align kinds {unknown}; choose from {list(KINDS)}")
        if self.sid_catalog is None and set(self.kinds or KINDS) - {"item_text"}:
            self.sid_catalog = self.dataset_path  # rows that name SIDs: the export's catalog joins the vocabulary
        super().__post_init__()


@dataclass
class RecPretrainConfig(RecAlignConfig):
    kinds: list[str] | None = field(default_factory=lambda: ["item_text"], metadata={"help": "align row kinds trained on"})
    sid_catalog: str | None = field(default=None, metadata={"help": "SIDs to add (none: pre-training learns the language)"})
    probe_items: int = field(default=0, metadata={"help": "items per role the perception probe asks about (needs SIDs)"})


def align_splits(config: RecAlignConfig):
    """The export's align ``train`` and ``validation`` rows of ``config.kinds``, as prompt/completion datasets."""
    from recot.trainer.data import load_export

    loaded = load_export(config.dataset_path, config.dataset_config or "align")
    kinds = set(config.kinds or KINDS)
    chosen = {part: rows.filter(lambda kind: kind in kinds, input_columns="kind").select_columns(["prompt", "completion"])
              for part, rows in loaded.items()}
    if not len(chosen["train"]):
        raise DataError(config.dataset_path, f"the align format has no training rows of kinds {sorted(kinds)}",
                        "export with the dataset set (and R1 traces for relations), or choose other kinds")
    validation = chosen.get("validation")
    return chosen["train"], validation if validation is not None and len(validation) else None


def train_align(config: RecAlignConfig) -> RecSFTTrainer:
    """Train on the align rows (see :func:`train_sft`), then write the perception probe to ``output_dir/probe.json``."""
    from recot.trainer.probe import PROBE_FILE, perception_probe

    train, validation = align_splits(config)
    trainer = train_sft(config, train, validation)
    if config.probe_items and trainer.is_world_process_zero():
        report = perception_probe(trainer.model, trainer.processing_class, config.dataset_path, config.probe_items)
        (Path(str(config.output_dir)) / PROBE_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return trainer
