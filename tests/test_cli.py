"""The recot command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import polars as pl

from recot.testing import RECOT


def recot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RECOT, *args], capture_output=True, text=True, cwd=cwd)


def copy_with_a_malformed_sid(sample_path: Path, folder: Path) -> str:
    """The sample in ``folder`` with one item's SID malformed (levels skipped); returns that item's id."""
    import shutil

    shutil.copytree(sample_path, folder)
    sids = json.loads((folder / "sids.json").read_text())
    bad = next(iter(sids))
    sids[bad] = ["<a_1>", "<c_2>"]
    (folder / "sids.json").write_text(json.dumps(sids))
    return bad


def test_inspect_json(sample_path):
    out = recot("data", "inspect", str(sample_path), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["items"] == 1296 and report["users"] == 300
    assert report["sids"]["levels"] == 3 and report["rejects"] == {}


def test_sid_build_from_real_embeddings_then_convert(sample_path, tmp_path):
    out_dir = tmp_path / "sids"
    built = recot("sid", "build", str(sample_path), "--out", str(out_dir), "--codebook-size", "64", "--json")
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["collisions_after"]["collision_rate"] == 0
    table = pl.read_parquet(out_dir / "sids.parquet")
    assert table.height == 1296 and table["sid"].n_unique() == 1296
    assert json.loads((out_dir / "report.json").read_text())["config"]["codebook_size"] == 64

    wrapped = tmp_path / "wrapped.parquet"
    conv = recot("sid", "convert", str(out_dir / "sids.parquet"), "--to", "<|sid_begin|><s_a_0><|sid_end|>",
                 "--out", str(wrapped), "--json")
    assert conv.returncode == 0, conv.stderr
    new = pl.read_parquet(wrapped)
    assert new["sid"][0].startswith("<|sid_begin|><s_a_") and new["sid"][0].endswith("<|sid_end|>")
    back = tmp_path / "sids-s.json"
    assert recot("sid", "convert", str(out_dir / "sids.json"), "--to", "<s_a_1>", "--out", str(back)).returncode == 0
    tokens = json.loads(back.read_text())
    assert all(t.startswith("<s_") for t in next(iter(tokens.values())))


def test_sid_build_from_embedding_file_is_deterministic(sample_path, tmp_path):
    vectors = np.random.default_rng(1).normal(size=(1296, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", vectors)
    runs = []
    for name in ("a", "b"):
        res = recot("sid", "build", str(sample_path), "--out", str(tmp_path / name), "--embeddings",
                    str(tmp_path / "emb.npy"), "--codebook-size", "16", "--collisions", "reassign", "--json")
        assert res.returncode == 0, res.stderr
        runs.append(pl.read_parquet(tmp_path / name / "sids.parquet"))
    assert runs[0].equals(runs[1])


def test_bad_input_exits_2_with_fix_and_writes_nothing(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,sid\n1,a,<a_1><b_2>\n2,b,<a_1><c_9>\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,ts\nu,1,1\n")
    (tmp_path / "ds.yaml").write_text("items: {path: items.csv}\ninteractions: {path: events.csv}\n")
    out = recot("sid", "build", str(tmp_path / "ds.yaml"), "--out", str(tmp_path / "o"), "--codebook-size", "2")
    assert out.returncode == 2
    assert "items.csv" in out.stderr and "line 3" in out.stderr
    assert "malformed_sid" in out.stderr and "fix:" in out.stderr
    assert not (tmp_path / "o").exists()
    lenient = recot("data", "inspect", str(tmp_path / "ds.yaml"), "--lenient", "--report",
                    str(tmp_path / "rejects.csv"), "--json")
    assert lenient.returncode == 0, lenient.stderr
    rejects = pl.read_csv(tmp_path / "rejects.csv", infer_schema=False)
    assert rejects["reason"].to_list() == ["malformed_sid"] and rejects["record"].to_list() == ["2"]


def test_convert_names_bad_sids_and_lenient_keeps_the_good_rows(tmp_path):
    source = tmp_path / "sids.csv"
    source.write_text("item_id,sid\n1,<a_1><b_2>\n2,<a_1><c_2>\n3,\n")
    strict = recot("sid", "convert", str(source), "--to", "<s_a_0>", "--out", str(tmp_path / "o.csv"))
    assert strict.returncode == 2 and "line 3" in strict.stderr and "levels must run" in strict.stderr
    assert not (tmp_path / "o.csv").exists()
    lenient = recot("sid", "convert", str(source), "--to", "<s_a_0>", "--out", str(tmp_path / "o.csv"), "--lenient",
                    "--report", str(tmp_path / "bad.csv"), "--json")
    assert lenient.returncode == 0, lenient.stderr
    assert pl.read_csv(tmp_path / "o.csv", infer_schema=False).rows() == [("1", "<s_a_1><s_b_2>")]
    bad = pl.read_csv(tmp_path / "bad.csv", infer_schema=False)
    assert bad["location"].to_list() == ["line 3", "line 4"] and "empty" in bad["detail"][1]


def test_a_failed_command_changes_nothing(sample_path, tmp_path):
    """A half-written traces file leaves no store behind; a synthesis job on a missing dataset no output folder."""
    good = tmp_path / "s"
    job = tmp_path / "job.toml"
    job.write_text(f'dataset = "{sample_path}"\nout = "{good}"\ntasks = ["r1_relation"]\nlimit = 5\n')
    assert recot("synth", "run", str(job), "--no-progress").returncode == 0
    cut = tmp_path / "cut.parquet"
    cut.write_bytes((good / "traces.parquet").read_bytes()[:-200])
    done = recot("curate", "ingest", str(cut), "--dataset", str(sample_path), "--store", str(tmp_path / "new.duckdb"))
    assert done.returncode == 2 and "cut.parquet" in done.stderr and not (tmp_path / "new.duckdb").exists()
    job.write_text(f'dataset = "{tmp_path / "nope"}"\nout = "{tmp_path / "never"}"\n')
    done = recot("synth", "run", str(job), "--no-progress")
    assert done.returncode == 2 and "nope" in done.stderr and not (tmp_path / "never").exists()


def test_tables_go_to_stdout_and_diagnostics_to_stderr(sample_path, tmp_path):
    done = recot("data", "inspect", str(sample_path))
    assert done.returncode == 0 and "items" in done.stdout and "1296" in done.stdout


def test_synth_run_lenient_skips_bad_records_and_keeps_them(sample_path, tmp_path):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(sample_path, data)
    frame = pl.read_csv(data / "valid.csv")
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("999999")).otherwise(pl.col("item_id").cast(pl.Utf8))
                       .alias("item_id")).write_csv(data / "valid.csv")
    job = tmp_path / "job.toml"
    job.write_text(f'dataset = "{data}"\nout = "{tmp_path / "out"}"\ntasks = ["r1_relation"]\nlimit = 5\n')
    strict = recot("synth", "run", str(job), "--no-progress")
    assert strict.returncode == 2 and "--lenient" in strict.stderr and "999999" in strict.stderr
    lenient = recot("synth", "run", str(job), "--no-progress", "--lenient", "--json")
    assert lenient.returncode == 0, lenient.stderr
    assert json.loads(lenient.stdout)["dataset_rejects"] == {"unknown_item": 1}
    rejects = pl.read_csv(tmp_path / "out" / "dataset-rejects.csv")
    assert rejects["reason"].to_list() == ["unknown_item"] and "999999" in rejects["detail"][0]


def test_lenient_decisions_made_at_synthesis_hold_through_curation_and_export(sample_path, tmp_path):
    """A dataset with a malformed SID: synthesis with lenient = true sets the item aside and writes the catalog it
    used beside the traces; ingest without --dataset takes that catalog (SIDs are checked, not all failed); export's
    decontamination loads the dataset as synthesis did with --lenient, and says so when it is left out."""
    folder = tmp_path / "ds"
    bad = copy_with_a_malformed_sid(sample_path, folder)
    config = tmp_path / "synth.toml"
    config.write_text(f'dataset = "{folder}"\nout = "{tmp_path / "synth"}"\ntasks = ["r3_cot_hindsight"]\nlimit = 30\nlenient = true\n')
    assert recot("synth", "run", str(config), "--no-progress", "--json").returncode == 0
    catalog = pl.read_parquet(tmp_path / "synth" / "catalog.parquet")
    assert bad not in catalog["item_id"].to_list() and catalog.height == 1295
    store = str(tmp_path / "c.duckdb")
    assert recot("curate", "ingest", str(tmp_path / "synth" / "traces.parquet"), "--store", store).returncode == 0
    rules = recot("curate", "rules", "--store", store, "--json")
    assert rules.returncode == 0, rules.stderr
    assert json.loads(rules.stdout).get("sid_validity", 0) < 30  # a catalog to check against: not every trace fails
    strict = recot("export", "x", "--out", str(tmp_path / "x"), "--dataset", str(folder), "--store", store)
    assert strict.returncode == 2 and "--lenient" in strict.stderr and "Traceback" not in strict.stderr
    lenient = recot("export", "x", "--out", str(tmp_path / "x"), "--dataset", str(folder), "--lenient", "--store", store, "--json")
    assert lenient.returncode == 0, lenient.stderr
    assert pl.read_parquet(tmp_path / "x" / "next_item" / "test.parquet").height > 0
    # every row the synthesis set aside is in the card and the report, with the file that lists it
    listed = pl.read_csv(tmp_path / "synth" / "dataset-rejects.csv")
    card = json.loads((tmp_path / "x" / "data_card.json").read_text())
    dataset = card["funnel"]["set_aside"]["dataset"]
    assert dataset["rows"] == listed.height > 0 and dataset["listed_in"] == [str(tmp_path / "synth" / "dataset-rejects.csv")]
    assert dataset["reasons"] == dict(listed["reason"].value_counts().iter_rows())
    report = json.loads(recot("curate", "report", "--store", store, "--json").stdout)
    assert report["set_aside"] == card["funnel"]["set_aside"]
    assert f"{listed.height} dataset records set aside before synthesis" in (tmp_path / "x" / "README.md").read_text()


def test_sid_convert_refuses_an_example_with_more_levels_than_the_sids(sample_path, tmp_path):
    done = recot("sid", "convert", str(sample_path / "sids.json"), "--to", "<a_1><b_2><c_3><d_4>", "--out", str(tmp_path / "s.json"))
    assert done.returncode == 2 and "have 3 levels, the example given has 4" in done.stderr and not (tmp_path / "s.json").exists()
    assert recot("sid", "convert", str(sample_path / "sids.json"), "--to", "<s_a_1><s_b_2><s_c_3>", "--out", str(tmp_path / "s.json")).returncode == 0


def test_user_data_in_messages_is_printed_as_given(sample_path, tmp_path):
    """Rich markup in a value the user gave (square brackets) is shown, not interpreted."""
    done = recot("sid", "convert", str(sample_path / "sids.json"), "--to", "[[sid]]<a_1>", "--out", str(tmp_path / "s.json"))
    assert done.returncode == 2 and "[[sid]]<a_1>" in done.stderr


def test_a_json_record_with_bytes_that_are_not_utf8(sample_path, tmp_path):
    """Strict mode names the line and the record; lenient mode sets that record aside with its reason and goes on."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(sample_path, root)
    raw = (root / "items.json").read_bytes()
    items = json.loads(raw)
    key = list(items)[3]
    quoted = json.dumps(items[key]["title"]).encode()
    (root / "items.json").write_bytes(raw.replace(quoted, quoted[:-1] + b"\xff\xfe\"", 1))
    line = raw[: raw.index(quoted)].count(b"\n") + 1
    strict = recot("data", "inspect", str(root), "--json")
    assert strict.returncode == 2 and f"line {line}" in strict.stderr and f"record '{key}'" in strict.stderr
    assert "Traceback" not in strict.stderr
    lenient = recot("data", "inspect", str(root), "--json", "--lenient", "--report", str(tmp_path / "rejects.csv"))
    assert lenient.returncode == 0, lenient.stderr
    rejects = pl.read_csv(tmp_path / "rejects.csv")
    assert rejects.filter(pl.col("reason") == "non_utf8")["record"].cast(pl.Utf8).to_list() == [key]


