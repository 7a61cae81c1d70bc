"""The two-stage rollout shared by GRPO, rejection sampling and think-mode evaluation, and the decoding results
every engine returns (:class:`Rollouts`, :class:`Ranking`).

Stage 1 samples (or greedily decodes) reasoning after a forced ``<think>`` and closes it with
``</think>``; stage 2 expands prompt + reasoning into K SIDs by beam search constrained to the
catalog trie, best first. Token ids in, token ids out: callers decide what to train or score.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from trl.trainer.utils import pad

from recot.trainer.sid_vocab import THINK_MARKERS
from recot.trainer.trie import SidTrie, TrieLogitsProcessor


@dataclass(frozen=True)
class Rollouts:
    reasoning: list[list[int]]  # per prompt: <think> ... </think> (empty without reasoning)
    beams: list[list[list[int]]]  # per prompt: K SID token sequences, best first


@dataclass(frozen=True)
class Ranking:
    """Ranked SIDs per prompt and the tokens each answer cost (evaluation's direct mode, on either engine)."""

    ranked: list[list[str]]
    completion_tokens: list[int]


def _left_padded(sequences: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    tensors = [torch.tensor(ids) for ids in sequences]
    return {"input_ids": pad(tensors, padding_value=pad_id, padding_side="left").to(device),
            "attention_mask": pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left").to(device)}


def beam_search(model, inputs: dict[str, torch.Tensor], k: int, **generate: object) -> torch.Tensor:
    """``model.generate`` with ``k`` beams (and ``generate``'s other arguments) whose prompts run through the model once,
    not once per beam: transformers repeats every prompt ``k`` times before its prefill, which on a real model's long
    prompts is most of an evaluation's time. Every prompt token but the last runs at the batch's size, its cache is
    repeated for the beams, and generate continues from the last token: the same keys, values and positions (from the
    left-padded mask, as generate derives them), so the same beams."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if k == 1 or ids.shape[1] < 2:
        return model.generate(**inputs, num_beams=k, **generate)
    positions = (mask[:, :-1].long().cumsum(-1) - 1).masked_fill(mask[:, :-1] == 0, 0)
    cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions, use_cache=True).past_key_values
    cache.batch_repeat_interleave(k)
    return model.generate(**inputs, past_key_values=cache, num_beams=k, **generate)


def two_stage(model, tokenizer, prompt_ids: list[list[int]], trie: SidTrie, k: int, reasoning: bool = True,
              max_reasoning_tokens: int = 64, generation_config: GenerationConfig | None = None) -> Rollouts:
    """Reasoning (sampled when ``generation_config`` samples, greedy without one), then K constrained SIDs.
    Without reasoning, a sampling ``generation_config`` draws the first SID under the trie."""
    start, end = tokenizer.convert_tokens_to_ids(list(THINK_MARKERS))
    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    thoughts: list[list[int]] = [[] for _ in prompt_ids]
    with torch.no_grad():
        if reasoning:
            config = copy.deepcopy(generation_config) if generation_config else GenerationConfig(do_sample=False)
            config.max_new_tokens, config.eos_token_id, config.pad_token_id = max_reasoning_tokens, [end, eos], pad_id
            inputs = _left_padded([p + [start] for p in prompt_ids], pad_id, model.device)
            out = model.generate(**inputs, generation_config=config)[:, inputs["input_ids"].shape[1]:].tolist()
            for row, ids in enumerate(out):
                ids = [t for t in ids if t != pad_id]
                cut = next((i for i, t in enumerate(ids) if t in (end, eos)), len(ids))
                thoughts[row] = [start, *ids[:cut], end]
        inputs = _left_padded([p + r for p, r in zip(prompt_ids, thoughts)], pad_id, model.device)
        width = inputs["input_ids"].shape[1]
        out = beam_search(model, inputs, k, num_return_sequences=k, do_sample=False, max_new_tokens=trie.depth + 1,
                          logits_processor=[TrieLogitsProcessor(trie, width)], pad_token_id=pad_id)
        beams = [[t for t in beam if t not in (pad_id, eos)] for beam in out[:, width:].tolist()]
        slates = [beams[i * k:(i + 1) * k] for i in range(len(prompt_ids))]
        if not reasoning and generation_config is not None and generation_config.do_sample:
            # without sampled reasoning the beam is the same for every rollout of a prompt: the answer
            # is sampled under the trie instead (so a group differs), the beams complete the slate
            config = copy.deepcopy(generation_config)
            config.max_new_tokens, config.eos_token_id, config.pad_token_id = trie.depth + 1, eos, pad_id
            drawn = model.generate(**inputs, generation_config=config, logits_processor=[TrieLogitsProcessor(trie, width)])
            for slate, answer in zip(slates, drawn[:, width:].tolist()):
                answer = [t for t in answer if t not in (pad_id, eos)]
                slate[:] = [answer, *[b for b in slate if b != answer]][:k]
    return Rollouts(thoughts, slates)
