"""When does reasoning pay? The source designs' grid on a user's own curated data, with its cost, in one run.

Axes: alignment (none, or the align stage first: :mod:`recot.trainer.align`, trained once from the base) x
CoT ratio (the share of R3 SFT rows that keep their reasoning; default 0, 0.5, 1) x stage (after SFT, and
after GRPO with reasoning when configured). Every cell starts from the same base, is evaluated on the same
rows with and without reasoning, and is compared with the reference cell (no alignment, the lowest ratio,
after SFT, answering directly) by a paired bootstrap interval on those rows. Each cell's model also gets
the perception probe (:mod:`recot.trainer.probe`), so alignment is measured apart from recommendation.
One table (Recall@K and NDCG@K with 95% intervals, the paired difference, reasoning tokens per answer,
training tokens per sample, the epoch early stopping chose, the probe, wall time) goes to ``OUT/ablation.json``
and ``OUT/ablation.md``, with the probe of the base before and after alignment, and a plot to ``OUT/ablation.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recot.config import check_stage

if TYPE_CHECKING:
    from recot.trainer.evaluate import EvalConfig

ARMS = ("none", "align")  # the alignment axis


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: Path = Field(description="the curated store (recot curate): its traces are exported once per ratio")
    dataset: Path = Field(description="the dataset the traces came from: each export's decontamination and held-out rows")
    base_model: str = Field(description="the model every cell starts from (a folder or hub id)")
    out: Path = Field(Path("out/ablation"), description="one folder per ratio, and the table and plot")
    ratios: list[float] = Field([0.0, 0.5, 1.0], min_length=1, description="shares of R3 SFT rows that keep their CoT")
    tasks: list[str] | None = Field(["r3_cot_hindsight"], description="the tasks exported (default: R3 hindsight traces; "
                                    "add r1_relation for the align format's relations)")
    align: dict[str, Any] | None = Field(None, description="RecAlignConfig settings: adds the alignment axis, every ratio "
                                         "once from the base and once from the base aligned (omit: no alignment axis)")
    sft: dict[str, Any] = Field(default_factory=dict, description="RecSFTConfig settings, the same for every cell")
    grpo: dict[str, Any] | None = Field(None, description="RecGRPOConfig settings: GRPO with reasoning after each SFT (omit: none)")
    eval: dict[str, Any] = Field(default_factory=lambda: {"baselines": ["most_popular"]},
                                 description="EvalConfig settings (model, export and out are the ablation's)")
    probe_items: int = Field(100, ge=0, description="items per role (trained, held out) of each cell's perception probe (0: none)")

    @field_validator("ratios")
    @classmethod
    def _shares(cls, ratios: list[float]) -> list[float]:
        if any(not 0 <= r <= 1 for r in ratios) or len(set(ratios)) != len(ratios):
            raise ValueError("ratios are distinct shares between 0 and 1")
        return sorted(ratios)

    @model_validator(mode="after")
    def _stage_settings(self) -> AblationConfig:
        """Check every stage's settings now, not after the first model has trained."""
        from recot.trainer.align import RecAlignConfig
        from recot.trainer.evaluate import EvalConfig
        from recot.trainer.grpo import RecGRPOConfig
        from recot.trainer.sft import RecSFTConfig

        check_stage(RecSFTConfig, self.sft, "sft", output_dir=str(self.out / "sft"))
        if self.align is not None:
            check_stage(RecAlignConfig, self.align, "align", output_dir=str(self.out / "align"))
        if self.grpo is not None:
            check_stage(RecGRPOConfig, self.grpo, "grpo", output_dir=str(self.out / "grpo"))
        check_stage(EvalConfig, self.eval, "eval", model=self.out, export=self.out, out=self.out)
        return self

    def arms(self) -> tuple[str, ...]:
        return ARMS if self.align is not None else ARMS[:1]

    def eval_settings(self, model: Path, export: Path, out: Path) -> EvalConfig:
        """The EvalConfig of one cell's evaluation (both modes, on the same rows as every other cell)."""
        from recot.trainer.evaluate import EvalConfig

        return EvalConfig(**{**self.eval, "model": model, "export": export, "out": out, "think": True})


def run_ablation(config: AblationConfig) -> list[dict[str, Any]]:
    """Every cell of the grid, trained, evaluated (direct and think), probed and compared; returns the table rows."""
    from recot.curation.export import ExportConfig, export
    from recot.curation.store import Store

    config.out.mkdir(parents=True, exist_ok=True)
    formats: list = ["sft", "grpo"] + (["align"] if config.align is not None or config.probe_items else [])
    with Store.existing(config.store) as store:  # every export carries the store's split: each ratio is evaluated on the same rows
        exports = {}
        for ratio in config.ratios:
            folder = config.out / f"cot-{ratio:g}" / "export"
            card = export(store, ExportConfig(name=f"ablation-cot-{ratio:g}", out=folder, cot_ratio=ratio, dataset=config.dataset,
                                              tasks=config.tasks, formats=formats, overwrite=True))
            exports[ratio] = (folder, card["formats"]["sft"]["train"])
    starts, summary = _bases(config, exports[config.ratios[0]][0])
    table: list[dict[str, Any]] = []
    for arm in config.arms():
        for ratio, (folder, rows) in exports.items():
            table += _cell(config, arm, starts[arm], ratio, folder, rows)
            _compare(table, config)  # the reference cell is the first one run
            _write(config.out, table, summary)  # after every cell: a grid stopped part-way keeps what it measured
    _plot(table, config.out / "ablation.png")
    return table


