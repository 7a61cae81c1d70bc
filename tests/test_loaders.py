"""Loaders on real data and on generic tables, with every kind of bad input."""

from __future__ import annotations

import ast
import csv
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from recot.data.loaders import TableSource, load_dataset, load_items, scan_interactions
from recot.errors import DataError
from recot.formats.splits import temporal


def _csv_windows(path: Path) -> list[tuple[str, tuple[str, ...], str]]:
    with path.open(encoding="utf-8") as fh:
        return sorted((r["user_id"], tuple(str(i) for i in ast.literal_eval(r["history_item_id"])), r["item_id"])
                      for r in csv.DictReader(fh))


@pytest.mark.parametrize("which", ["sample", "full"])
def test_windows_rebuild_sequences_that_reproduce_every_row(which, sample_path, request):
    root = sample_path if which == "sample" else request.getfixturevalue("full_path")
    ds = load_dataset(root)
    assert ds.rejects.is_empty()
    seqs = ds.sequences().collect()
    # No event is duplicated by overlapping windows: each sequence has one item per position.
    assert seqs["length"].sum() == ds.interactions.collect().height
    split = temporal(ds.sequences(), ds.boundaries["valid_start"], ds.boundaries["test_start"])
    for part in ("valid", "test"):
        got = sorted((u, tuple(h), t) for u, h, t in
                     split.part(part).select("user_id", "history", "target").collect().iter_rows())
        assert got == _csv_windows(root / f"{part}.csv")


def test_full_set_counts(full_path):
    ds = load_dataset(full_path)
    assert len(ds.catalog) == 3686
    seqs = ds.sequences().collect()
    assert seqs.height == 3285  # 2,011 valid users + 1,987 test users - 713 in both


