"""Near-duplicate clusters against exact Jaccard, LSH parameters against datasketch's choice, and the
keep policy in the store."""

from __future__ import annotations

import random
import re

import numpy as np
import polars as pl
import pytest
from datasketch.lsh import _optimal_param

from recot.curation.dedup import DedupConfig, clusters, datasketch_candidates, link, lsh_params, run_dedup, shingles, signatures
from recot.curation.rules import run_rules
from recot.curation.store import Store
from recot.synth.job import SynthConfig, run_synth


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_parameters_match_datasketch(threshold):
    bands, rows = lsh_params(threshold, 128)
    ref_bands, ref_rows = _optimal_param(threshold, 128, 0.5, 0.5)
    assert bands == ref_bands and abs(rows - ref_rows) <= 1


def grams(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}


def test_clusters_hold_exactly_the_pairs_above_the_threshold():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choices(vocabulary, k=80)) for _ in range(200)]
    edited = []
    for text in base[:50]:
        words = text.split()
        words[rng.randrange(80)] = "edited"
        edited.append(" ".join(words))
    texts = base + edited + [base[0]]  # 50 near copies and one exact copy
    g = shingles(pl.Series(texts))
    sets = [grams(t) for t in texts]
    truth = {(a, b) for a in range(len(texts)) for b in range(a + 1, len(texts))
             if len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= 0.8}
    assert len(truth) == 52  # each near copy and the exact copy join their original
    # both engines: recot's signatures and banding, and datasketch's MinHashLSH proposing the pairs
    for labels in (clusters(signatures(g), g, 0.8), link(g, *datasketch_candidates(g, 0.7, 128), 0.8)):
        found = {(a, b) for a in range(len(texts)) for b in range(a + 1, len(texts)) if labels[a] == labels[b]}
        assert found == truth


@pytest.mark.parametrize("engine", ["recot", "datasketch"])
def test_dedup_keeps_the_trace_that_passes_and_is_shortest(sample_path, tmp_path, sample, engine):
    out = tmp_path / "synth"
    run_synth(SynthConfig(dataset=sample_path, out=out, tasks=["r3_cot_hindsight"], limit=60), progress=False)
    rows = pl.read_parquet(out / "traces.parquet")
    first = rows.row(0, named=True)
    copies = [first | {"subject_id": first["subject_id"] + f"#copy{i}", "text": first["text"] + " indeed" * i} for i in (1, 2)]
    second = rows.row(1, named=True)  # the same text but for case and white space: an exact duplicate
    copies.append(second | {"subject_id": second["subject_id"] + "#exact", "text": second["text"].upper().replace(" ", "  ")})
    pl.concat([rows, pl.DataFrame(copies, schema=rows.schema)]).write_parquet(tmp_path / "t.parquet")
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "t.parquet")
        run_rules(store)
        counts = run_dedup(store, DedupConfig(engine=engine))
        kept = store.con.execute("""SELECT t.subject_id FROM dup_clusters d JOIN traces t USING (trace_id)
                                    WHERE d.size = 3 AND d.keep""").fetchall()
        reasons = store.con.execute("SELECT count(*) FROM verdicts WHERE rule = 'dedup' AND reason = 'duplicate'").fetchone()[0]
        kinds = dict(store.con.execute("""SELECT t.subject_id, d.kind FROM dup_clusters d JOIN traces t USING (trace_id)
                                          WHERE t.subject_id LIKE ? OR t.subject_id LIKE ?""",
                                       [first["subject_id"] + "%", second["subject_id"] + "%"]).fetchall())
        unique = store.con.execute("SELECT count(*) FILTER (WHERE kind = 'unique' AND keep), count(*) FROM dup_clusters "
                                   "WHERE size = 1").fetchone()
    assert kept == [(first["subject_id"],)] and counts["near_dropped"] + counts["exact_dropped"] == reasons >= 3
    assert kinds[first["subject_id"] + "#copy1"] == "near" and kinds[second["subject_id"] + "#exact"] == "exact"
    assert counts["exact_dropped"] >= 1 and unique[0] == unique[1] > 0


def test_shingles_count_distinct_grams_with_long_words_case_and_empty_texts():
    texts = ["Internationalization internationalizations INTERNATIONALIZATION of a b",
             "abcdefgh abcdefghi abcdefgh abcdefghi abcdefgh", "", "one two", "x" * 40 + " " + "x" * 39 + "y"]
    g = shingles(pl.Series(texts), chunk=2)
    assert g.sizes.tolist() == [len(grams(t)) or len(set(re.findall(r"\w+", t.lower()))) for t in texts] == [4, 2, 0, 2, 2]


def test_signatures_fill_empty_bins_from_the_next_filled_one_and_do_not_depend_on_chunking():
    rng = random.Random(1)
    texts = [" ".join(f"w{rng.randrange(500)}" for _ in range(rng.randrange(0, 120))) for _ in range(50)]
    g = shingles(pl.Series(texts))
    whole, parts = signatures(g, 64, chunk=1 << 13), signatures(g, 64, chunk=7)
    assert (whole == parts).all()
    one = shingles(pl.Series(["a b c"]))  # one n-gram fills one bin; every other bin copies it, shifted by distance
    sig = signatures(one, 16)[0].astype("int64")
    filled = int(one.h[0] % 16)
    distance = (filled - np.arange(16)) % 16
    assert ((sig - sig[filled] - distance * 0x9E3779B9) % (1 << 32) == 0).all()


def test_dedup_in_small_chunks_equals_one_chunk_and_never_joins_tasks(sample_path, tmp_path, sample):
    out = tmp_path / "synth"
    run_synth(SynthConfig(dataset=sample_path, out=out, tasks=["r3_cot_hindsight", "r3_cot_blind"], limit=40), progress=False)
    rows = pl.read_parquet(out / "traces.parquet")
    # every trace again with one word added, and every hindsight text again as a blind trace
    copies = rows.with_columns(subject_id=pl.col("subject_id") + "#copy", text=pl.col("text") + " indeed")
    moved = rows.filter(pl.col("task") == "r3_cot_hindsight").with_columns(task=pl.lit("r3_cot_blind"),
                                                                          subject_id=pl.col("subject_id") + "#moved")
    pl.concat([rows, copies, moved]).write_parquet(tmp_path / "t.parquet")
    (tmp_path / "tasks.json").write_bytes((out / "tasks.json").read_bytes())
    snapshots = []
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "t.parquet")
        run_rules(store)
        for batch_rows in (1 << 17, 7):
            counts = run_dedup(store, batch_rows=batch_rows)
            snapshots.append(store.con.execute("SELECT * FROM dup_clusters ORDER BY trace_id").fetchall())
        spans = store.scalar("""SELECT count(*) FROM (SELECT cluster_id FROM dup_clusters JOIN traces USING (trace_id)
                                GROUP BY cluster_id HAVING count(DISTINCT task) > 1)""")
        leftovers = list(store.spill_dir.glob("recot/dedup/*"))
    assert snapshots[0] == snapshots[1] and spans == 0 and not leftovers
    assert counts["clusters"] >= rows.height  # each trace with its copy (and a hindsight one with its move), per task
