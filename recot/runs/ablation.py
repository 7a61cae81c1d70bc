"""Think vs no-think on a user's own curated data, with its cost, in one run.

For each CoT ratio (default 0, 0.5, 1) the store's traces are exported with that share of R3 SFT
rows keeping their reasoning, a model is fine-tuned from the same base on it, and evaluated on the
same rows with and without reasoning; optionally GRPO with reasoning follows and is evaluated too.
One table (Recall@10, NDCG@10 with their 95% intervals, reasoning tokens per answer, training
tokens per sample and epoch, wall time) goes to ``OUT/ablation.json`` and ``OUT/ablation.md``, and a plot to
``OUT/ablation.png``. The field's open question (does CoT data pay?) then has an answer on the
user's own data instead of a paper's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recot.config import check_stage


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: Path = Field(description="the curated store (recot curate): its traces are exported once per ratio")
    dataset: Path = Field(description="the dataset the traces came from: each export's decontamination and held-out rows")
    base_model: str = Field(description="the model every ratio's SFT starts from (a folder or hub id)")
    out: Path = Field(Path("out/ablation"), description="one folder per ratio, and the table and plot")
    ratios: list[float] = Field([0.0, 0.5, 1.0], min_length=1, description="shares of R3 SFT rows that keep their CoT")
    tasks: list[str] | None = Field(["r3_cot_hindsight"], description="the tasks exported (default: R3 hindsight traces)")
    sft: dict[str, Any] = Field(default_factory=dict, description="RecSFTConfig settings, the same for every ratio")
    grpo: dict[str, Any] | None = Field(None, description="RecGRPOConfig settings: GRPO with reasoning after each SFT (omit: none)")
    eval: dict[str, Any] = Field(default_factory=lambda: {"baselines": ["most_popular"]},
                                 description="EvalConfig settings (model, export and out are the ablation's)")

    @field_validator("ratios")
    @classmethod
    def _shares(cls, ratios: list[float]) -> list[float]:
        if any(not 0 <= r <= 1 for r in ratios) or len(set(ratios)) != len(ratios):
            raise ValueError("ratios are distinct shares between 0 and 1")
        return ratios

    @model_validator(mode="after")
    def _stage_settings(self) -> AblationConfig:
        """Check every stage's settings now, not after the first model has trained."""
        from recot.trainer.evaluate import EvalConfig
        from recot.trainer.grpo import RecGRPOConfig
        from recot.trainer.sft import RecSFTConfig

        check_stage(RecSFTConfig, self.sft, "sft", output_dir=str(self.out / "sft"))
        if self.grpo is not None:
            check_stage(RecGRPOConfig, self.grpo, "grpo", output_dir=str(self.out / "grpo"))
        check_stage(EvalConfig, self.eval, "eval", model=self.out, export=self.out, out=self.out)
        return self


def run_ablation(config: AblationConfig) -> list[dict[str, Any]]:
    """Export, SFT, evaluate (direct and think) and optionally GRPO + evaluate, per ratio; returns the table rows."""
    from recot.curation.export import ExportConfig, export
    from recot.curation.store import Store
    from recot.runs.stages import train_stage

    config.out.mkdir(parents=True, exist_ok=True)
    with Store.existing(config.store) as store:  # every export carries the store's split: each ratio is evaluated on the same rows
        exports = {}
        for ratio in config.ratios:
            folder = config.out / f"cot-{ratio:g}" / "export"
            card = export(store, ExportConfig(name=f"ablation-cot-{ratio:g}", out=folder, cot_ratio=ratio, dataset=config.dataset,
                                              tasks=config.tasks, formats=["sft", "grpo"], overwrite=True))
            exports[ratio] = (folder, card["formats"]["sft"]["train"])
    table = []
    for ratio, (folder, rows) in exports.items():
        sft_dir, started = folder.parent / "sft", time.perf_counter()
        trainer = train_stage("sft", config.sft, config.base_model, folder, sft_dir)
        trained_s = time.perf_counter() - started
        tokens = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)  # summed over every epoch
        per_sample = tokens / max(rows * trainer.state.epoch, 1e-9)
        table += _evaluated(config, sft_dir, folder, {"cot_ratio": ratio, "stage": "sft", "train_rows": rows,
                                              "train_tokens_per_sample": round(per_sample, 1), "train_s": round(trained_s, 1)})
        if config.grpo is not None:
            grpo_dir, started = folder.parent / "grpo", time.perf_counter()
            train_stage("grpo", config.grpo, sft_dir, folder, grpo_dir)
            table += _evaluated(config, grpo_dir, folder, {"cot_ratio": ratio, "stage": "sft+grpo", "train_rows": rows,
                                                   "train_tokens_per_sample": None,
                                                   "train_s": round(trained_s + time.perf_counter() - started, 1)})
    (config.out / "ablation.json").write_text(json.dumps(table, indent=1) + "\n")
    (config.out / "ablation.md").write_text(_markdown(table))
    _plot(table, config.out / "ablation.png")
    return table


def _evaluated(config: AblationConfig, model: Path, export: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Two table rows for one model, without and with reasoning, on the same evaluation rows."""
    from recot.trainer.evaluate import EvalConfig, evaluate

    started = time.perf_counter()
    settings = EvalConfig(**{**config.eval, "model": model, "export": export, "out": model.parent / f"eval-{row['stage']}", "think": True})
    report = evaluate(settings)
    row = row | {"eval_s": round(time.perf_counter() - started, 1), "eval_rows": report["rows"]}
    k = settings.k
    return [row | {"mode": mode, f"recall@{k}": report[mode][f"recall@{k}"], f"ndcg@{k}": report[mode][f"ndcg@{k}"],
                   f"recall@{k}_ci95": report[mode]["ci95"].get(f"recall@{k}"),
                   "cot_tokens": report[mode].get("cot_tokens", 0.0)} for mode in ("direct", "think")]


def _markdown(table: list[dict[str, Any]]) -> str:
    k = next(key for key in table[0] if key.startswith("recall@") and not key.endswith("ci95")).split("@")[1]
    lines = [f"| CoT ratio | stage | mode | Recall@{k} (95% CI) | NDCG@{k} | CoT tokens / answer | train tokens / sample | train s | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        ci = r[f"recall@{k}_ci95"]
        interval = f" ({ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
        lines.append(f"| {r['cot_ratio']:g} | {r['stage']} | {r['mode']} | {r[f'recall@{k}']:.4f}{interval} | {r[f'ndcg@{k}']:.4f} | "
                     f"{r['cot_tokens']:.1f} | {r['train_tokens_per_sample'] if r['train_tokens_per_sample'] is not None else '-'} | "
                     f"{r['train_s']} | {r['eval_s']} |")
    return "\n".join(lines) + "\n"


def _plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = next(key for key in table[0] if key.startswith("recall@") and not key.endswith("ci95"))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for stage in dict.fromkeys(r["stage"] for r in table):
        for mode in ("direct", "think"):
            rows = [r for r in table if r["stage"] == stage and r["mode"] == mode]
            axis.plot([r["cot_ratio"] for r in rows], [r[k] for r in rows], marker="o", label=f"{stage}, {mode}")
    axis.set_xlabel("share of SFT rows with CoT")
    axis.set_ylabel(k.replace("recall", "Recall"))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
