"""What a job costs in tokens and money: per task and teacher, after the fact and before sending.

Token counts after a run are the teacher's own (usage of each answer, summed from the output). A
dry run counts prompt tokens with the teacher's tokenizer when one is at hand (the in-process vLLM
model's folder, or ``tokenizer`` in an OpenAI-compatible teacher's config) and otherwise estimates
them at four characters a token; completion tokens are bounded by ``max_tokens`` and, when the
journal already holds answers of a task, expected at their mean length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English under BPE tokenizers, used when no tokenizer is at hand


class Price(BaseModel):
    """A teacher's price list, in any currency, per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input_per_million: float = Field(ge=0, description="price of a million prompt tokens")
    output_per_million: float = Field(ge=0, description="price of a million completion tokens")
    batch_discount: float = Field(0.5, ge=0, le=1, description="share taken off in batch mode (OpenAI's Batch API: 0.5)")

    def cost(self, prompt_tokens: int | float, completion_tokens: int | float, batch: bool = False) -> float:
        full = (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return round(full * (1 - self.batch_discount) if batch else full, 6)

    def costs(self, prompt_tokens: int | float, completion_tokens: int | float) -> dict[str, float]:
        """The cost sent live and in batch mode: what summaries, dry runs and data cards report."""
        return {"live": self.cost(prompt_tokens, completion_tokens), "batch": self.cost(prompt_tokens, completion_tokens, batch=True)}


def spent(tokens: list[dict]) -> tuple[int, int]:
    """Prompt and completion tokens summed over :func:`tokens_by_task` rows (or a card's rows)."""
    return sum(t["prompt_tokens"] or 0 for t in tokens), sum(t["completion_tokens"] or 0 for t in tokens)


def tokens_by_task(traces: Path) -> list[dict]:
    """Rows, prompt and completion tokens per task and teacher of a synthesis output; of the completion tokens, those a
    thinking teacher reported as its reasoning (billed as completion tokens, so already in the cost)."""
    frame = (pl.scan_parquet(traces).group_by("task", "teacher", "model")
             .agg(rows=pl.len(), prompt_tokens=pl.col("prompt_tokens").sum(), completion_tokens=pl.col("completion_tokens").sum(),
                  reasoning_tokens=pl.col("reasoning_tokens").sum())
             .sort("task", "teacher", "model").collect())
    return frame.to_dicts()


def token_counter(tokenizer: str | None) -> tuple[str, Callable[[Sequence[list[dict[str, str]]]], list[int]]]:
    """A function from chat conversations to prompt token counts, and how it counts (the tokenizer or the estimate)."""
    if tokenizer:
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(tokenizer)

        def count(conversations: Sequence[list[dict[str, str]]]) -> list[int]:
            if loaded.chat_template:
                return [len(loaded.apply_chat_template(c, tokenize=True, add_generation_prompt=True, return_dict=False))
                        for c in conversations]
            return [len(ids) for ids in loaded(["\n".join(m["content"] for m in c) for c in conversations])["input_ids"]]

        return f"tokenizer {tokenizer}", count
    return (f"estimate: {CHARS_PER_TOKEN} characters a token",
            lambda conversations: [sum(len(m["content"]) for m in c) // CHARS_PER_TOKEN + 4 * len(c) for c in conversations])
