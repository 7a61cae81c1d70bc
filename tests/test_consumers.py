"""The exports as their consumers load them, with the consumers' own code: Hugging Face `datasets` (its real
cache), verl's RLHFDataset and its custom-reward loader (verl installed with --no-deps into a folder of its own: its
pins clash with ours), and LlamaFactory's dataset_info.json and reasoning layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest

from recot.curation.export import ExportConfig, export
from recot.curation.store import Store
from recot.synth.job import SynthConfig, run_synth

# verl 0.9.1 and what it imports that our environment lacks, pinned to the versions tried here
VERL = ["verl==0.9.1", "tensordict==0.15.3", "pyvers==0.2.3", "omegaconf==2.4.0", "antlr4-python3-runtime==4.9.3"]


@pytest.fixture(scope="module")
def store_path(sample_path, sample, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("consumers")
    run_synth(SynthConfig(dataset=sample_path, out=work / "s", tasks=["r3_cot_hindsight", "r1_relation"], limit=30), progress=False)
    with Store(work / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(work / "s" / "traces.parquet")
    return work / "c.duckdb"


def _export(store_path: Path, out: Path, dataset: Path, **settings) -> dict:
    with Store.existing(store_path) as store:
        return export(store, ExportConfig(name="shop", out=out, dataset=dataset, valid_share=0.2, **settings))


@pytest.fixture(scope="module")
def exported(store_path, sample_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "shop"
    _export(store_path, out, sample_path, cot_ratio=0.5)
    return out


def test_datasets_loads_the_default_config_and_a_re_export_through_its_own_cache(store_path, sample_path, tmp_path):
    """`load_dataset(EXPORT)` loads the sft config; after an overwrite export into the same folder, `load_dataset(EXPORT,
    name=...)` with the same cache folder returns the new rows (the files carry their content's fingerprint)."""
    out, cache = tmp_path / "shop", tmp_path / "hf-cache"
    first = _export(store_path, out, sample_path, cot_ratio=1.0)
    default = datasets.load_dataset(str(out), cache_dir=str(cache))
    assert default["train"].num_rows == first["formats"]["sft"]["train"] and "messages" in default["train"].column_names
    before = datasets.load_dataset(str(out), name="sft", cache_dir=str(cache))["train"]
    again = _export(store_path, out, sample_path, cot_ratio=0.0, overwrite=True)
    after = datasets.load_dataset(str(out), name="sft", cache_dir=str(cache))["train"]
    assert again["formats"] == first["formats"]
    thinking = [sum("<think>" in m[1]["content"] for m in rows["messages"]) for rows in (before, after)]
    assert thinking[0] > 0 and thinking[1] == 0  # the second export's rows, not the cached first ones


def test_the_card_names_a_default_config_sizes_it_and_names_its_terms(exported):
    card = (exported / "README.md").read_text()
    header = card.split("---")[1]
    assert "- config_name: sft\n  default: true\n" in header and header.count("default: true") == 1
    assert "license: other\nlicense_name: source-dataset-terms\nlicense_link: LICENSE.md\n" in header
    assert (exported / "LICENSE.md").exists()
    rows = json.loads((exported / "data_card.json").read_text())["formats"]
    assert f"- {'n<1K' if sum(rows['sft'].values()) < 1000 else '1K<n<10K'}\n" in header
    for name, files in json.loads((exported / "data_card.json").read_text())["files"].items():
        assert all((exported / path).exists() and f"path: {path}" in header for path in files.values()), name


def test_llamafactory_gets_its_dataset_info_and_reasoning_layout(exported):
    info = json.loads((exported / "dataset_info.json").read_text())
    assert set(info) == {"shop_train", "shop_validation"}
    for entry in info.values():
        assert entry["formatting"] == "sharegpt" and (exported / entry["file_name"]).exists()
        assert entry["columns"] == {"messages": "conversations"} and entry["tags"]["assistant_tag"] == "gpt"
    answers = [c[1]["value"] for c in pl.read_parquet(exported / info["shop_train"]["file_name"])["conversations"]]
    thinking = [a for a in answers if a.startswith("<think>\n")]
    assert thinking and all("\n</think>\n\n<" in a and a.count("</think>") == 1 for a in thinking)  # LlamaFactory's thought_words


def test_verl_loads_the_rl_set_with_its_own_dataset_and_scores_it_with_recots_reward(exported, tiny_model, tmp_path):
    """One thinking prompt per (user, target) with the target SID as ground truth and the history in extra_info,
    read by verl's RLHFDataset, scored through verl's custom-reward loader pointed at recot.trainer.verl_reward."""
    import recot.trainer.verl_reward as reward

    site = tmp_path / "verl-site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), *VERL],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"verl could not be installed here (no package index?): {done.stderr[-300:]}")
    probe = f"""
import glob, json, sys
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.dataset.rl_dataset import RLHFDataset
files = sorted(glob.glob({str(exported)!r} + "/verl/train-*.parquet"))
data = RLHFDataset(files, AutoTokenizer.from_pretrained({str(tiny_model)!r}),
                   OmegaConf.create({{"prompt_key": "prompt", "max_prompt_length": 4096, "cache_dir": {str(tmp_path / "cache")!r}}}))
score = get_custom_reward_fn(OmegaConf.create({{"reward": {{"custom_reward_function": {{"path": {reward.__file__!r}, "name": "compute_score"}}}}}}))
rows = [data[i] for i in range(len(data))]
truth = [r["reward_model"]["ground_truth"] for r in rows]
print(json.dumps({{"rows": len(rows), "sources": sorted({{r["data_source"] for r in rows}}),
                   "prompts": [r["raw_prompt"][-1]["content"] for r in rows], "extra": [r["extra_info"] for r in rows],
                   "hit": score(rows[0]["data_source"], "<think>\\nPersona: x\\n</think>\\n" + truth[0], truth[0], rows[0]["extra_info"]),
                   "miss": score(rows[0]["data_source"], "I do not know", truth[0], rows[0]["extra_info"])}}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    card = json.loads((exported / "data_card.json").read_text())
    assert seen["rows"] == card["formats"]["verl"]["train"] == card["formats"]["grpo"]["train"] > 0
    assert seen["sources"] == ["recot/next_item"]
    assert all(p.endswith("then answer with the next item's semantic ID.") for p in seen["prompts"])  # always asked to think
    pairs = [(e["user_id"], e["target"]) for e in seen["extra"]]
    assert len(pairs) == len(set(pairs)) and all(len(e["history"]) == len(e["history_sids"]) > 0 for e in seen["extra"])
    assert seen["hit"]["score"] == 4.0 and seen["hit"]["exact_hit"] == 1.0 and seen["miss"]["score"] == 0.0


# LlamaFactory 0.9.3 in its own venv: 0.9.4+ imports torchaudio, which has no build for this CPU torch, and its
# pins (transformers 4.5x) clash with ours. Built once into .venv-llamafactory, as Argilla's server has its own.
LLAMAFACTORY_STACK = ["torch==2.13.0", "transformers==4.52.4", "datasets==3.6.0", "peft==0.15.2", "trl==0.9.6", "accelerate==1.7.0",
                      "omegaconf", "sentencepiece", "tiktoken", "protobuf", "fire", "scipy", "einops", "numpy>=2,<2.3"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def llamafactory_python() -> Path:
    venv = ROOT / ".venv-llamafactory"
    if not (venv / ".installed").exists():
        steps = [["python3", "-m", "venv", str(venv)],
                 [str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "scripts" / "constraints-cpu.txt"), *LLAMAFACTORY_STACK],
                 [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "llamafactory==0.9.3"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"LlamaFactory's environment could not be built here ({' '.join(step[:4])}): {done.stderr[-300:]}")
        (venv / ".installed").touch()
    return venv / "bin" / "python"


def test_llamafactory_loads_the_export_with_its_own_get_dataset(exported, tiny_model, llamafactory_python, tmp_path):
    """LlamaFactory's own loader on the export's dataset_info.json: train and validation apart, and its qwen3 reasoning
    template's remove_thought leaves the SID alone (the thought is written as its templates expect)."""
    import shutil

    model = tmp_path / "model"  # transformers 4 names the tokenizer class differently: the same files, its name for them
    shutil.copytree(tiny_model, model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps(settings | {"tokenizer_class": "PreTrainedTokenizerFast"}))
    probe = f"""
import json
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
model_args, data_args, training_args, _, _ = get_train_args(dict(
    stage="sft", model_name_or_path={str(model)!r}, dataset="shop_train", eval_dataset="shop_validation",
    dataset_dir={str(exported)!r}, template="qwen3", output_dir={str(tmp_path / "out")!r}, do_train=True, cutoff_len=1024,
    overwrite_cache=True, report_to="none", enable_thinking=False, preprocessing_num_workers=1))
tokenizer = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer["tokenizer"], data_args)
module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer)
print(json.dumps({{"train": len(module["train_dataset"]), "eval": len(module["eval_dataset"]), "thought": template.thought_words}}))
"""
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([str(llamafactory_python), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    card = json.loads((exported / "data_card.json").read_text())["formats"]["sharegpt"]
    assert (seen["train"], seen["eval"]) == (card["train"], card["validation"])  # validation never merged into train
    info = json.loads((exported / "dataset_info.json").read_text())
    answers = [c[1]["value"] for c in pl.read_parquet(exported / info["shop_train"]["file_name"])["conversations"]]
    check = """
import json, sys
from llamafactory.data.template import TEMPLATES
template = TEMPLATES["qwen3"]
print(json.dumps([template.remove_thought(a) for a in json.load(sys.stdin)]))
"""
    done = subprocess.run([str(llamafactory_python), "-c", check], input=json.dumps(answers), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    removed = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(a.startswith("<think>") for a in answers)
    for answer, left in zip(answers, removed):
        assert left.strip() == answer.split("</think>")[-1].strip() and "<think>" not in left
