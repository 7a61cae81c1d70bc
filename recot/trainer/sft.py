"""Supervised fine-tuning on curated exports with TRL's SFTTrainer, SID vocabulary included.

:class:`RecSFTConfig` is TRL's ``SFTConfig`` plus where the model and data live, the catalog whose
SIDs the model must speak, an optional embedding warm-up stage and LoRA. Conversational
``messages`` rows (the export's ``sft`` config) become prompt/completion rows, so every row trains
on its answer alone whatever the model's chat template (its default system prompt included: train
and evaluation render the same messages through the same template).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback
from trl import SFTConfig, SFTTrainer

from recot.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class RecSFTConfig(SFTConfig):
    model_path: str = field(default="", metadata={"help": "a causal LM folder (or hub id where the hub is reachable)"})
    dataset_path: str = field(default="", metadata={"help": "a recot export folder, or any folder datasets can load"})
    dataset_config: str | None = field(default="sft", metadata={"help": "the export's format to train on"})
    sid_catalog: str | None = field(default=None, metadata={
        "help": "a recot export folder (or its catalog.parquet) whose SIDs are added to the vocabulary"})
    embedding_warmup_steps: int = field(default=0, metadata={"help": "steps training only the SID embeddings first (needs sid_catalog)"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains every weight"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling"})
    gradient_checkpointing: bool | None = field(default=None, metadata={  # type: ignore[assignment]  # None: decided by the machine
        "help": "recompute activations in the backward pass (less memory, more time); None: on a GPU (TRL's default), "
                "off on a CPU, where memory is not what limits a small model"})
    fused_lm_head: bool | None = field(default=None, metadata={
        "help": "TRL's tiled fused LM head for the loss; None: only where its Triton kernel runs (CUDA). On a CPU its "
                "torch fallback takes about half of a step (bench/bench_sft_overhead.py)"})
    num_train_epochs: float = field(default=10.0, metadata={
        "help": "the most epochs: with early stopping, training ends when validation loss stops improving"})
    early_stopping_patience: int | None = field(default=2, metadata={
        "help": "stop after this many epochs without a lower validation loss and keep the best epoch's model (the "
                "export's validation split, never test); None or 0: train every epoch asked for"})

    def __post_init__(self) -> None:
        fit_to_machine(self)
        if self.early_stopping_patience:
            # the best epoch is chosen on validation loss: evaluate and checkpoint every epoch, load the best at the end
            self.eval_strategy = self.save_strategy = "epoch"
            self.load_best_model_at_end, self.metric_for_best_model, self.greater_is_better = True, "eval_loss", False
            self.save_total_limit = 1
        super().__post_init__()


class RecSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss, where the fused LM head would fall back to a per-tile torch loop (no Triton),
    is the model's plain cross-entropy over the completion labels, with the same normalisation and metrics.
    ``rows_too_long`` counts, per split, the rows TRL dropped because truncation to ``max_length`` left no answer token."""

    rows_too_long: dict[str, int]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.fused_lm_head or "labels" not in inputs or "attention_mask" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if model.training else "eval"
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        labels = inputs["labels"][:, 1:]
        valid = labels != -100
        # only the trained positions go through the softmax: a next-item row trains a handful of its tokens
        logprobs = torch.log_softmax(outputs.logits[:, :-1][valid].float(), dim=-1)
        targets = labels[valid]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        count = valid.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -picked.sum() / torch.as_tensor(count).clamp(min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # the count is every rank's tokens and DDP averages gradients over ranks: scale back, as Trainer does
            loss = loss * self.accelerator.num_processes
        with torch.no_grad():  # the metrics TRL logs: entropy and top-1 accuracy on the trained tokens, tokens seen
            shown = max(len(targets), 1)
            self._metrics[mode]["entropy"].append(float(-(logprobs.exp() * logprobs).sum()) / shown)
            self._metrics[mode]["mean_token_accuracy"].append(float((logprobs.argmax(-1) == targets).sum()) / shown)
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


def machine_defaults() -> dict:
    """Device settings that fit this machine: the CPU where there is no GPU; bf16 mixed precision (autocast over the
    float32 master weights the loader keeps) where the GPU supports it, and on a CPU only where it has bf16 in hardware
    (AMX or AVX512-BF16: measured faster there; elsewhere it is emulated and slower, bench/bench_student_cpu.py)."""
    if not torch.cuda.is_available():
        from recot.models.dtype import cpu_has_fast_bf16

        return {"use_cpu": True, "bf16": cpu_has_fast_bf16()}
    return {"bf16": torch.cuda.is_bf16_supported()}


def fit_to_machine(config) -> None:
    """Fill the device settings a TRL-style config left unset from :func:`machine_defaults`."""
    defaults = machine_defaults()
    if defaults.get("use_cpu"):
        config.use_cpu = True
    if config.bf16 is None:
        config.bf16 = defaults["bf16"] and not config.fp16
    if getattr(config, "gradient_checkpointing", False) is None:
        config.gradient_checkpointing = not defaults.get("use_cpu", False)
    if getattr(config, "fused_lm_head", False) is None:
        config.fused_lm_head = torch.cuda.is_available()


def load_model(config: RecSFTConfig):
    """Model and tokenizer, with the SID vocabulary added when ``sid_catalog`` is set; returns its token ids too."""
    from recot.models.loading import load_model as load_checkpoint
    from recot.models.loading import load_tokenizer

    tokenizer, model = load_tokenizer(config.model_path), load_checkpoint(config.model_path)  # float32 master weights
    if not config.sid_catalog:
        return model, tokenizer, []
    from recot.trainer.data import export_catalog
    from recot.trainer.sid_vocab import add_sid_vocabulary

    return model, tokenizer, add_sid_vocabulary(model, tokenizer, export_catalog(config.sid_catalog))


def _lora(config: RecSFTConfig):
    from peft import LoraConfig

    # the embeddings carry the SID rows: trained in full and saved with the adapter
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM",
                      modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True)


