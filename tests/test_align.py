"""The itemic alignment recipe: the export's align format on the sample (what it holds, that no behaviour
document reaches a cut-off, that its inline SIDs are the catalog's), the perception probe on a model that
memorised its items and on a random one, and align -> SFT -> GRPO -> eval chained through the installed CLI."""

from __future__ import annotations

import re

import polars as pl
import pytest
from pydantic import ValidationError

from recot.curation.export import ExportConfig, export
from recot.curation.store import Store
from recot.formats.align import held_out, sid_to_text_prompt, text_to_sid_prompt
from recot.formats.splits import SplitSpec
from recot.testing import curated_store

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def aligned(sample_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("align")
    with Store(curated_store(sample_path, work, ["r1_relation", "r3_cot_hindsight"], 150)) as store:
        card = export(store, ExportConfig(name="aligned", out=work / "export", dataset=sample_path, cot_ratio=1.0))
    return work / "export", card


def test_align_is_written_by_default_with_the_dataset_and_refused_without(aligned, tmp_path):
    out, card = aligned
    assert "align" in card["files"] and card["formats"]["align"]["train"] > 0
    assert f"behaviour {card['align']['behaviour']['train']} / 0" in (out / "README.md").read_text()
    assert "align" not in ExportConfig(name="x", out=tmp_path).formats
    with pytest.raises(ValidationError, match="align format needs dataset"):
        ExportConfig(name="x", out=tmp_path, formats=["sft", "align"])


def test_align_rows_are_counted_and_the_pairs_hold_out_a_share_of_items(aligned, sample):
    out, card = aligned
    loaded = datasets.load_dataset(str(out), name="align")
    rows = pl.concat([loaded[part].to_polars().with_columns(split=pl.lit(part)) for part in ("train", "validation")])
    counted = rows.group_by("kind", "split").len()
    for kind, parts in card["align"].items():
        for part, n in parts.items():
            assert counted.filter((pl.col("kind") == kind) & (pl.col("split") == part))["len"].sum() == n
    items = sample.catalog.items.with_columns(sid=sample.catalog.sid_text())
    with_sid = items.filter(pl.col("sid").is_not_null())
    out_ids = set(with_sid.filter(pl.Series(held_out(with_sid["item_id"].to_list())))["item_id"])
    assert 0 < len(out_ids) < with_sid.height / 5
    pairs = rows.filter(pl.col("kind") == "sid_to_text")
    assert pairs.height == with_sid.height
    assert set(pairs.filter(pl.col("split") == "validation")["item_id"]) == out_ids
    sid_of, title_of = dict(zip(items["item_id"], items["sid"])), dict(zip(items["item_id"], items["title"]))
    for row in pairs.head(50).iter_rows(named=True):
        assert row["prompt"] == sid_to_text_prompt(sid_of[row["item_id"]])
        assert row["completion"].split("\n")[0] == title_of[row["item_id"]]
    for row in rows.filter(pl.col("kind") == "text_to_sid").head(50).iter_rows(named=True):
        assert (row["prompt"], row["completion"]) == (text_to_sid_prompt(title_of[row["item_id"]]), sid_of[row["item_id"]])
    assert card["align"]["relation"]["train"] + card["align"]["relation"]["validation"] == card["by_task"]["r1_relation"] > 0
    relation = rows.filter(pl.col("kind") == "relation").row(0, named=True)
    assert re.match(r"How does (<a_\d+><b_\d+><c_\d+>) relate to (<a_\d+><b_\d+><c_\d+>)\?\n", relation["prompt"])
    assert relation["completion"].split(":")[0] in {"complement", "substitute", "same_interest", "unrelated"}
    item_text = rows.filter(pl.col("kind") == "item_text")
    assert item_text.height == items.height and set(item_text.filter(pl.col("split") == "validation")["item_id"]) == {
        i for i, out in zip(items["item_id"], held_out(items["item_id"].to_list())) if out}
    assert not any("<a_" in text for text in item_text["completion"])


def test_behaviour_documents_hold_only_events_before_the_cut_off_with_the_catalog_sids_inline(aligned, sample):
    out, _ = aligned
    docs = datasets.load_dataset(str(out), name="align")["train"].to_polars().filter(pl.col("kind") == "behaviour")
    assert docs.height > 100 and docs["prompt"].to_list() == [""] * docs.height
    split = SplitSpec.load(out / "split.json").build(sample.sequences())
    cutoffs = dict(split.cutoffs().collect().iter_rows())
    events = sample.interactions.sort("user_id", "ts", "pos").group_by("user_id", maintain_order=True).agg("item_id", "ts").collect()
    seqs = {u: (i, t) for u, i, t in events.iter_rows()}
    sids = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    titles = dict(zip(sample.catalog.items["item_id"], sample.catalog.items["title"]))
    out_ids = {i for i, h in zip(sample.catalog.items["item_id"], held_out(sample.catalog.items["item_id"].to_list())) if h}
    for user, items, text in docs.select("user_id", "items", "completion").iter_rows():
        ids, ts = seqs[user]
        before = [i for i, t in zip(ids, ts) if cutoffs[user] is None or t < cutoffs[user]]
        assert len(before) < len(ids) or cutoffs[user] is None
        assert items == before[-50:], user
        lines = text.split("\n")
        assert lines[0] == "A user's purchases, oldest first:" and len(lines) == len(items) + 1
        for k, (line, item) in enumerate(zip(lines[1:], items), start=1):
            shown = "?" if item in out_ids or sids[item] is None else sids[item]
            assert line == f"{k}. {shown} {titles[item]}", (user, line)


def test_the_probe_reads_one_on_memorised_items_and_chance_on_a_random_model(aligned, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recot.trainer.align import RecAlignConfig
    from recot.trainer.probe import perception_probe, probe_items
    from recot.trainer.sft import train_sft

    out, _ = aligned
    roles = probe_items(out)
    assert roles["held_out"] and not set(roles["held_out"]) & set(roles["train"])
    config = RecAlignConfig(output_dir=str(tmp_path / "memorised"), model_path=str(tiny_model), dataset_path=str(out),
                            kinds=["sid_to_text", "text_to_sid"], early_stopping_patience=0, max_steps=150, learning_rate=3e-3,
                            per_device_train_batch_size=12, lr_scheduler_type="constant", report_to="none", logging_steps=50)
    few = roles["train"][:6]
    loaded = datasets.load_dataset(str(out), name="align")["train"]
    rows = loaded.filter(lambda kind, item: kind in ("sid_to_text", "text_to_sid") and item in few, input_columns=["kind", "item_id"])
    assert len(rows) == 12
    trainer = train_sft(config, rows.select_columns(["prompt", "completion"]))
    memorised = perception_probe(trainer.model, trainer.processing_class, out, only=few)
    assert memorised["train"]["items"] == 6
    assert memorised["train"]["title_to_sid_accuracy"] == 1.0 and memorised["train"]["sid_to_title_exact"] == 1.0
    # the same base with the SID vocabulary added, never trained: chance
    from recot.trainer.data import export_catalog
    from recot.trainer.sid_vocab import add_sid_vocabulary

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    add_sid_vocabulary(model, tokenizer, export_catalog(out))
    random_model = perception_probe(model, tokenizer, out, items=40)
    for role in ("train", "held_out"):
        assert random_model[role]["title_to_sid_accuracy"] <= 0.05 and random_model[role]["sid_to_title_exact"] == 0.0
        assert random_model[role]["title_to_sid_first_code"] <= 0.25
    assert random_model["chance"]["title_to_sid"] < 0.001


def test_pretrain_align_sft_grpo_eval_chained_through_the_installed_cli(aligned, tiny_model, tmp_path):
    import json
    import subprocess

    from recot.testing import RECOT

    out, _ = aligned
    small = 'report_to = "none"\nper_device_train_batch_size = 8\nlogging_steps = 1\n'

    def run(command: str, settings: str) -> dict:
        path = tmp_path / f"{command}.toml"
        path.write_text(settings + small)
        done = subprocess.run([*RECOT, "train", command, str(path), "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    pretrained = run("pretrain", f'model_path = "{tiny_model}"\ndataset_path = "{out}"\noutput_dir = "{tmp_path / "pre"}"\n'
                                 'num_train_epochs = 1\nmax_length = 128\n')
    assert pretrained["epoch"] == 1 and pretrained["best_eval_loss"] > 0  # its validation: the held-out items' text
    assert "<a_1>" not in (tmp_path / "pre" / "tokenizer.json").read_text()  # pre-training adds no SIDs
    aligned_run = run("align", f'model_path = "{tmp_path / "pre"}"\ndataset_path = "{out}"\noutput_dir = "{tmp_path / "aligned"}"\n'
                               'max_steps = 3\nmax_length = 128\nprobe_items = 4\n')
    probe = aligned_run["probe"]
    assert probe["train"]["items"] == probe["held_out"]["items"] == 4 and not list((tmp_path / "aligned").glob("checkpoint-*"))
    assert json.loads((tmp_path / "aligned" / "probe.json").read_text()) == probe
    sft = run("sft", f'model_path = "{tmp_path / "aligned"}"\ndataset_path = "{out}"\nsid_catalog = "{out}"\n'
                     f'output_dir = "{tmp_path / "sft"}"\nnum_train_epochs = 2\nearly_stopping_patience = 1\nmax_length = 384\n')
    assert sft["epoch"] in (1, 2) and sft["best_eval_loss"] > 0
    grpo = run("grpo", f'model_path = "{tmp_path / "sft"}"\ndataset_path = "{out}"\noutput_dir = "{tmp_path / "grpo"}"\nmax_steps = 1\n'
                'num_generations = 4\nnum_candidates = 2\nmax_reasoning_tokens = 8\nmax_completion_length = 24\n'
                'rewards = ["exact_hit", "format", "grounding"]\n')
    assert grpo["logged_steps"] == 1 and ("fix" in grpo) == (grpo["steps_without_reward_spread"] == 1)
    (tmp_path / "eval.toml").write_text('baselines = ["most_popular"]\n')
    done = subprocess.run([*RECOT, "eval", "--config", str(tmp_path / "eval.toml"), "--model", str(tmp_path / "grpo"), "--export",
                           str(out), "--limit", "4", "--k", "3", "--out", str(tmp_path / "eval"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["rows"] == 4 and report["direct"]["sid_validity"] == 1.0 and "think" in report
