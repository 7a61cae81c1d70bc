"""GRPO for generative recommendation on TRL's GRPOTrainer.

A rollout has two stages: the policy samples its reasoning up to ``</think>``, then beam search
constrained to the catalog trie expands that reasoning into ``num_candidates`` SIDs. The completion
that is trained is the reasoning plus the best SID; all K candidates reach the reward functions
(as ``candidates``), so set-wise rewards (rank, coverage, diversity) see the whole slate.
SID tokens get their own clip range (``sid_epsilon``), and groups in which no rollout hit the
target have their advantages scaled by ``no_hit_weight`` (their signal is mostly format noise).

Without reasoning, ``rollout = "beam"`` makes a prompt's group its ``num_generations`` best distinct SIDs
from the constrained beam search (as MiniOneRec does): sampled SIDs from a peaked policy repeat the same
item, so most groups would have no spread to learn from, while a beam group always ranks distinct items
and puts the target in the group whenever it is within the policy's top ``num_generations``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation

from recot.trainer.rewards import REWARDS, answer_sid, exact_hit, format_reward, prefix_match, rank_reward
from recot.trainer.rollout import Rollouts, two_stage
from recot.trainer.sft import fit_to_machine
from recot.trainer.trie import SidTrie


@dataclass
class RecGRPOConfig(GRPOConfig):
    num_candidates: int = field(default=4, metadata={"help": "K: SIDs the constrained beam search expands each reasoning into"})
    reasoning: bool = field(default=True, metadata={"help": "sample a <think> block before the SID (False: SID only)"})
    max_reasoning_tokens: int = field(default=64, metadata={"help": "budget of the first stage"})
    sid_epsilon_low: float = field(default=0.1, metadata={"help": "lower clip range of SID tokens"})
    sid_epsilon_high: float = field(default=0.1, metadata={"help": "upper clip range of SID tokens"})
    rollout: str = field(default="sample", metadata={
        "help": "sample: every rollout samples its reasoning (or, without reasoning, its SID under the trie); beam: the "
                "group is the num_generations best distinct SIDs of the constrained beam search (reasoning False)"})
    no_hit_weight: float = field(default=0.5, metadata={"help": "advantage scale of groups with no exact hit"})
    model_path: str = field(default="", metadata={"help": "the policy to start from (an SFT checkpoint with the SID tokens)"})
    dataset_path: str = field(default="", metadata={"help": "a recot export folder: its grpo format gives prompts and targets"})
    sid_catalog: str = field(default="", metadata={"help": "the export (or catalog.parquet) whose SIDs the trie is built from; "
                                                                "default: dataset_path's"})
    rewards: list[str] | None = field(default=None, metadata={"help": "reward names from trainer.rewards.REWARDS (default: "
                                                                     "exact_hit, prefix_match, rank, format)"})
    rollout_engine: str = field(default="transformers", metadata={
        "help": "what rolls out: transformers generate, or vllm (an engine in this process, the trie as its logits processor, "
                "the policy's weights loaded into it before each step's rollouts)"})
    vllm_engine: dict | None = field(default=None, metadata={"help": "vllm.LLM arguments for rollout_engine vllm (dtype, "
                                                                    "gpu_memory_utilization, max_model_len, ...)"})

    def __post_init__(self) -> None:
        fit_to_machine(self)
        super().__post_init__()
        unknown = sorted(set(self.rewards or ()) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown rewards {unknown}; choose from {sorted(REWARDS)}")
        if self.rollout_engine not in ("transformers", "vllm"):
            raise ValueError(f"rollout_engine is {self.rollout_engine!r}; choose transformers or vllm")
        if self.rollout not in ("sample", "beam"):
            raise ValueError(f"rollout is {self.rollout!r}; choose sample or beam")
        if self.rollout == "beam" and self.reasoning:
            raise ValueError("rollout 'beam' ranks SIDs without reasoning: set reasoning = False (or rollout = 'sample')")


DEFAULT_REWARDS: list[Callable[..., list[float]]] = [exact_hit, prefix_match, rank_reward, format_reward]


class RecGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with two-stage constrained rollouts, per-token clip ranges and no-hit down-weighting."""

    args: RecGRPOConfig

    def __init__(self, model, args: RecGRPOConfig, trie: SidTrie, reward_funcs=None, **kwargs) -> None:
        super().__init__(model=model, args=args, reward_funcs=reward_funcs or list(DEFAULT_REWARDS), **kwargs)
        if self.use_vllm:
            raise ValueError("RecGRPOTrainer rolls out its constrained two stages itself: set rollout_engine = 'vllm' instead "
                             "of use_vllm")
        self.trie = trie
        self.sid_token_ids = torch.tensor(sorted({t for s in trie.sequences for t in s}))
        self._candidates: list[list[str]] = []  # per completion: the ranked slate its reward functions see
        self._answers: list[str] = []  # per completion: the SID it answers with
        self._engine, self._synced_step, self._rollout_calls = None, -1, 0

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        beam = self.args.rollout == "beam"
        if beam:
            prompt_ids = self._group_prompts(prompt_ids, num_generations)
        k = num_generations if beam else self.args.num_candidates
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation) as model:
            if self.args.rollout_engine == "vllm":
                rollouts = self._vllm_rollouts(model, prompt_ids, k, sampled=not beam)
            else:
                rollouts = two_stage(model, self.processing_class, prompt_ids, self.trie, k, self.args.reasoning,
                                     self.args.max_reasoning_tokens, None if beam else self.generation_config)
        eos = self.processing_class.eos_token_id
        slates = [[self.processing_class.decode(b, skip_special_tokens=True) for b in row] for row in rollouts.beams]
        if beam:  # the j-th copy of a prompt answers with its j-th best SID; each sees the whole slate
            self._candidates = [slate for slate in slates for _ in range(num_generations)]
            self._answers = [answer for slate in slates for answer in self._padded(slate, num_generations)]
            return [beam_ids + [eos] for row in rollouts.beams for beam_ids in self._padded(row, num_generations)], None
        self._candidates, self._answers = slates, [slate[0] if slate else "" for slate in slates]
        return [r + row[0] + [eos] for r, row in zip(rollouts.reasoning, rollouts.beams)], None

    @staticmethod
    def _group_prompts(prompt_ids: list[list[int]], size: int) -> list[list[int]]:
        """One prompt per group: TRL's sampler repeats each prompt ``size`` times in a row."""
        groups = [prompt_ids[i:i + size] for i in range(0, len(prompt_ids), size)]
        if any(len(g) != size or any(p != g[0] for p in g) for g in groups):
            raise RuntimeError("rollout 'beam' needs each prompt's num_generations copies next to each other, as TRL's "
                               "RepeatSampler gives them")
        return [g[0] for g in groups]

    @staticmethod
    def _padded(beams: list[list[int]], size: int) -> list[list[int]]:
        """``size`` answers from a slate that a small catalog branch may leave shorter: the best one repeats."""
        return (beams + [beams[0]] * size)[:size]

    def _vllm_rollouts(self, model, prompt_ids, k: int, sampled: bool) -> Rollouts:
        """The two stages on the colocated vLLM engine (started on first use from ``model_path``), with the
        policy's weights loaded into it once per optimisation step."""
        from recot.trainer import vllm_decoding

        if self._engine is None:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine's model in this process, for the sync
            self._engine = vllm_decoding.constrained_engine(self.args.model_path or model.name_or_path, **(self.args.vllm_engine or {}))
            out = Path(str(self.args.output_dir))
            out.mkdir(parents=True, exist_ok=True)
            self._trie_file = vllm_decoding.save_trie(self.trie, out / "trie.json")
        if self._synced_step != self.state.global_step:
            vllm_decoding.sync_weights(self._engine, model)
            self._synced_step = self.state.global_step
        self._rollout_calls += 1
        return vllm_decoding.two_stage(
            self._engine, self.processing_class, prompt_ids, self._trie_file, self.trie.depth, k,
            self.args.reasoning, self.args.max_reasoning_tokens, self.args.temperature if sampled else 0.0,
            seed=(self.args.seed + self._rollout_calls) * 1_000_003, top_p=self.args.top_p)

    def close_rollout_engine(self) -> None:
        """Stop the vLLM rollout engine, if one was started."""
        if self._engine is not None:
            from recot.trainer.vllm_decoding import shutdown

            shutdown(self._engine)
            self._engine = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        inputs = [dict(x, candidates=[answer_sid(c) or c for c in cands]) for x, cands in zip(inputs, self._candidates)]
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        local = torch.tensor(exact_hit(self._answers, [x["target_sid"] for x in inputs]), device=self.accelerator.device)
        # a group may span processes (as TRL's rewards do): weigh on every rank's hits, then keep this rank's slice
        hits = self.accelerator.gather(local)
        group_hit = hits.view(-1, self.num_generations).amax(1).repeat_interleave(self.num_generations)
        start = self.accelerator.process_index * len(local)
        weight = torch.where(group_hit[start:start + len(local)] > 0, 1.0, self.args.no_hit_weight).to(out["advantages"].device)
        out["advantages"] = out["advantages"] * weight[: out["advantages"].shape[0]]
        self._metrics["train"]["rollout_hit_rate"].append(hits.float().mean().item())
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