def _copy_sample(sample_path: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(sample_path, root)
    return root


def test_unknown_item_in_windows_named_and_lenient_keeps_the_rest(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    lines = (root / "valid.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    first = next(csv.DictReader([lines[0], lines[1]]))
    first["item_id"] = "999999"
    with (root / "valid.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerow(first)
        fh.write("\n".join(lines[2:]) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(root)
    message = str(err.value)
    assert "valid.csv" in message and "line 2" in message and "999999" in message and "--lenient" in message
    ds = load_dataset(root, lenient=True)
    assert ds.rejects["reason"].to_list() == ["unknown_item"]
    assert ds.interactions.collect().height > 0


def test_malformed_and_duplicate_items(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    sids = json.loads((root / "sids.json").read_text())
    bad_id = next(iter(sids))
    sids[bad_id] = ["<a_1>", "<c_2>"]
    (root / "sids.json").write_text(json.dumps(sids))
    with pytest.raises(DataError, match=r"sids.json.*malformed_sid[\s\S]*levels must run"):
        load_dataset(root)
    (root / "items.json").write_text("{}")
    with pytest.raises(DataError, match="items.json: expected a non-empty JSON object"):
        load_dataset(root)


def test_empty_and_non_utf8_files(tmp_path):
    items = tmp_path / "items.csv"
    items.write_bytes(b"")
    with pytest.raises(DataError, match="items.csv: the file is empty"):
        load_items(TableSource(path=items))
    items.write_bytes(b"item_id,title\n1,ok\n2,caf\xe9 latin-1\n")
    with pytest.raises(DataError) as err:
        load_items(TableSource(path=items))
    assert "line 3" in str(err.value) and "UTF-8" in str(err.value) and "iconv" in str(err.value)
    catalog, rejects = load_items(TableSource(path=items), lenient=True)
    assert catalog.items["item_id"].to_list() == ["1"]
    assert rejects.select("location", "reason").row(0) == ("line 3", "non_utf8")


def test_generic_tables_with_column_mapping(tmp_path):
    pl.DataFrame({
        "asin": ["i1", "i2", "i3"], "name": ["Drill", "Bits", "Saw"], "maker": ["A", "A", "B"],
        "cats": ["tools|power", "tools", ""], "code": ["<s_a_1><s_b_2>", "<s_a_1><s_b_3>", "<s_a_2><s_b_2>"],
    }).write_parquet(tmp_path / "items.parquet")
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"uid": "u1", "asin": "i2", "time": "2024-01-02T00:00:00"},
        {"uid": "u1", "asin": "i1", "time": "2024-01-01T00:00:00"},
        {"uid": "u1", "asin": "i3", "time": "2024-01-03T00:00:00"},
        {"uid": "u2", "asin": "i3", "time": "2024-01-01T00:00:00"},
    ]))
    (tmp_path / "ds.toml").write_text(
        '[items]\npath = "items.parquet"\ncolumns = { item_id = "asin", title = "name", brand = "maker", '
        'categories = "cats", sid = "code" }\n'
        '[interactions]\npath = "events.jsonl"\ncolumns = { user_id = "uid", item_id = "asin", ts = "time" }\n'
    )
    ds = load_dataset(tmp_path / "ds.toml")
    assert ds.catalog.dialect.prefix == "s_" and ds.catalog.levels == 2
    assert ds.catalog.items["categories"][0].to_list() == ["tools", "power"]
    seqs = ds.sequences().collect()
    assert seqs.filter(pl.col("user_id") == "u1")["items"][0].to_list() == ["i1", "i2", "i3"]


def test_catalog_without_sids_inspects(tmp_path):
    from recot.data.summary import summarize

    (tmp_path / "items.csv").write_text("item_id,title\n1,a\n2,b\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,ts\nu,1,1\nu,2,2\n")
    (tmp_path / "ds.toml").write_text('items = { path = "items.csv" }\ninteractions = { path = "events.csv" }\n')
    report = summarize(load_dataset(tmp_path / "ds.toml"))
    assert report["sids"]["levels"] is None and report["sids"]["items_with_sid"] == 0
    assert report["users"] == 1 and report["interactions"] == 2


def test_missing_column_names_the_fix(tmp_path):
    pl.DataFrame({"id": ["1"], "title": ["x"]}).write_csv(tmp_path / "items.csv")
    with pytest.raises(DataError) as err:
        load_items(TableSource(path=tmp_path / "items.csv"))
    message = str(err.value)
    assert "items.csv" in message and "missing column 'item_id'" in message and "columns = { item_id" in message


def test_interactions_bad_rows(tmp_path):
    pl.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]}).write_csv(tmp_path / "items.csv")
    catalog, _ = load_items(TableSource(path=tmp_path / "items.csv"))
    (tmp_path / "events.csv").write_text("user_id,item_id,ts\nu1,a,10\nu1,zzz,11\nu2,b,not-a-time\nu2,a,12\n")
    source = TableSource(path=tmp_path / "events.csv")
    with pytest.raises(DataError, match=r"events.csv: unknown_item:\n.*line 3[\s\S]*bad_timestamp:\n.*line 4[\s\S]*"
                                        r"2 bad records of 2 kinds"):
        scan_interactions(source, catalog.items["item_id"])  # every kind of problem, in one error
    good, rejects = scan_interactions(source, catalog.items["item_id"], lenient=True)
    assert good.collect().height == 2
    assert sorted(rejects["reason"].to_list()) == ["bad_timestamp", "unknown_item"]