def test_small_things_people_trip_on(sample_path, tmp_path):
    """A record is named once in a message; an empty JSON file's fix speaks of records, not a header; a curate command
    leaves nothing beside its store."""
    root = tmp_path / "ds"
    bad = copy_with_a_malformed_sid(sample_path, root)
    named = recot("data", "inspect", str(root))
    assert named.returncode == 2 and f"record '{bad}'" in named.stderr and f"record '{bad}' (record" not in named.stderr
    (root / "items.json").write_text("")
    empty = recot("data", "inspect", str(root))
    assert empty.returncode == 2 and "the file is empty" in empty.stderr and "header" not in empty.stderr
    from recot.curation.store import Store

    store = tmp_path / "c.duckdb"
    Store(store).close()
    for command in ("rules", "dedup", "report"):
        done = recot("curate", command, "--store", str(store), "--json")
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.duckdb", "ds"]


def test_lenient_inspect_says_where_its_rejects_went(sample_path, tmp_path):
    """Without --report the rejects land in the current folder: the report names the file whole."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(sample_path, root)
    valid = pl.read_csv(root / "valid.csv", infer_schema=False)
    valid.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("999999")).otherwise(pl.col("item_id")).alias("item_id")
                       ).write_csv(root / "valid.csv")
    work = tmp_path / "here"
    work.mkdir()
    done = recot("data", "inspect", str(root), "--lenient", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)["rejects_file"]
    assert written == str(work / "recot-rejects.csv") and Path(written).exists() and written in done.stderr.replace("\n", "")