def _write(out: Path, table: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    (out / "ablation.json").write_text(json.dumps({"bases": summary, "table": table}, indent=1) + "\n")
    (out / "ablation.md").write_text(_markdown(table, summary))


def _bases(config: AblationConfig, export: Path) -> tuple[dict[str, str | Path], dict[str, Any]]:
    """Where each arm starts (the base; the base aligned once, on the align rows every export shares) and, for the
    table, the alignment's cost and the probe of the base before and after it."""
    from recot.runs.stages import train_stage
    from recot.trainer.sft import chosen_epoch

    starts: dict[str, str | Path] = {"none": config.base_model}
    summary: dict[str, Any] = {}
    if config.probe_items:
        summary["base_probe"] = _probe(config.base_model, export, config.probe_items, add_sids=True)
    if config.align is not None:
        aligned, started = config.out / "aligned-base", time.perf_counter()
        trainer = train_stage("align", {"probe_items": config.probe_items, **config.align}, config.base_model, export, aligned)
        summary["align"] = {"train_s": round(time.perf_counter() - started, 1), "epoch": chosen_epoch(trainer),
                            "probe": _read_probe(aligned)}
        starts["align"] = aligned
    return starts, summary


def _cell(config: AblationConfig, arm: str, start: str | Path, ratio: float, export: Path, rows: int) -> list[dict[str, Any]]:
    """One arm at one ratio: SFT from the arm's start, then GRPO when configured, each evaluated and probed."""
    from recot.runs.stages import train_stage
    from recot.trainer.sft import chosen_epoch

    folder = export.parent / arm
    sft_dir, started = folder / "sft", time.perf_counter()
    trainer = train_stage("sft", config.sft, start, export, sft_dir)
    trained_s = time.perf_counter() - started
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]  # the rows as tokenised for training
    per_sample = sum(lengths) / max(len(lengths), 1)
    cell = {"align": arm, "cot_ratio": ratio, "train_rows": rows, "epoch": chosen_epoch(trainer)}
    table = _evaluated(config, sft_dir, export, cell | {"stage": "sft", "train_tokens_per_sample": round(per_sample, 1),
                                                      "train_s": round(trained_s, 1)})
    if config.grpo is not None:
        from recot.trainer.grpo import learning_signal

        grpo_dir, started = folder / "grpo", time.perf_counter()
        signal = learning_signal(train_stage("grpo", config.grpo, sft_dir, export, grpo_dir))
        table += _evaluated(config, grpo_dir, export, cell | {"stage": "sft+grpo", "train_tokens_per_sample": None,
                                                            "train_s": round(trained_s + time.perf_counter() - started, 1),
                                                            "grpo_signal": signal})
    return table