def learning_signal(trainer: GRPOTrainer) -> dict[str, object]:
    """How many logged steps had a reward spread to learn from. On a step where every group's rewards are equal
    (TRL's ``frac_reward_zero_std`` is 1) every advantage is zero and the policy does not move; a run made only of
    such steps trained nothing, and ``fix`` says what usually gives a group its spread."""
    steps = [entry for entry in trainer.state.log_history if "frac_reward_zero_std" in entry]
    silent = sum(float(entry["frac_reward_zero_std"]) >= 1.0 for entry in steps)
    report: dict[str, object] = {"logged_steps": len(steps), "steps_without_reward_spread": silent}
    if steps and silent == len(steps):
        report["fix"] = ("no group ever had a reward spread, so GRPO trained nothing: lower temperature (a weak policy's "
                         "sampled reasoning may leave the CoT format), raise max_reasoning_tokens to the CoT's length, raise "
                         "num_generations, or add rewards that vary within a group (prefix_match, grounding)")
    return report


def train_grpo(config: RecGRPOConfig, train_dataset=None) -> RecGRPOTrainer:
    """GRPO from ``model_path`` on the export's ``grpo`` rows (or ``train_dataset``); saves to ``output_dir``."""
    from recot.models.loading import load_model, load_tokenizer
    from recot.trainer.data import export_catalog, load_export

    missing = [] if config.model_path else ["model_path"]
    if not config.dataset_path and (train_dataset is None or not config.sid_catalog):
        missing.append("dataset_path")
    if missing:
        raise ValueError(f"RecGRPOConfig needs {', '.join(missing)}: the policy and the export (its grpo rows and catalog)")
    catalog_source = config.sid_catalog or config.dataset_path
    catalog = export_catalog(catalog_source)
    tokenizer = load_tokenizer(config.model_path, catalog, catalog_source)
    trie = SidTrie.from_catalog(tokenizer, catalog)
    rewards = [REWARDS[name] for name in config.rewards] if config.rewards else None
    trainer = RecGRPOTrainer(model=load_model(config.model_path), args=config, trie=trie,
                             processing_class=tokenizer, reward_funcs=rewards,
                             train_dataset=train_dataset if train_dataset is not None else load_export(config.dataset_path, "grpo")["train"])
    try:
        trainer.train()
    finally:
        trainer.close_rollout_engine()
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(config.output_dir))
    return trainer