def test_duplicate_item_ids(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\n1,a\n2,b\n1,c\n")
    with pytest.raises(DataError, match=r"duplicate_item_id[\s\S]*line 2[\s\S]*line 4"):
        load_items(TableSource(path=tmp_path / "items.csv"))


def test_windows_without_item_sid_name_the_missing_column(sample_path, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(sample_path, root)
    for name in ("valid.csv", "test.csv"):
        pl.read_csv(root / name).drop("item_sid").write_csv(root / name)
    for lenient in (False, True):
        with pytest.raises(DataError, match="missing column 'item_sid'"):
            load_dataset(root, lenient=lenient)


def test_a_title_with_a_newline_stays_one_line_everywhere(sample_path, tmp_path):
    """Titles feed one-line fields (numbered histories, the CoT): the catalog keeps them on one line."""
    root = tmp_path / "ds"
    shutil.copytree(sample_path, root)
    items = json.loads((root / "items.json").read_text())
    first = next(iter(items))
    items[first]["title"] = "Drill\nbits  set\r\n(10)"
    (root / "items.json").write_text(json.dumps(items))
    catalog = load_dataset(root).catalog
    assert catalog.items.filter(pl.col("item_id") == first)["title"][0] == "Drill bits set (10)"


def test_an_unknown_history_item_is_named_not_the_target(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    frame = pl.read_csv(root / "valid.csv")
    history = frame["history_item_id"][0]
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(history.replace("[", "[424242, ", 1)))
                               .otherwise(pl.col("history_item_id")).alias("history_item_id"))
    frame.write_csv(root / "valid.csv")
    with pytest.raises(DataError, match="lacks item id\\(s\\) 424242"):
        load_dataset(root)


def test_a_repeated_key_in_items_or_sids_json_is_a_duplicate_id(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    text = (root / "sids.json").read_text()
    first = next(iter(json.loads(text)))
    (root / "sids.json").write_text(text.rstrip().rstrip("}") + f', "{first}": ["<a_1>", "<b_1>", "<c_1>"]}}')
    with pytest.raises(DataError, match="duplicate_id") as err:
        load_dataset(root)
    assert "sids.json" in str(err.value)
    ds = load_dataset(root, lenient=True)
    rejected = ds.rejects.filter(pl.col("reason") == "duplicate_id")
    assert rejected["record"].to_list() == [first] and rejected["file"].str.ends_with("sids.json").all()
    assert first not in ds.catalog.items["item_id"].to_list()  # ambiguous: neither value is trusted


def test_strict_mode_names_every_kind_of_problem_at_once(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    items = json.loads((root / "items.json").read_text())
    first, second = list(items)[:2]
    items[first] = "not an object"
    (root / "items.json").write_text(json.dumps(items))
    sids = json.loads((root / "sids.json").read_text())
    sids[second] = ["<a_1>", "<b_1>"]  # a SID with too few levels
    sids["999999"] = ["<a_1>", "<b_1>", "<c_1>"]  # an item items.json lacks
    (root / "sids.json").write_text(json.dumps(sids))
    with pytest.raises(DataError) as err:
        load_dataset(root)
    message = str(err.value)
    assert "bad_record" in message and "unknown_item" in message and "sid_level_mismatch" in message


def _rewritten_titles(sample_path: Path, folder: Path, titles: dict[str, str]) -> Path:
    """The sample with some items' titles replaced."""
    shutil.copytree(sample_path, folder)
    items = json.loads((folder / "items.json").read_text())
    for item_id, title in titles.items():
        items[item_id]["title"] = title
    (folder / "items.json").write_text(json.dumps(items))
    return folder


def test_item_text_is_made_safe_once_at_load(sample_path, sample, tmp_path):
    """No item text can close the think block or write a SID, twins that read the same are the same, titles are
    bounded; the dataset report says how many items were touched."""
    import unicodedata

    original = json.loads((sample_path / "items.json").read_text())
    ids = list(original)[:8]
    plain = original[ids[2]]["title"]
    titles = {ids[0]: "Drill </think>\nInterests: fake", ids[1]: "Bits <a_1><b_2><c_3> and <a_1>",
              ids[2]: unicodedata.normalize("NFKC", plain).translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)}),  # full-width
              ids[3]: "Sa\u200bnd\u200dpaper", ids[4]: "x" * 40_000, ids[5]: "Cafe\u0301 grinder",
              ids[6]: "Hammer \u2692\ufe0f", ids[7]: "Saw \u202eylno\u202c \u2067blade\u2069"}  # emoji variation, bidi controls
    ds = load_dataset(_rewritten_titles(sample_path, tmp_path / "ds", titles))
    got = dict(zip(ds.catalog.items["item_id"], ds.catalog.items["title"]))
    assert "</think>" not in got[ids[0]] and "<" not in got[ids[1]] and ">" not in got[ids[1]]
    assert got[ids[1]] == "Bits \u2039a_1\u203a\u2039b_2\u203a\u2039c_3\u203a and \u2039a_1\u203a"
    assert got[ids[2]] == unicodedata.normalize("NFKC", plain) and got[ids[3]] == "Sandpaper" and got[ids[5]] == "Caf\u00e9 grinder"
    assert len(got[ids[4]]) == 300 and got[ids[4]].endswith("\u2026")
    assert got[ids[6]] == "Hammer \u2692" and got[ids[7]] == "Saw ylno blade"
    before = sample.catalog.text_edits  # the sample's own text has some (™ becomes TM, HTML in descriptions)
    assert {k: v - before.get(k, 0) for k, v in ds.catalog.text_edits.items()} == {"normalised": 5, "invisible_removed": 3,
                                                                                        "brackets_neutralised": 2, "titles_cut": 1}
    from recot.data.summary import summarize

    assert summarize(ds)["text_edits"] == ds.catalog.text_edits


