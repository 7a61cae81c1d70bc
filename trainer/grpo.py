"""GRPO for generative recommendation on TRL's GRPOTrainer.

A rollout has two stages: the policy samples its reasoning up to ``</think>``, then beam search
constrained to the catalog trie expands that reasoning into ``num_candidates`` SIDs. The completion
that is trained is the reasoning plus the best SID; all K candidates reach the reward functions
(as ``candidates``), so set-wise rewards (rank, coverage, diversity) see the whole slate.
SID tokens get their own clip range (``sid_epsilon``), and groups in which no rollout hit the
target have their advantages scaled by ``no_hit_weight`` (their signal is mostly format noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation

from trainer.rewards import answer_sid, exact_hit, format_reward, prefix_match, rank_reward
from trainer.rollout import two_stage
from trainer.trie import SidTrie


@dataclass
class RecGRPOConfig(GRPOConfig):
    num_candidates: int = field(default=4, metadata={"help": "K: SIDs the constrained beam search expands each reasoning into"})
    reasoning: bool = field(default=True, metadata={"help": "sample a <think> block before the SID (False: SID only)"})
    max_reasoning_tokens: int = field(default=64, metadata={"help": "budget of the first stage"})
    sid_epsilon_low: float = field(default=0.1, metadata={"help": "lower clip range of SID tokens"})
    sid_epsilon_high: float = field(default=0.1, metadata={"help": "upper clip range of SID tokens"})
    no_hit_weight: float = field(default=0.5, metadata={"help": "advantage scale of groups with no exact hit"})


DEFAULT_REWARDS = [exact_hit, prefix_match, rank_reward, format_reward]


class RecGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with two-stage constrained rollouts, per-token clip ranges and no-hit down-weighting."""

    def __init__(self, model, args: RecGRPOConfig, trie: SidTrie, reward_funcs=None, **kwargs) -> None:
        super().__init__(model=model, args=args, reward_funcs=reward_funcs or DEFAULT_REWARDS, **kwargs)
        if self.use_vllm:
            raise ValueError("RecGRPOTrainer rolls out with transformers generate (constrained beam search); set use_vllm=False")
        self.trie = trie
        self.sid_token_ids = torch.tensor(sorted({t for s in trie.sequences for t in s}))
        self._candidates: list[list[str]] = []

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation) as model:
            rollouts = two_stage(model, self.processing_class, prompt_ids, self.trie, self.args.num_candidates,
                                 self.args.reasoning, self.args.max_reasoning_tokens, self.generation_config)
        eos = self.processing_class.eos_token_id
        self._candidates = [[self.processing_class.decode(b, skip_special_tokens=True) for b in row] for row in rollouts.beams]
        return [r + row[0] + [eos] for r, row in zip(rollouts.reasoning, rollouts.beams)], None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        inputs = [dict(x, candidates=[answer_sid(c) or c for c in cands]) for x, cands in zip(inputs, self._candidates)]
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        hits = torch.tensor(exact_hit([c[0] if c else "" for c in self._candidates], [x["target_sid"] for x in inputs]))
        group_hit = hits.view(-1, self.num_generations).amax(1).repeat_interleave(self.num_generations)
        weight = torch.where(group_hit > 0, 1.0, self.args.no_hit_weight).to(out["advantages"].device)
        out["advantages"] = out["advantages"] * weight[: out["advantages"].shape[0]]
        self._metrics["train"]["rollout_hit_rate"].append(hits.mean().item())
        return out

    def _compute_loss(self, model, inputs):
        """Clip SID tokens with their own range: the scalar epsilons become (B, T) tensors for one call."""
        is_sid = torch.isin(inputs["completion_ids"], self.sid_token_ids.to(inputs["completion_ids"].device))
        low, high = self.epsilon_low, self.epsilon_high
        self.epsilon_low = torch.where(is_sid, self.args.sid_epsilon_low, low)
        self.epsilon_high = torch.where(is_sid, self.args.sid_epsilon_high, high)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.epsilon_low, self.epsilon_high = low, high
