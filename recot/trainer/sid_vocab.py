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

import torch

from recot.formats.cot import THINK_CLOSE, THINK_OPEN

if TYPE_CHECKING:  # the trainer runs on GPU machines that need not have the data stack
    from recot.data.catalog import Catalog

THINK_MARKERS = (THINK_OPEN, THINK_CLOSE)


def sid_vocabulary(catalog: Catalog) -> list[str]:
    """Every SID token of the catalog's shape (and its dialect's markers), then the think markers."""
    return [*catalog.dialect.tokens(catalog.codebook_sizes), *THINK_MARKERS]


def add_sid_vocabulary(model, tokenizer, catalog: Catalog, batch_size: int = 512) -> list[int]:
    """Add the SID tokens to ``tokenizer`` and ``model`` and initialise the new ones from item titles
    (tokens already known keep their embedding). Returns the ids of the whole SID vocabulary."""
    vocabulary = sid_vocabulary(catalog)
    tokens = [t for t in vocabulary if t not in tokenizer.get_vocab()]
    old_size = len(tokenizer)
    tokenizer.add_tokens(tokens, special_tokens=False)
    model.resize_token_embeddings(len(tokenizer))
    if not tokens:
        return tokenizer.convert_tokens_to_ids(vocabulary)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        titles = catalog.items["title"].fill_null("").to_list()
        item_vectors = torch.zeros(len(titles), embeddings.shape[1], dtype=torch.float32)
        for start in range(0, len(titles), batch_size):
            batch = tokenizer(titles[start:start + batch_size], add_special_tokens=False)["input_ids"]
            for offset, ids in enumerate(batch):
                ids = [i for i in ids if i < old_size] or [tokenizer.pad_token_id or 0]
                item_vectors[start + offset] = embeddings[ids].float().mean(0)
        sums = torch.zeros(len(tokenizer), embeddings.shape[1])
        counts = torch.zeros(len(tokenizer))
        for vector, sid in zip(item_vectors, catalog.sid_text().to_list()):
            if sid is None:
                continue
            ids = tokenizer(sid, add_special_tokens=False)["input_ids"]
            sums[ids] += vector
            counts[ids] += 1
        new_ids = tokenizer.convert_tokens_to_ids(tokens)
        fallback = item_vectors.mean(0)
        for token_id in new_ids:
            vector = sums[token_id] / counts[token_id] if counts[token_id] else fallback
            embeddings[token_id] = vector.to(embeddings.dtype)
            head = model.get_output_embeddings()
            if head is not None and head.weight.data_ptr() != embeddings.data_ptr():
                head.weight[token_id] = vector.to(head.weight.dtype)
    return tokenizer.convert_tokens_to_ids(vocabulary)


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
