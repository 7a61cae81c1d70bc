"""One way to load a model and its tokenizer, for every stage that reads a checkpoint (SFT, GRPO, the recipe, the grid's
probe, evaluation, the usefulness scorer).

- ``path`` is a model folder, a hub id, or a model source's name (``smollm2-135m-instruct``: built on first use).
- Weights load in float32 whatever the stage: they are the master copy an optimiser updates (AdamW's small steps vanish
  in bfloat16), and mixed precision comes from the trainer's ``bf16`` autocast, not from the stored dtype.
- The tokenizer is the checkpoint's own, chat template included: every stage renders the same text.
- Against an export's catalog, a checkpoint that holds some of the catalog's SID tokens but not all of them was trained
  on another catalog: that is a named error (the model and the export both named), not a silent mix of token ids. A
  checkpoint with none of them is a base model; SFT adds the vocabulary (``recot.trainer.sid_vocab``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from recot.errors import DataError
from recot.models import resolve

if TYPE_CHECKING:
    from recot.data.catalog import Catalog


def load_tokenizer(path: str | Path, catalog: Catalog | None = None, catalog_source: str | Path | None = None) -> Any:
    """The checkpoint's tokenizer; with ``catalog``, checked against it (:func:`check_vocabulary`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(path))
    if catalog is not None:
        check_vocabulary(tokenizer, catalog, path, catalog_source)
    return tokenizer


def load_model(path: str | Path) -> Any:
    """The checkpoint's causal LM, in float32 (see above)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve(path), dtype=torch.float32)


def check_vocabulary(tokenizer: Any, catalog: Catalog, model: str | Path, catalog_source: str | Path | None = None) -> None:
    """Raise when the tokenizer knows some of the catalog's SID tokens but not all: the checkpoint was trained on another
    catalog (another codebook size, another dialect)."""
    wanted = catalog.dialect.tokens(catalog.codebook_sizes)
    known = tokenizer.get_vocab()
    missing = [token for token in wanted if token not in known]
    if missing and len(missing) < len(wanted):
        raise DataError(model, f"the model knows {len(wanted) - len(missing)} of the {len(wanted)} SID tokens of the catalog of "
                        f"{catalog_source or 'the export'} but lacks {len(missing)} (e.g. {', '.join(missing[:3])}): it was "
                        "trained on another catalog", "use a checkpoint trained on this export, or the export it was trained on")
