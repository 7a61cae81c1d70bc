"""Catalog-constrained decoding on vLLM: the SID trie as a vLLM logits processor, beam search and the
two-stage rollout over it.

vLLM (v1) builds its logits processors inside the engine, possibly in another process, so a request
opts in through ``SamplingParams.extra_args``: ``{"sid_trie": FILE, "sid_start": N}`` constrains the
tokens from position ``N`` of prompt + output on to the continuations the trie saved in ``FILE``
allows. Each beam step is a one-token request whose prompt holds the beam so far, so the same
processor serves beam search, sampled answers and (later) GRPO rollouts.

Scores follow transformers' constrained beam search exactly: an allowed token keeps its log-probability
under the model's full distribution (no renormalisation over the allowed tokens), read back through
the engine's ``processed_logits`` mode. The transformers path (:mod:`recot.trainer.evaluate`,
:mod:`recot.trainer.rollout`) and this one rank the same SIDs for the same model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from recot.teachers.vllm_engine import make_llm
from recot.trainer.rollout import Ranking, Rollouts
from recot.trainer.sid_vocab import THINK_MARKERS
from recot.trainer.trie import SidTrie


@cache
def _load_trie(path: str) -> SidTrie:
    saved = json.loads(Path(path).read_text())
    return SidTrie(saved["sequences"], saved["end_id"])


def save_trie(trie: SidTrie, path: Path) -> Path:
    """Write ``trie`` where the engine's logits processor reads it (by path, from any process)."""
    path.write_text(json.dumps({"sequences": sorted(trie.sequences), "end_id": trie.end_id}))
    return path


@dataclass
class _Row:
    trie: SidTrie
    prompt: list[int]
    output: list[int]  # the engine's live list: grows as the request generates
    start: int


class SidTrieLogitsProcessor(LogitsProcessor):
    """Masks every token the trie does not allow after a request's tokens from ``sid_start`` on; allowed
    tokens get their log-probability under the unconstrained distribution."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            extra = (params.extra_args if params is not None else None) or {}
            if "sid_trie" in extra:
                self.rows[index] = _Row(_load_trie(extra["sid_trie"]), list(prompt or []), output, int(extra["sid_start"]))
            else:
                self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            first, second = self.rows.pop(a, None), self.rows.pop(b, None)
            if first is not None:
                self.rows[b] = first
            if second is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self.rows.items():
            tokens = (row.prompt + row.output)[row.start:]
            allowed = torch.tensor(row.trie.allowed(tokens), device=logits.device)
            logprobs = torch.log_softmax(logits[index], dim=-1)
            logits[index] = float("-inf")
            logits[index, allowed] = logprobs[allowed]
        return logits


def constrained_engine(model: str | Path, **engine: Any):
    """A ``vllm.LLM`` for ``model`` with the trie processor and scores read as ``processed_logits``
    (``engine``: further ``vllm.LLM`` arguments: dtype, max_model_len, gpu_memory_utilization, ...)."""
    from recot.models import resolve

    return make_llm(model=resolve(model), logits_processors=[SidTrieLogitsProcessor], logprobs_mode="processed_logits", **engine)


def shutdown(llm) -> None:
    """Stop the engine's core (its process and memory) now rather than at garbage collection."""
    llm.llm_engine.engine_core.shutdown()