def train_sft(config: RecSFTConfig, train_dataset=None, eval_dataset=None, callbacks=None) -> RecSFTTrainer:
    """Run the (optional) embedding warm-up, then SFT; saves the model to ``output_dir``."""
    from recot.trainer.data import as_prompt_completion, check_template, load_export
    from recot.trainer.sid_vocab import freeze_for_warmup

    model, tokenizer, sid_ids = load_model(config)
    if train_dataset is None:
        loaded = load_export(config.dataset_path, config.dataset_config or "sft")
        train_dataset, eval_dataset = loaded["train"], loaded.get("validation")
    train_dataset = as_prompt_completion(train_dataset)
    eval_dataset = as_prompt_completion(eval_dataset) if eval_dataset is not None else None
    if "prompt" in train_dataset.column_names and isinstance(train_dataset[0]["prompt"], list):
        check_template(tokenizer, train_dataset[0], config.model_path)
    if config.embedding_warmup_steps and sid_ids:
        warm = fixed_length(config, max_steps=config.embedding_warmup_steps, output_dir=str(Path(str(config.output_dir)) / "warmup"))
        freeze_for_warmup(model, sid_ids)
        RecSFTTrainer(model=model, args=warm, train_dataset=train_dataset, processing_class=tokenizer).train()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    callbacks = list(callbacks or [])
    if config.early_stopping_patience and eval_dataset is None:
        if config.max_steps <= 0:  # the length would be num_train_epochs' maximum, chosen by nothing
            raise DataError(config.dataset_path or "[sft]", "early stopping needs a validation split and this data has none",
                            "export with valid_share > 0, or set early_stopping_patience = 0 and choose num_train_epochs")
        config = fixed_length(config)  # max_steps says how long
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
    trainer = RecSFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=_lora(config) if config.lora_r else None, callbacks=callbacks)
    count_rows_too_long(trainer, train_dataset, eval_dataset)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)  # the main process writes (under accelerate launch every rank gets here)
    if not trainer.is_world_process_zero():
        return trainer
    tokenizer.save_pretrained(str(config.output_dir))
    if config.early_stopping_patience:  # the best epoch's weights are the saved model: its checkpoints have done their work
        for checkpoint in Path(str(config.output_dir)).glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    return trainer


def count_rows_too_long(trainer: RecSFTTrainer, train_dataset, eval_dataset) -> None:
    """TRL drops a row whose prompt fills ``max_length`` (nothing of the answer is left to train on): count them per
    split on the trainer, and say so, so that no row leaves training unaccounted for; a split that loses every row is a
    named error (an empty validation split would only fail later, as a missing ``eval_loss``)."""
    prepared: dict[str, tuple[Any, Any]] = {"train": (train_dataset, trainer.train_dataset),
                                            "validation": (eval_dataset, trainer.eval_dataset)}
    trainer.rows_too_long = {part: len(given) - len(kept) for part, (given, kept) in prepared.items()
                             if given is not None and kept is not None}
    max_length, fix = getattr(trainer.args, "max_length", None), "raise max_length, or export shorter histories (max_history)"
    for part, dropped in trainer.rows_too_long.items():
        used = part == "train" or trainer.args.eval_strategy != "no"  # IntervalStrategy is a str enum
        if used and dropped and dropped == len(prepared[part][0]):  # nothing left to train on, or to choose the best epoch by
            where = f"{getattr(trainer.args, 'dataset_path', '') or '[sft]'} ({part})"
            raise DataError(where, f"all {dropped} rows have a prompt that fills max_length ({max_length} tokens), so none "
                            "has an answer token left", fix)
        if dropped:
            logger.warning("%d of %d %s rows are dropped: their prompt fills max_length (%s tokens) and leaves no answer "
                           "token to learn or score; %s", dropped, len(prepared[part][0]), part, max_length, fix)


def fixed_length(config: RecSFTConfig, **changes) -> RecSFTConfig:
    """``config`` (with ``changes``) trained for its max_steps or num_train_epochs, without evaluation or early stopping."""
    return replace(config, early_stopping_patience=0, eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
                   **changes)


def chosen_epoch(trainer) -> float | None:
    """The epoch whose model training kept: the best validation loss under early stopping, else the last."""
    if trainer.state.best_metric is None:
        return trainer.state.epoch
    return next((e["epoch"] for e in trainer.state.log_history if e.get("eval_loss") == trainer.state.best_metric), None)
