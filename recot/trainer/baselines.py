"""Sequential baselines scored on exactly the rows a model is evaluated on.

Each baseline learns from the split's training samples only (history item ids -> target item id) and ranks
item ids for an evaluation row's history; evaluation maps items to SIDs and scores every method with the same
metrics. ``most_popular`` ranks training targets by count; ``Transition`` ranks the items that followed the
history's last item in training (item-to-item, backed off to popularity); ``SASRec`` is the self-attentive
sequential recommender (Kang & McAuley, 2018): causal self-attention over the item history, trained with a full
softmax over the catalog on the same training samples.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field


def most_popular(train_targets: Sequence[str], n: int, k: int = 10) -> list[list[str]]:
    """The ``k`` most frequent training targets, for every one of ``n`` rows."""
    top = [item for item, _ in Counter(train_targets).most_common(k)]
    return [top] * n


class Transition:
    """Next item given the last one: counts of (last history item -> target) in training, popularity behind."""

    def __init__(self, histories: Sequence[Sequence[str]], targets: Sequence[str]) -> None:
        self.following: dict[str, Counter] = defaultdict(Counter)
        for history, target in zip(histories, targets):
            if history:
                self.following[history[-1]][target] += 1
        self.popular = [item for item, _ in Counter(targets).most_common()]

    def rank(self, histories: Sequence[Sequence[str]], k: int = 10) -> list[list[str]]:
        ranked = []
        for history in histories:
            seen = [item for item, _ in self.following.get(history[-1], Counter()).most_common(k)] if history else []
            ranked.append(list(dict.fromkeys([*seen, *self.popular[: 2 * k]]))[:k])
        return ranked


class SASRecConfig(BaseModel):
    """SASRec's size and training; the defaults fit a CPU and a catalog of a few thousand items."""

    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(64, ge=8, description="embedding and block width")
    layers: int = Field(2, ge=1, description="self-attention blocks")
    heads: int = Field(1, ge=1, description="attention heads (hidden_size must divide by it)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout on embeddings and blocks")
    epochs: int = Field(30, ge=1, description="passes over the training samples")
    batch_size: int = Field(128, ge=1, description="samples per step")
    learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate")
    seed: int = Field(0, description="seed of initialisation and sample order")


class SASRec(torch.nn.Module):
    """Item and position embeddings, causal Transformer blocks; the last position scores every item (tied weights)."""

    def __init__(self, items: int, max_len: int, config: SASRecConfig) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(items + 1, config.hidden_size, padding_idx=0)  # 0 pads
        self.positions = torch.nn.Embedding(max_len, config.hidden_size)
        block = torch.nn.TransformerEncoderLayer(config.hidden_size, config.heads, config.hidden_size * 2, config.dropout,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(config.hidden_size)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.heads = config.heads
        for table in (self.items, self.positions):  # small weights: item scores start near uniform
            torch.nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Scores of every item after each left-padded sequence (B, L) -> (B, items + 1)."""
        length = sequences.shape[1]
        x = self.items(sequences) * math.sqrt(self.items.embedding_dim) + self.positions.weight[:length]
        # blocked (True): later positions, and padding, except a position itself (so no row is fully blocked)
        later = torch.ones(length, length, dtype=torch.bool, device=sequences.device).triu(1)
        itself = torch.eye(length, dtype=torch.bool, device=sequences.device)
        blocked = later[None] | ((sequences == 0)[:, None, :] & ~itself[None])
        hidden = self.blocks(self.dropout(x), mask=blocked.repeat_interleave(self.heads, dim=0))
        return self.norm(hidden[:, -1]) @ self.items.weight.T


class SASRecRecommender:
    """SASRec trained on training samples (history -> target), ranking item ids."""

    def __init__(self, histories: Sequence[Sequence[str]], targets: Sequence[str], max_len: int,
                 config: SASRecConfig = SASRecConfig()) -> None:
        torch.manual_seed(config.seed)
        self.vocabulary = sorted({*targets, *(item for h in histories for item in h)})
        self.index = {item: i + 1 for i, item in enumerate(self.vocabulary)}
        self.max_len = max_len
        self.model = SASRec(len(self.vocabulary), max_len, config)
        self.losses: list[float] = []
        self._train(histories, targets, config)

    def _encode(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        rows = [[self.index.get(item, 0) for item in h][-self.max_len:] for h in histories]
        return torch.tensor([[0] * (self.max_len - len(r)) + r for r in rows], dtype=torch.long)

    def _train(self, histories: Sequence[Sequence[str]], targets: Sequence[str], config: SASRecConfig) -> None:
        keep = [i for i, h in enumerate(histories) if h]
        inputs = self._encode([histories[i] for i in keep])
        labels = torch.tensor([self.index[targets[i]] for i in keep], dtype=torch.long)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        generator = torch.Generator().manual_seed(config.seed)
        self.model.train()
        for _ in range(config.epochs):
            order, total = torch.randperm(len(keep), generator=generator), 0.0
            for start in range(0, len(keep), config.batch_size):
                batch = order[start:start + config.batch_size]
                scores = self.model(inputs[batch])
                scores[:, 0] = float("-inf")  # never the padding item
                loss = torch.nn.functional.cross_entropy(scores, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            self.losses.append(total / max(len(keep), 1))

    @torch.no_grad()
    def rank(self, histories: Sequence[Sequence[str]], k: int = 10, batch_size: int = 512) -> list[list[str]]:
        self.model.eval()
        ranked = []
        for start in range(0, len(histories), batch_size):
            scores = self.model(self._encode(histories[start:start + batch_size]))
            scores[:, 0] = float("-inf")
            top = scores.topk(min(k, len(self.vocabulary)), dim=1).indices.tolist()
            ranked += [[self.vocabulary[i - 1] for i in row] for row in top]
        return ranked
