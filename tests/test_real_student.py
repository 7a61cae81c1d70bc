"""A real pretrained base as the student (the embedded SmolLM2-135M-Instruct): align -> SFT -> GRPO -> eval through the
installed `recot run`, a few steps each, then what only a real tokenizer and chat template exercise, checked on the
text and the token ids: the template's system prompt and the think block reach training as written, the evaluation
prompt is the training prompt to the token, the SID vocabulary grew the tied embedding matrix, and the checkpoint
reloads as a plain folder. Learning is the bench's to measure (bench/README.md)."""

from __future__ import annotations

import json
import subprocess

import pytest

from recot.testing import RECOT

pytest.importorskip("trl")
PIPELINE = """
dataset = "{dataset}"
out = "{out}"
base_model = "{model}"

[synth]
tasks = ["r1_relation", "r3_cot_hindsight"]
part = "train"
max_history = 5
limit = 8
teacher = {{ kind = "rules" }}

[dedup]
[export]
name = "real-student"
cot_ratio = 1.0

[align]
max_steps = 1
per_device_train_batch_size = 2
max_length = 96
probe_items = 2
early_stopping_patience = 0

[sft]
max_steps = 2
per_device_train_batch_size = 2
max_length = 320
early_stopping_patience = 0

[grpo]
max_steps = 1
per_device_train_batch_size = 2
num_generations = 2
num_candidates = 2
max_reasoning_tokens = 8
max_completion_length = 16

[eval]
part = "test"
k = 3
limit = 3
samples = 1
max_reasoning_tokens = 8
baselines = ["most_popular"]
bootstrap = 0
"""


@pytest.fixture(scope="module")
def trained(smollm2_model, sample_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("real-student")
    config = work / "pipeline.toml"
    config.write_text(PIPELINE.format(dataset=sample_path, out=work / "out", model=smollm2_model))
    done = subprocess.run([*RECOT, "run", str(config), "--json"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "out", json.loads(done.stdout)


def test_real_base_trains_through_the_pipeline_to_an_evaluated_model(trained):
    out, stages = trained
    ran = {stage["name"]: stage for stage in stages}
    assert [name for name in ran if name in ("align", "sft", "grpo", "eval")] == ["align", "sft", "grpo", "eval"]
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["rows"] == 3  # every answer a catalog SID under the trie, with and without reasoning
    assert report["direct"]["sid_validity"] == report["think"]["sid_validity"] == 1.0
    assert (out / "align" / "probe.json").exists()


def test_real_base_chat_template_think_block_and_sid_vocabulary(trained, smollm2_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.trainer.data import as_prompt_completion, export_catalog, load_export
    from recot.trainer.sid_vocab import sid_vocabulary

    out, _ = trained
    base, tuned = AutoTokenizer.from_pretrained(smollm2_model), AutoTokenizer.from_pretrained(out / "grpo")
    vocabulary = sid_vocabulary(export_catalog(out / "export"))
    new = [token for token in vocabulary if token not in base.get_vocab()]
    assert len(tuned) == len(base) + len(new) and "<think>" in new
    assert all(tuned.convert_tokens_to_ids(token) >= len(base) for token in new)

    rows = as_prompt_completion(load_export(out / "export", "sft")["train"])
    row = next(r for r in rows if "<think>" in r["completion"][0]["content"])
    completion = row["completion"][0]["content"]
    prompt_text = tuned.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full_text = tuned.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert prompt_text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # its own default
    assert full_text == prompt_text + completion + "<|im_end|>\n"  # the think block as written, after the prompt
    prompt_ids = tuned(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tuned(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(prompt_ids)] == prompt_ids  # what evaluation sends is what training conditioned on
    answer = completion.split("</think>")[-1].strip()
    answer_ids = tuned(answer, add_special_tokens=False)["input_ids"]  # one added token per SID level, nothing else
    assert len(answer_ids) == answer.count("<") and all(i >= len(base) for i in answer_ids)
    assert tuned.convert_tokens_to_ids("<think>") in full_ids and tuned.convert_tokens_to_ids("</think>") in full_ids

    model = AutoModelForCausalLM.from_pretrained(out / "grpo")  # a plain folder: no recot needed to load it
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.get_input_embeddings().weight.shape[0] >= len(tuned)