def beam_search(llm, prompt_ids: Sequence[list[int]], trie_file: Path, depth: int, k: int) -> list[list[list[int]]]:
    """The ``k`` best SIDs (token ids, best first) after each prompt, by beam search over the trie: every step
    extends each live beam by its ``2k`` best allowed tokens (as transformers does) and keeps the ``k`` best.
    The last step scores the end token after each complete SID, as transformers' beams end."""
    beams: list[list[tuple[list[int], float]]] = [[([], 0.0)] for _ in prompt_ids]
    for _ in range(depth + 1):
        asked = [(p, tokens, score) for p, row in enumerate(beams) for tokens, score in row]
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=list(prompt_ids[p]) + tokens) for p, tokens, _ in asked],
            [SamplingParams(max_tokens=1, temperature=0.0, logprobs=2 * k, detokenize=False,
                            extra_args={"sid_trie": str(trie_file), "sid_start": len(prompt_ids[p])}) for p, _, _ in asked],
            use_tqdm=False)
        grown: list[list[tuple[list[int], float]]] = [[] for _ in prompt_ids]
        for (p, tokens, score), output in zip(asked, outputs):
            for token, logprob in output.outputs[0].logprobs[0].items():
                if logprob.logprob > float("-inf"):
                    grown[p].append((tokens + [token], score + logprob.logprob))
        beams = [sorted(row, key=lambda beam: -beam[1])[:k] for row in grown]
    return [[tokens[:depth] for tokens, _ in row] for row in beams]


def two_stage(llm, tokenizer, prompt_ids: Sequence[list[int]], trie_file: Path, depth: int, k: int, reasoning: bool = True,
              max_reasoning_tokens: int = 64, temperature: float = 0.0, seed: int = 0, top_p: float = 1.0) -> Rollouts:
    """:func:`recot.trainer.rollout.two_stage` on vLLM: reasoning after a forced ``<think>`` (greedy at temperature 0,
    else sampled with a seed per prompt) closed by ``</think>``, then the ``k`` best constrained SIDs. Without
    reasoning, sampling draws the first SID under the trie (so a group differs) and the beams complete the slate."""
    start, end = tokenizer.convert_tokens_to_ids(list(THINK_MARKERS))
    thoughts: list[list[int]] = [[] for _ in prompt_ids]
    if reasoning:
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=list(p) + [start]) for p in prompt_ids],
            [SamplingParams(max_tokens=max_reasoning_tokens, temperature=temperature, top_p=top_p, seed=seed + i if temperature else None,
                            stop_token_ids=[end, tokenizer.eos_token_id], detokenize=False) for i in range(len(prompt_ids))],
            use_tqdm=False)
        for row, output in enumerate(outputs):
            ids = list(output.outputs[0].token_ids)
            cut = next((i for i, t in enumerate(ids) if t in (end, tokenizer.eos_token_id)), len(ids))
            thoughts[row] = [start, *ids[:cut], end]
    prompts = [list(p) + t for p, t in zip(prompt_ids, thoughts)]
    beams = beam_search(llm, prompts, trie_file, depth, k)
    if not reasoning and temperature > 0:
        drawn = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            [SamplingParams(max_tokens=depth, temperature=temperature, top_p=top_p, seed=seed + i, detokenize=False,
                            extra_args={"sid_trie": str(trie_file), "sid_start": len(p)}) for i, p in enumerate(prompts)],
            use_tqdm=False)
        for slate, output in zip(beams, drawn):
            answer = list(output.outputs[0].token_ids)
            slate[:] = [answer, *[b for b in slate if b != answer]][:k]
    return Rollouts(thoughts, beams)


def sync_weights(llm, model) -> None:
    """Load a policy's current weights into the engine (in-process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and drop
    the prefix cache computed with the old ones."""
    weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
    # reload_weights, not the model's load_weights: the engine repacks its weights for its kernels after loading
    # (on a CPU the linear layers lose their loaders), and reloading redoes that processing
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def recommend(llm, tokenizer, prompts: Sequence[list[dict]], trie: SidTrie, trie_file: Path, k: int = 10):
    """:func:`recot.trainer.evaluate.recommend` on vLLM: the top-``k`` SIDs per conversational prompt."""
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
    beams = beam_search(llm, ids, trie_file, trie.depth, k)
    ranked = [list(dict.fromkeys(tokenizer.decode(b, skip_special_tokens=True) for b in row)) for row in beams]
    return Ranking(ranked, [trie.depth + 1] * len(ids))  # every answer: one token per SID level and the end token
