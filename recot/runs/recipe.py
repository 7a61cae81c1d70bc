"""Specialise, then unify: GRPO per domain, then one model from the domain experts.

Unification has two routes. ``rft`` (rejection-sampling fine-tuning) samples two-stage rollouts
from each expert on its own domain's prompts, keeps those whose best SID is the real next item,
and fine-tunes the base model on them. ``distill`` trains the base model on-policy against each
expert in turn on that expert's domain (TRL's DistillationTrainer, one teacher per domain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recot.config import check_stage
from recot.models.loading import load_model, load_tokenizer
from recot.runs.stages import stage_config
from recot.trainer.data import export_catalog, load_export
from recot.trainer.grpo import RecGRPOConfig, RecGRPOTrainer
from recot.trainer.rewards import REWARDS, exact_hit
from recot.trainer.rollout import two_stage
from recot.trainer.sft import RecSFTConfig, machine_defaults, train_sft
from recot.trainer.trie import SidTrie


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("rewards")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown rewards {unknown}; choose from {sorted(REWARDS)}")
        return names

    base_model: str = Field(description="the SFT checkpoint every expert starts from")
    export: Path = Field(description="a recot export folder: its grpo rows give prompts, targets and domains, its catalog the trie")
    out: Path = Field(description="experts go to OUT/experts/DOMAIN, the unified model to OUT/unified")
    domains: list[str] | None = Field(None, description="domains to specialise on (default: all in the export)")
    unify: Literal["rft", "distill"] = Field("rft", description="rft: SFT on the experts' hits; distill: on-policy distillation")
    rft_samples: int = Field(4, ge=1, description="rollouts per prompt sampled from each expert")
    rewards: list[str] = Field(["exact_hit", "prefix_match", "rank", "format"], description="reward functions (trainer.rewards.REWARDS)")
    grpo: dict[str, Any] = Field(default_factory=dict, description="RecGRPOConfig settings for the experts")
    sft: dict[str, Any] = Field(default_factory=dict, description="RecSFTConfig settings for the RFT stage")
    distill: dict[str, Any] = Field(default_factory=dict, description="DistillationConfig settings")

    @model_validator(mode="after")
    def _stage_settings(self) -> RecipeConfig:
        """Check every stage's settings now, not after the experts have trained."""
        from trl import DistillationConfig

        for name, kind in (("grpo", RecGRPOConfig), ("sft", RecSFTConfig), ("distill", DistillationConfig)):
            settings = getattr(self, name)
            if name == "distill":  # TRL's own config: the machine's device defaults are added here, as at run time
                settings = {**machine_defaults(), **settings}
            check_stage(kind, settings, name, output_dir=str(self.out / name))
        return self


def _load(path: str):
    return load_model(path), load_tokenizer(path)


def train_expert(config: RecipeConfig, rows, domain: str, trie: SidTrie) -> Path:
    """GRPO from the base model on one domain's prompts; returns the expert's folder."""
    model, tokenizer = _load(config.base_model)
    out = config.out / "experts" / domain
    args = stage_config(RecGRPOConfig, config.grpo, output_dir=str(out))
    trainer = RecGRPOTrainer(model=model, args=args, trie=trie, processing_class=tokenizer, train_dataset=rows,
                             reward_funcs=[REWARDS[name] for name in config.rewards])
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    return out


def rejection_samples(expert: Path, rows, trie: SidTrie, samples: int, max_reasoning_tokens: int = 64) -> list[dict]:
    """Rollouts of ``expert`` on ``rows`` whose best SID hits the target, as prompt/completion rows."""
    from transformers import GenerationConfig

    model, tokenizer = _load(str(expert))
    kept = []
    sampling = GenerationConfig(do_sample=True, temperature=1.0)
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        rollouts = two_stage(model, tokenizer, [list(ids)] * samples, trie, 1, True, max_reasoning_tokens, sampling)
        for reasoning, beams in zip(rollouts.reasoning, rollouts.beams):
            completion = tokenizer.decode(reasoning + beams[0], skip_special_tokens=True)
            if exact_hit([completion], [row["target_sid"]])[0]:
                kept.append({"prompt": row["prompt"], "completion": [{"role": "assistant", "content": completion}]})
    return kept


def run_recipe(config: RecipeConfig) -> dict[str, Any]:
    """Experts per domain, then the unified model at ``out/unified``; returns what each stage produced."""
    import datasets

    grpo_rows = load_export(config.export, "grpo")["train"]
    domains = config.domains or sorted({d for d in grpo_rows["domain"] if d})
    catalog = export_catalog(config.export)
    tokenizer = load_tokenizer(config.base_model, catalog, config.export)
    trie = SidTrie.from_catalog(tokenizer, catalog)
    by_domain = {d: grpo_rows.filter(lambda r, d=d: r["domain"] == d) for d in domains}
    experts = {d: train_expert(config, rows, d, trie) for d, rows in by_domain.items()}
    unified = config.out / "unified"
    report: dict[str, Any] = {"domains": {d: len(rows) for d, rows in by_domain.items()}, "experts": {d: str(p) for d, p in experts.items()}}
    if config.unify == "rft":
        kept = [row for d, rows in by_domain.items()
                for row in rejection_samples(experts[d], rows, trie, config.rft_samples, config.grpo.get("max_reasoning_tokens", 64))]
        report["rft_rows"] = len(kept)
        if not kept:
            raise ValueError("no expert rollout hit its target: train the experts longer or sample more (rft_samples)")
        train_sft(stage_config(RecSFTConfig, config.sft, model_path=config.base_model, output_dir=str(unified)),
                  datasets.Dataset.from_list(kept))
    else:
        from trl import DistillationConfig, DistillationTrainer

        student, tokenizer = _load(config.base_model)
        for domain, rows in by_domain.items():
            args = stage_config(DistillationConfig, {**machine_defaults(), **config.distill}, output_dir=str(config.out / "distill" / domain))
            teacher, _ = _load(str(experts[domain]))
            DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows.select_columns(["prompt"]),
                                processing_class=tokenizer).train()
        student.save_pretrained(unified)
        tokenizer.save_pretrained(unified)
    report["unified"] = str(unified)
    return report