def _evaluated(config: AblationConfig, model: Path, export: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Two table rows for one model, without and with reasoning, on the same evaluation rows, with its probe."""
    from recot.trainer.evaluate import evaluate

    started = time.perf_counter()
    out = model.parent / f"eval-{row['stage']}"
    settings = config.eval_settings(model, export, out)
    report = evaluate(settings)
    probe = _probe(model, export, config.probe_items) if config.probe_items else None
    row = row | {"eval_s": round(time.perf_counter() - started, 1), "eval_rows": report["rows"], "eval_out": str(out), "probe": probe}
    k = settings.k
    return [row | {"mode": mode, f"recall@{k}": report[mode][f"recall@{k}"], f"ndcg@{k}": report[mode][f"ndcg@{k}"],
                   f"recall@{k}_ci95": report[mode]["ci95"].get(f"recall@{k}"),
                   "cot_tokens": report[mode].get("cot_tokens", 0.0)} for mode in ("direct", "think")]


def _probe(model: str | Path, export: Path, items: int, add_sids: bool = False) -> dict[str, Any]:
    """The perception probe of a saved model (``add_sids``: a base without the SID vocabulary gets it, as SFT adds it)."""
    from recot.models.loading import load_model, load_tokenizer
    from recot.trainer.data import export_catalog
    from recot.trainer.probe import perception_probe
    from recot.trainer.sid_vocab import add_sid_vocabulary

    network, tokenizer = load_model(model), load_tokenizer(model)
    if add_sids:
        add_sid_vocabulary(network, tokenizer, export_catalog(export))
    return perception_probe(network, tokenizer, export, items)


def _read_probe(model: Path) -> dict[str, Any] | None:
    from recot.trainer.probe import PROBE_FILE

    path = model / PROBE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _compare(table: list[dict[str, Any]], config: AblationConfig) -> None:
    """Each row's difference from the reference cell (no alignment, the lowest ratio, after SFT, direct) on the same
    rows, with a paired bootstrap 95% interval, under ``vs_reference``; rows compared before keep theirs."""
    import numpy as np

    from recot.trainer.evaluate import paired_difference

    reference = next(r for r in table if r["align"] == "none" and r["cot_ratio"] == config.ratios[0] and r["stage"] == "sft"
                     and r["mode"] == "direct")
    settings = config.eval_settings(config.out, config.out, config.out)
    new = [row for row in table if "vs_reference" not in row]
    ranks = {out: json.loads((Path(out) / "ranks.json").read_text()) for out in {r["eval_out"] for r in [reference, *new]}}
    base = np.array(ranks[reference["eval_out"]]["direct"], dtype=np.int64)
    k = settings.k
    for row in new:
        other = np.array(ranks[row["eval_out"]][row["mode"]], dtype=np.int64)
        difference = paired_difference(base, other, [k], settings.bootstrap)
        row["vs_reference"] = {name: difference[name] for name in (f"recall@{k}", f"ndcg@{k}")}


def _recall_key(table: list[dict[str, Any]]) -> str:
    return next(key for key in table[0] if key.startswith("recall@") and not key.endswith("ci95"))


def _probe_cell(probe: dict[str, Any] | None) -> str:
    """Title -> SID accuracy on trained / held-out items."""
    if not probe:
        return "-"
    return f"{probe['train']['title_to_sid_accuracy']:.3f} / {probe.get('held_out', {}).get('title_to_sid_accuracy', 0):.3f}"


def _markdown(table: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    recall = _recall_key(table)
    k = recall.split("@")[1]
    lines = [f"| align | CoT ratio | stage | mode | Recall@{k} (95% CI) | vs reference (paired 95%) | NDCG@{k} | CoT tokens / answer | "
             "train tokens / sample | epoch | title->SID train / held out | train s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        ci = r[f"{recall}_ci95"]
        interval = f" ({ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
        diff = r["vs_reference"][recall]
        paired = f"{diff['difference']:+.4f} ({diff['ci95'][0]:+.4f} to {diff['ci95'][1]:+.4f})" if diff["ci95"] else f"{diff['difference']:+.4f}"
        epoch = f"{r['epoch']:.2g}" if r["epoch"] is not None else "-"
        lines.append(f"| {r['align']} | {r['cot_ratio']:g} | {r['stage']} | {r['mode']} | {r[recall]:.4f}{interval} | {paired} | "
                     f"{r[f'ndcg@{k}']:.4f} | {r['cot_tokens']:.1f} | "
                     f"{r['train_tokens_per_sample'] if r['train_tokens_per_sample'] is not None else '-'} | {epoch} | "
                     f"{_probe_cell(r['probe'])} | {r['train_s']} | {r['eval_s']} |")
    notes = []
    if "base_probe" in summary:
        notes.append(f"Base with the SID vocabulary added, title->SID train / held out: {_probe_cell(summary['base_probe'])} "
                     f"(chance {summary['base_probe']['chance']['title_to_sid']:.4f}).")
    if "align" in summary:
        notes.append(f"Aligned base: {_probe_cell(summary['align']['probe'])}, epoch {summary['align']['epoch']:.2g}, "
                     f"{summary['align']['train_s']} s.")
    for r in table:  # GRPO that had nothing to learn from says so: its rows equal SFT's for a reason
        signal = r.get("grpo_signal")
        if r["mode"] == "direct" and signal and signal["steps_without_reward_spread"]:
            notes.append(f"GRPO ({r['align']}, ratio {r['cot_ratio']:g}): no reward spread on {signal['steps_without_reward_spread']} "
                         f"of {signal['logged_steps']} logged steps" + (f"; {signal['fix']}." if "fix" in signal else "."))
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = _recall_key(table)
    figure, axis = plt.subplots(figsize=(7, 4))
    for arm in dict.fromkeys(r["align"] for r in table):
        for stage in dict.fromkeys(r["stage"] for r in table):
            for mode in ("direct", "think"):
                rows = [r for r in table if r["align"] == arm and r["stage"] == stage and r["mode"] == mode]
                axis.plot([r["cot_ratio"] for r in rows], [r[k] for r in rows], marker="o", linestyle="-" if arm == "align" else "--",
                          label=f"{'aligned' if arm == 'align' else 'no align'}, {stage}, {mode}")
    axis.set_xlabel("share of SFT rows with CoT")
    axis.set_ylabel(k.replace("recall", "Recall"))
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
