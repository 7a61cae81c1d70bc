"""Give any causal LM a SID vocabulary: one ordinary token per (level, code) plus begin/end markers.

SID tokens are added with ``special_tokens=False``: TRL decodes completions with
``skip_special_tokens=True`` and must keep them. A new token starts from the mean input embedding
of the title tokens of the items whose SID contains it (markers: the mean over all items), so that
``<a_12>`` starts near what the items of cluster 12 are about instead of at random; the output
rows follow when the head is not tied. :func:`freeze_for_warmup` then lets a first stage train
only those rows with the backbone frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl
import torch

from recot.formats.cot import THINK_CLOSE, THINK_OPEN

if TYPE_CHECKING:
    from recot.data.catalog import Catalog

THINK_MARKERS = (THINK_OPEN, THINK_CLOSE)


def sid_vocabulary(catalog: Catalog) -> list[str]:
    """Every SID token of the catalog's shape (and its dialect's markers), then the think markers."""
    return [*catalog.dialect.tokens(catalog.codebook_sizes), *THINK_MARKERS]


def add_sid_vocabulary(model, tokenizer, catalog: Catalog, batch_size: int = 512) -> list[int]:
    """Add the SID tokens to ``tokenizer`` and ``model`` and initialise the new ones from item titles
    (tokens already known keep their embedding). Returns the ids of the whole SID vocabulary."""
    vocabulary = sid_vocabulary(catalog)
    known = tokenizer.get_vocab()
    tokens = [t for t in vocabulary if t not in known]
    old_size = len(tokenizer)
    tokenizer.add_tokens(tokens, special_tokens=False)
    model.resize_token_embeddings(len(tokenizer))
    if not tokens:
        return tokenizer.convert_tokens_to_ids(vocabulary)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        item_vectors = _title_vectors(tokenizer, embeddings[:old_size], catalog, batch_size)
        # every item with a SID adds its title vector to each of its SID's tokens (levels, markers): one scatter
        rows, token_ids = _sid_token_ids(tokenizer, catalog)
        sums = torch.zeros(len(tokenizer), embeddings.shape[1]).index_add_(0, token_ids, item_vectors[rows])
        counts = torch.bincount(token_ids, minlength=len(tokenizer)).float()
        new_ids = torch.tensor(tokenizer.convert_tokens_to_ids(tokens))
        vectors = torch.where(counts[new_ids, None] > 0, sums[new_ids] / counts[new_ids, None].clamp(min=1), item_vectors.mean(0))
        embeddings[new_ids] = vectors.to(embeddings.dtype)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embeddings.data_ptr():
            head.weight[new_ids] = vectors.to(head.weight.dtype)
    return tokenizer.convert_tokens_to_ids(vocabulary)


def _title_vectors(tokenizer, known: torch.Tensor, catalog: Catalog, batch_size: int) -> torch.Tensor:
    """Each item's mean input embedding over its title's tokens (the pad token's for an empty title)."""
    titles = catalog.items["title"].fill_null("").to_list()
    sums = torch.zeros(len(titles), known.shape[1])
    counts = torch.zeros(len(titles))
    for start in range(0, len(titles), batch_size):
        batch = tokenizer(titles[start:start + batch_size], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([i for row in batch for i in row], dtype=torch.long)
        items = torch.repeat_interleave(torch.arange(start, start + len(batch)), torch.tensor([len(row) for row in batch]))
        keep = ids < known.shape[0]
        sums.index_add_(0, items[keep], known[ids[keep]].float())
        counts.index_add_(0, items[keep], torch.ones(int(keep.sum())))
    empty = counts == 0
    sums[empty] = known[tokenizer.pad_token_id or 0].float()
    return sums / counts.clamp(min=1)[:, None]


def _sid_token_ids(tokenizer, catalog: Catalog) -> tuple[torch.Tensor, torch.Tensor]:
    """(item row, token id) for every token of every item's SID: each level's code token, and the dialect's markers."""
    with_sid = catalog.items.with_row_index("row").filter(pl.col("sid").is_not_null())
    levels, dialect = catalog.levels or 0, catalog.dialect
    rows = torch.tensor(with_sid["row"].to_numpy().astype("int64"))
    codes = torch.tensor(with_sid["sid"].list.to_array(levels).to_numpy().astype("int64")) if levels else torch.zeros(0, 0)
    pairs_rows, pairs_ids = [], []
    for level, size in enumerate(catalog.codebook_sizes):
        lookup = torch.tensor(tokenizer.convert_tokens_to_ids([dialect.token(level, code) for code in range(size)]))
        pairs_rows.append(rows)
        pairs_ids.append(lookup[codes[:, level]])
    for marker in (dialect.begin, dialect.end) if dialect.begin and dialect.end else ():
        pairs_rows.append(rows)
        pairs_ids.append(torch.full_like(rows, tokenizer.convert_tokens_to_ids(marker)))
    if not pairs_rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(pairs_rows), torch.cat(pairs_ids)


def freeze_for_warmup(model, token_ids: Sequence[int]) -> None:
    """Train only the rows of ``token_ids`` in the input (and untied output) embeddings: every other
    parameter is frozen and a gradient hook zeroes the other rows' gradients."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    rows = torch.zeros(model.get_input_embeddings().weight.shape[0], 1)
    rows[list(token_ids)] = 1.0
    for module in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
        module.weight.requires_grad_(True)
        module.weight.register_hook(lambda grad: grad * rows.to(grad.device, grad.dtype))