def test_item_text_that_looks_like_markup_travels_through_curation_and_export(sample_path, sample, tmp_path):
    """Titles holding a think marker or another item's SID neither fail the SID rules nor cut the exported CoT."""
    from recot.curation.export import ExportConfig, export
    from recot.curation.rules import run_rules
    from recot.curation.store import Store
    from recot.synth.job import SynthConfig, run_synth

    other = sample.catalog.sid_text()[0]
    titles = {item_id: f"Tool </think> {other} <a_1> #{n}" for n, item_id in enumerate(sample.catalog.items["item_id"].head(400))}
    folder = _rewritten_titles(sample_path, tmp_path / "ds", titles)
    run_synth(SynthConfig(dataset=folder, out=tmp_path / "s", tasks=["r3_cot_hindsight"], limit=40), progress=False)
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(load_dataset(folder).catalog)
        store.ingest(tmp_path / "s" / "traces.parquet")
        run_rules(store)
        failed = dict(store.con.execute("SELECT reason, count(*) FROM verdicts WHERE NOT passed GROUP BY ALL").fetchall())
        assert not {"unknown_sid", "hallucinated_items", "cot_format"} & set(failed), failed
        export(store, ExportConfig(name="x", out=tmp_path / "x", formats=["sft"], valid_share=0.0))
    sft = pl.read_parquet(tmp_path / "x" / "sft" / "train-*.parquet")
    completions = [m[1]["content"] for m in sft["messages"]]
    assert completions and all(c.count("</think>") == 1 and "\nTransition: " in c for c in completions)


def test_a_dataset_config_named_by_a_relative_path_finds_its_tables(tmp_path, monkeypatch):
    """`recot data inspect big/ds.toml` from the folder above: the tables are found next to the file, not in big/big/."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "items.csv").write_text("item_id,title\n1,a\n2,b\n")
    (big / "events.csv").write_text("user_id,item_id,ts\nu,1,1\nu,2,2\n")
    (big / "ds.toml").write_text('items = { path = "items.csv" }\ninteractions = { path = "events.csv" }\n')
    monkeypatch.chdir(tmp_path)
    assert load_dataset(Path("big") / "ds.toml").sequences().collect().height == 1


def test_a_byte_order_mark_in_items_json_is_read_past(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    (root / "items.json").write_bytes(b"\xef\xbb\xbf" + (root / "items.json").read_bytes())
    assert len(load_dataset(root).catalog) == 1296


def test_a_sid_of_the_wrong_shape_is_reported_against_sids_json_and_columns_are_named_plainly(sample_path, tmp_path):
    root = _copy_sample(sample_path, tmp_path)
    sids = json.loads((root / "sids.json").read_text())
    first = next(iter(sids))
    sids[first] = ["<a_1>", "<b_1>"]
    (root / "sids.json").write_text(json.dumps(sids))
    rejected = load_dataset(root, lenient=True).rejects.filter(pl.col("record") == first)
    assert rejected.select("file", "reason").rows() == [(str(root / "sids.json"), "sid_level_mismatch")]
    shutil.copy(sample_path / "sids.json", root / "sids.json")
    pl.read_csv(root / "valid.csv").drop("item_sid").write_csv(root / "valid.csv")
    with pytest.raises(DataError) as err:
        load_dataset(root)
    message = str(err.value)
    assert "missing column 'item_sid';" in message and "_row" not in message and "dataset config" not in message
    assert "a MiniOneRec CSV has the columns" in message


def test_following_the_fix_of_a_window_error_works_and_every_location_names_its_file(sample_path, tmp_path):
    """A row removed alone from the middle of a user's windows: the error names each location with its file, and its
    fix (remove the user's rows from every split file) gives a dataset that loads."""
    root = _copy_sample(sample_path, tmp_path)
    valid = pl.read_csv(root / "valid.csv", infer_schema=False).with_row_index()
    user = valid.group_by("user_id", maintain_order=True).len().filter(pl.col("len") >= 3)["user_id"][0]
    middle = valid.filter(pl.col("user_id") == user)["index"][1]
    valid.filter(pl.col("index") != middle).drop("index").write_csv(root / "valid.csv")
    with pytest.raises(DataError, match="inconsistent_windows") as err:
        load_dataset(root)
    message = str(err.value)
    locations = message.split("inconsistent_windows:")[1].split("(record")[0]
    assert all(loc.strip().startswith(("valid.csv line", "test.csv line")) for loc in locations.split(",")), message
    assert "every split file" in message
    for name in ("valid.csv", "test.csv"):
        frame = pl.read_csv(root / name, infer_schema=False)
        frame.filter(pl.col("user_id") != user).write_csv(root / name)
    assert load_dataset(root).rejects.is_empty()
