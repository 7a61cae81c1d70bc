"""The catalog as a trie of token ids, for decoding that can only produce SIDs that exist.

``transformers`` beam search takes it as ``prefix_allowed_tokens_fn``; GRPO rollouts take it as a
logits processor. After a complete SID only the end token is allowed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor

if TYPE_CHECKING:
    from recot.data.catalog import Catalog


class SidTrie:
    """Allowed next token ids after each prefix of a SID's token ids."""

    def __init__(self, sequences: Iterable[Sequence[int]], end_id: int) -> None:
        children: dict[tuple[int, ...], set[int]] = defaultdict(set)
        self.sequences: set[tuple[int, ...]] = set()
        for sequence in sequences:
            sequence = tuple(sequence)
            self.sequences.add(sequence)
            for depth in range(len(sequence)):
                children[sequence[:depth]].add(sequence[depth])
        self.children = {prefix: sorted(ids) for prefix, ids in children.items()}
        self.end_id = end_id
        self.depth = max((len(s) for s in self.sequences), default=0)

    @classmethod
    def from_sids(cls, tokenizer, sids: Iterable[str], end_id: int | None = None) -> SidTrie:
        """Tokenise each SID text; every SID must map to the same number of tokens (one per level)."""
        sequences = tokenizer(list(dict.fromkeys(s for s in sids if s)), add_special_tokens=False)["input_ids"]
        if len({len(s) for s in sequences}) > 1:
            raise ValueError("SIDs tokenise to different lengths: add the SID vocabulary to the tokenizer first "
                             "(trainer.sid_vocab.add_sid_vocabulary)")
        return cls(sequences, tokenizer.eos_token_id if end_id is None else end_id)

    @classmethod
    def from_catalog(cls, tokenizer, catalog: Catalog) -> SidTrie:
        """The trie of every SID in ``catalog`` (an export's :func:`recot.trainer.data.export_catalog`)."""
        return cls.from_sids(tokenizer, catalog.sid_text().drop_nulls().to_list())

    def allowed(self, generated: Sequence[int]) -> list[int]:
        return self.children.get(tuple(generated), [self.end_id])

    def prefix_allowed_tokens_fn(self, start: int) -> Callable[[int, torch.Tensor], list[int]]:
        """For ``generate``: the SID begins at position ``start`` of every row (the padded prompt length)."""
        return lambda _batch, ids: self.allowed(ids[start:].tolist())


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every token the trie does not allow after the tokens generated since ``start``."""

    def __init__(self, trie: SidTrie, start: int) -> None:
        self.trie, self.start = trie, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.start:].tolist()):
            mask[row, self.trie.allowed(ids)] = 0
        return scores + mask
