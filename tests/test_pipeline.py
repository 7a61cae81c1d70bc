"""The contract between stages, tested across stages: one config loader, one split, one SID grammar per
dataset, exports that training reads exactly, and `recot run` that skips what is unchanged."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from recot.config import load_config
from recot.curation.export import ExportConfig, export
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.data.sid_files import convert_sid_file
from recot.errors import DataError
from recot.formats.sid import SidDialect, parse_sid
from recot.formats.splits import SplitSpec
from recot.runs.pipeline import load_pipeline, run_pipeline
from recot.synth.job import SynthConfig, run_synth
from recot.testing import RECOT

datasets = pytest.importorskip("datasets")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_typo_gets_the_closest_key(tmp_path, sample_path):
    bad = _write(tmp_path / "job.toml", f'dataset = "{sample_path}"\n[sampling]\ntempature = 0.5\n')
    with pytest.raises(DataError, match=r"sampling\.tempature.*\n.*did you mean 'sampling\.temperature'"):
        load_config(SynthConfig, bad)
    teacher = _write(tmp_path / "t.toml", f'dataset = "{sample_path}"\n[teacher]\nkind = "openai"\nmodel = "m"\nbase_url = ["u"]\n')
    with pytest.raises(DataError, match="did you mean 'teacher.base_urls'"):
        load_config(SynthConfig, teacher)  # the teacher's fields are its kind's own
    teacher.write_text(f'dataset = "{sample_path}"\n[teacher]\nkind = "rules"\nengine = {{}}\n')
    with pytest.raises(DataError, match="unknown setting 'teacher.engine' in RulesTeacherConfig"):
        load_config(SynthConfig, teacher)
    teacher.write_text(f'dataset = "{sample_path}"\n[teacher]\nmodel = "m"\n')
    with pytest.raises(DataError, match="teacher.kind to one of 'rules', 'vllm', 'openai'"):
        load_config(SynthConfig, teacher)
    bad = _write(tmp_path / "top.toml", f'datset = "{sample_path}"\n')
    with pytest.raises(DataError, match="did you mean 'dataset'"):
        load_config(SynthConfig, bad)
    from recot.trainer.sft import RecSFTConfig

    with pytest.raises(DataError, match="did you mean 'learning_rate'"):
        load_config(RecSFTConfig, _write(tmp_path / "sft.toml", "learning_rat = 0.1\n"))
    from recot.runs.recipe import RecipeConfig

    recipe = _write(tmp_path / "recipe.yaml", "base_model: m\nexport: e\nout: o\ngrpo:\n  num_candidate: 4\n")
    with pytest.raises(DataError, match="grpo.num_candidate.*did you mean 'grpo.num_candidates'"):
        load_config(RecipeConfig, recipe)
    recipe.write_text("base_model: m\nexport: e\nout: o\ngrpo:\n  per_device_train_batch_size: 3\n  num_generations: 2\n")
    with pytest.raises(DataError, match=r"\[grpo\].*divisible by num_generations"):
        load_config(RecipeConfig, recipe)  # a bad value too, before any expert trains


def test_paths_are_relative_to_the_config_file(tmp_path, sample_path):
    folder = tmp_path / "jobs"
    (folder / "models" / "teacher").mkdir(parents=True)
    job = _write(folder / "job.toml", f'dataset = "{sample_path}"\nout = "out"\n[teacher]\nkind = "vllm"\nmodel = "models/teacher"\n')
    config = load_config(SynthConfig, job)
    assert config.out == folder / "out" and config.teacher.model == str(folder / "models" / "teacher")
    hub = _write(folder / "hub.toml", f'dataset = "{sample_path}"\n[teacher]\nkind = "vllm"\nmodel = "Qwen/Qwen3-8B"\n')
    assert load_config(SynthConfig, hub).teacher.model == "Qwen/Qwen3-8B"  # not a folder here: a hub id stays
    from recot.trainer.sft import RecSFTConfig

    sft = load_config(RecSFTConfig, _write(folder / "sft.toml", 'model_path = "models/teacher"\ndataset_path = "export"\n'
                                                                'output_dir = "ckpt"\n'))
    assert (sft.model_path, sft.dataset_path, sft.output_dir) == tuple(str(folder / p) for p in ("models/teacher", "export", "ckpt"))
    assert sft.use_cpu and not sft.bf16  # no GPU here: the machine's defaults, not TRL's bf16


@pytest.fixture(scope="module")
def curated(sample_path, sample, tmp_path_factory):
    """R3 traces synthesised on a leave-last-out split (the sample's default would be temporal), curated."""
    work = tmp_path_factory.mktemp("contract")
    run_synth(SynthConfig(dataset=sample_path, out=work / "synth", tasks=["r3_cot_hindsight", "r3_cot_blind"], limit=120,
                          split="leave_last_out"), progress=False)
    store = Store(work / "c.duckdb")
    store.load_catalog(sample.catalog)
    store.ingest(work / "synth" / "traces.parquet")
    run_rules(store)
    yield work, store
    store.close()


def test_the_split_chosen_at_synthesis_reaches_export_and_eval(curated, sample_path, tmp_path):
    work, store = curated
    spec = SplitSpec.load(work / "synth")
    assert spec.kind == "leave_last_out" and store.split_spec() == spec
    card = export(store, ExportConfig(name="s", out=tmp_path / "e", dataset=sample_path, formats=["grpo"]))
    assert card["decontamination"]["split"] == spec.model_dump() and card["decontamination"]["split_source"] == "recorded at synthesis"
    other = SplitSpec(kind="temporal", max_history=10, valid_start=1, test_start=2)
    (tmp_path / "other").mkdir()
    other.save(tmp_path / "other")
    shutil.copy(work / "synth" / "traces.parquet", tmp_path / "other" / "traces.parquet")
    with pytest.raises(DataError, match="split"):
        store.ingest(tmp_path / "other" / "traces.parquet")


def test_grpo_rows_do_not_depend_on_the_cot_ratio(curated, tmp_path):
    _, store = curated
    rows = {}
    for ratio in (0.0, 0.5, 1.0):
        export(store, ExportConfig(name="r", out=tmp_path / str(ratio), cot_ratio=ratio, formats=["grpo", "sft"]))
        rows[ratio] = pl.read_parquet(tmp_path / str(ratio) / "grpo" / "train-*.parquet").sort("user_id", "target")
    assert rows[0.0].height > 0
    assert rows[0.0].equals(rows[0.5]) and rows[0.0].equals(rows[1.0])


def test_training_reads_exactly_the_export_it_is_given(curated, tiny_model, tmp_path):
    """Export into one folder, train; export other rows into the same folder (and into a folder of the same
    name elsewhere), train again: each training run sees the rows its export wrote."""
    from recot.trainer.sft import RecSFTConfig, train_sft

    _, store = curated
    seen = []
    for out, selection in ((tmp_path / "a" / "export", None), (tmp_path / "a" / "export", 2), (tmp_path / "b" / "export", 1)):
        export(store, ExportConfig(name="x", out=out, formats=["sft"], top_k_per_user=selection, overwrite=True))
        written = pl.read_parquet(out / "sft" / "train-*.parquet").height
        config = load_config(RecSFTConfig, overrides=dict(model_path=str(tiny_model), dataset_path=str(out),
                                                          output_dir=str(tmp_path / "model"), max_steps=1,
                                                          per_device_train_batch_size=2, report_to="none",
                                                          save_strategy="no", max_length=256, early_stopping_patience=0))
        trainer = train_sft(config)
        seen.append((written, trainer.train_dataset.num_rows, trainer.rows_too_long["train"]))
    assert len({written for written, _, _ in seen}) == 3, seen  # three different exports
    # every row is trained on or counted as too long for max_length (TRL drops a prompt that fills it)
    assert all(written == trained + too_long for written, trained, too_long in seen) and any(n for _, _, n in seen), seen


def test_a_split_whose_every_prompt_fills_max_length_is_a_named_error(curated, tiny_model, tmp_path):
    """A max_length no prompt fits leaves nothing to train on (and no validation loss to stop on): the error names the
    export, the split and the fix, before any step runs."""
    from recot.trainer.sft import RecSFTConfig, train_sft

    _, store = curated
    out = tmp_path / "export"
    export(store, ExportConfig(name="x", out=out, formats=["sft"], overwrite=True))
    config = load_config(RecSFTConfig, overrides=dict(model_path=str(tiny_model), dataset_path=str(out),
                                                      output_dir=str(tmp_path / "model"), max_steps=1, report_to="none",
                                                      max_length=8))
    with pytest.raises(DataError, match=r"\(train\): all \d+ rows have a prompt that fills max_length \(8 tokens\)") as error:
        train_sft(config)
    assert str(out) in str(error.value) and "raise max_length" in str(error.value)
    assert not list((tmp_path / "model").glob("*.safetensors")) and not list((tmp_path / "model").glob("checkpoint-*"))


def _dialect_copy(sample_path: Path, folder: Path, example: str) -> Path:
    """The sample with every SID written in the dialect of ``example``: sids.json through `recot sid convert`'s
    code, the CSVs' SID columns by rewriting each SID."""
    shutil.copytree(sample_path, folder)
    dialect = SidDialect.detect(example)
    convert_sid_file(sample_path / "sids.json", folder / "sids.json", dialect, "sid", False)
    for csv in folder.glob("*.csv"):
        text = csv.read_text(encoding="utf-8")
        csv.write_text(re.sub(r"(?:<[a-z]_\d+>)+", lambda m: dialect.format(parse_sid(m.group(0))[0]), text), encoding="utf-8")
    return folder


PIPELINE = """dataset = "{dataset}"
out = "{out}"
[synth]
tasks = ["r3_cot_hindsight", "r3_cot_blind", "r0_caption"]
limit = {limit}
{templates}
[judge]
[dedup]
[export]
name = "t"
cot_ratio = 0.5
"""
TRAIN = """[tiny_model]
[pretrain]
max_steps = 1
per_device_train_batch_size = 4
max_length = 128
[align]
max_steps = 1
per_device_train_batch_size = 4
max_length = 128
probe_items = 2
[sft]
max_steps = 2
per_device_train_batch_size = 4
max_length = 384
[grpo]
max_steps = 1
per_device_train_batch_size = 2
num_generations = 2
num_candidates = 2
max_reasoning_tokens = 8
max_completion_length = 24
[eval]
limit = 4
k = 3
samples = 1
max_reasoning_tokens = 8
"""


@pytest.mark.parametrize("example", ["<item_a_1><item_b_2><item_c_3>", "<|sid_begin|><s_a_1><s_b_2><s_c_3><|sid_end|>"])
def test_non_default_dialects_end_to_end(example, sample_path, tmp_path):
    """synth -> curate -> export -> pretrain -> align -> sft -> grpo -> eval on the sample rewritten in another SID dialect."""
    dataset = _dialect_copy(sample_path, tmp_path / "data", example)
    config = _write(tmp_path / "p.toml", PIPELINE.format(dataset=dataset, out=tmp_path / "out", limit=40, templates="") + TRAIN)
    results = {r.name: r for r in run_pipeline(load_pipeline(config), progress=False, log=lambda _: None)}
    with Store(tmp_path / "out" / "curation.duckdb") as store:
        failed = dict(store.con.execute("SELECT rule, count(*) FILTER (WHERE NOT passed) FROM verdicts GROUP BY rule").fetchall())
        mentioned = store.scalar("SELECT count(*) FROM scores WHERE name = 'cov_rate' AND value > 0")
        pattern = store.sid_pattern()
        with_sids = store.scalar(f"SELECT count(*) FROM traces WHERE status = 'ok' AND len(regexp_extract_all(text, '{pattern}')) > 0")
        answered = store.scalar("SELECT count(*) FROM traces WHERE status = 'ok'")
    assert pattern == SidDialect.detect(example).pattern()  # the store knows the dataset's dialect
    assert with_sids == answered, (with_sids, answered)  # every answer names a SID the rules can see
    assert failed["sid_validity"] == 0 and failed["grounding"] == 0 and failed["cot_format"] == 0, failed
    assert mentioned > 0  # grounding found the history's SIDs in the reasoning
    grpo = pl.read_parquet(tmp_path / "out" / "export" / "grpo" / "train-*.parquet")
    assert grpo["target_sid"].str.contains(SidDialect.detect(example).pattern(3)).all()
    report = json.loads((tmp_path / "out" / "eval" / "report.json").read_text())
    assert report["direct"]["sid_validity"] == 1.0 and report["think"]["sid_validity"] == 1.0
    assert report["split"] == SplitSpec.load(tmp_path / "out" / "synth").model_dump()
    assert [r.status for r in results.values()] == ["ran"] * len(results)
    chain = [(name, results[name].summary["from"]) for name in ("pretrain", "align", "sft", "grpo")]
    assert chain == [("pretrain", str(tmp_path / "out" / "base-model")), ("align", str(tmp_path / "out" / "pretrain")),
                     ("sft", str(tmp_path / "out" / "align")), ("grpo", str(tmp_path / "out" / "sft"))]
    assert results["align"].summary["probe"]["train"]["items"] == 2  # the probe, in the dialect's SIDs
    aligned = pl.read_parquet(tmp_path / "out" / "export" / "align" / "train-*.parquet").filter(pl.col("kind") == "text_to_sid")
    assert aligned["completion"].str.contains(SidDialect.detect(example).pattern(3)).all()


def test_run_twice_does_nothing_and_a_changed_template_reruns_what_follows(sample_path, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    config = _write(tmp_path / "p.toml", PIPELINE.format(dataset=sample_path, out=tmp_path / "out", limit=20,
                                                         templates=f'templates = "{templates}"'))

    def run() -> dict[str, str]:
        done = subprocess.run([*RECOT, "run", str(config), "--json", "--no-progress"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return {r["name"]: r["status"] for r in json.loads(done.stdout)}

    first = run()
    assert list(first) == ["synth", "curate", "judge", "dedup", "export"] and set(first.values()) == {"ran"}
    assert set(run().values()) == {"skipped"}
    from importlib.resources import files

    source = Path(str(files("recot.prompts"))) / "judge.j2"  # the judge reads it; synthesis renders every template
    (templates / "judge.j2").write_text(source.read_text().replace("Score it from", "Rate it from"))
    assert set(run().values()) == {"ran"}  # synthesis fingerprints every template it loads
    assert set(run().values()) == {"skipped"}
    state = json.loads((tmp_path / "out" / "pipeline-state.json").read_text())
    rules = _write(tmp_path / "p.toml", config.read_text() + "[rules]\ngrounding = { min_cov = 0.0 }\n")
    assert rules == config
    assert run() == {"synth": "skipped", "curate": "ran", "judge": "ran", "dedup": "ran", "export": "ran"}
    assert json.loads((tmp_path / "out" / "pipeline-state.json").read_text())["synth"] == state["synth"]


def test_every_example_config_loads(tmp_path):
    """The README's example configs validate as written (keys, types, sub-configs, paths from the file)."""
    from recot.curation.judge import JudgeConfig
    from recot.curation.rules import RulesConfig
    from recot.runs.ablation import AblationConfig
    from recot.runs.pipeline import PipelineConfig
    from recot.runs.recipe import RecipeConfig
    from recot.trainer.align import RecAlignConfig, RecPretrainConfig
    from recot.trainer.evaluate import EvalConfig
    from recot.trainer.grpo import RecGRPOConfig
    from recot.trainer.sft import RecSFTConfig

    examples = Path(__file__).resolve().parent.parent / "examples"
    kinds = {"synth-demo.toml": SynthConfig, "synth-smollm2.toml": SynthConfig, "pipeline-demo.toml": PipelineConfig,
             "pipeline-smollm2.toml": PipelineConfig, "rules.toml": RulesConfig,
             "judge.toml": JudgeConfig, "sft.toml": RecSFTConfig, "grpo.toml": RecGRPOConfig, "recipe.toml": RecipeConfig,
             "eval.toml": EvalConfig, "ablation.toml": AblationConfig, "pretrain.toml": RecPretrainConfig,
             "align.toml": RecAlignConfig}
    overrides = {"export.toml": {"name": "x", "out": tmp_path}}
    kinds["export.toml"] = ExportConfig
    assert {p.name for p in examples.glob("*.toml")} == set(kinds)
    for name, kind in kinds.items():
        config = load_config(kind, examples / name, overrides.get(name))
        assert config is not None
    sft = load_config(RecSFTConfig, examples / "sft.toml")
    assert Path(sft.model_path) == examples.parent / "out" / "demo" / "base-model"
    recipe = load_config(RecipeConfig, examples / "recipe.toml")
    assert Path(recipe.base_model) == examples.parent / "out" / "demo" / "sft"
    ablation = load_config(AblationConfig, examples / "ablation.toml")
    assert ablation.store == examples.parent / "out" / "demo" / "curation.duckdb"


def test_recot_config_lists_every_config():
    from click.testing import CliRunner

    from recot.cli.run import CONFIGS, config_cmd

    for name in CONFIGS:
        done = CliRunner().invoke(config_cmd, [name, "--json"])
        assert done.exit_code == 0, (name, done.output)
        keys = {row["key"] for row in json.loads(done.output)}
        assert keys and ("kind" in keys if name.startswith("teacher.") else True), name


def test_every_setting_of_recots_own_configs_says_what_it_does():
    """`recot config NAME` shows a description for every key of recot's configs (TRL's keep TRL's help)."""
    from importlib import import_module

    from pydantic import BaseModel

    from recot.cli.run import CONFIGS

    undocumented, seen = [], set()

    def walk(kind: type[BaseModel]) -> None:
        seen.add(kind)
        for name, info in kind.model_fields.items():
            if not info.description:
                undocumented.append(f"{kind.__name__}.{name}")
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) and info.annotation not in seen:
                walk(info.annotation)

    for path in CONFIGS.values():
        module, _, name = path.partition(":")
        kind = getattr(import_module(module), name)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and kind not in seen:
            walk(kind)
    assert not undocumented, undocumented
