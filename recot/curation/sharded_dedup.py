"""Dedup of a sharded store: the clusters, keepers and verdicts of one node, computed shard by shard and bucket by bucket.

A one-node run (:func:`recot.curation.dedup.run_dedup`) numbers the answered traces in keep-policy order, links the
members of each LSH bucket to its first and previous member, keeps the links whose signature estimate and exact
Jaccard pass, and clusters greedily around leaders in that order. Every one of those is a function of a trace or of a
pair, except the numbering and the leaders, so here the per-trace and per-pair work runs as tasks and only those two
run on the driver (DuckDB's out-of-core sort, and 8 bytes a trace):

1. sketch (per shard): each answered trace's keep-policy keys, n-grams, signature bytes and band keys;
2. order (driver): each trace's row in keep-policy order over all shards and its task number;
3. scatter (per shard): (band, key salted by task, row, signature bytes) to a bucket partition chosen by the key;
4. link (per partition): per band, each bucket's members linked as on one node, and the pairs of one task whose
   signature estimate passes kept, sent to the shard of their first trace;
5. attach (per shard): the first trace's n-grams added to each pair (now few), sent to the second's shard;
6. check (per shard): the exact Jaccard of each pair, as on one node;
7. leaders (driver) over the linked pairs, then each shard's ``dup_clusters`` and ``dedup`` verdicts.

Each task writes its output (a file, or a folder of files) whole (:func:`recot.curation.shard_fs.publish`) and is
skipped when it is there, so a task Ray retries after its worker died redoes only its own part, and a rerun of a killed
job redoes nothing finished. The work folder, under the store's root (local or object storage), is named by the config
and the shards' generations: a changed store starts afresh.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from recot.curation.dedup import (
    KEEP_ORDER,
    KEYED_SQL,
    DedupConfig,
    Grams,
    bucket_pairs,
    cluster_counts,
    clusters_sql,
    estimate,
    gather,
    jaccard,
    leaders,
    lsh_params,
    record_clusters,
    salted,
    sketch,
    spread,
)
from recot.curation.shard_fs import connect, location, publish, published, read_table, remove
from recot.curation.shards import ShardedStore, run_tasks
from recot.curation.store import Store
from recot.errors import DataError
from recot.formats.student import sql_text
from recot.io import frame_of

# a linked pair: its rows in keep-policy order, and where each trace's sketch is (shard, row of its sketch file)
LINK_SCHEMA = {"row_a": pl.Int64, "row_b": pl.Int64, "local_a": pl.Int32, "shard_a": pl.Int32, "shard_b": pl.Int32, "local_b": pl.Int32}


def run_dedup(store: ShardedStore, config: DedupConfig = DedupConfig(), ray: Any = None, partitions: int | None = None,
              batch_rows: int = 1 << 16) -> dict[str, int]:
    """Cluster each task's answered traces over every shard; write each shard's ``dup_clusters`` and ``dedup`` verdicts,
    the same rows a one-node store of the same traces gets. ``partitions``: bucket partitions (default: one per shard;
    a partition holds about a shard's rows times the LSH bands, 156 bytes each, most of them signature bytes)."""
    if config.engine != "recot":
        raise DataError("dedup.engine", f"engine {config.engine!r} runs on one node only", "use engine = 'recot' on a sharded store")
    bands, rows = lsh_params(max(config.threshold - config.margin, 0.05), config.num_perm)
    generations = "|".join(g.name for g in store.generations())
    work = store.root / "work" / f"dedup-{hashlib.md5((config.model_dump_json() + generations).encode()).hexdigest()[:12]}"
    for stale in (store.root / "work").glob("dedup-*"):  # a run killed before the store changed since
        if stale.name != work.name:
            remove(stale)
    args = {"work": str(work), "config": config.model_dump_json(), "bands": bands, "rows": rows, "batch_rows": batch_rows}
    store.run(_sketch_shard, args, ray, reads=("traces", "verdicts", "scores"))
    n = _order(work, store.shards)
    parts = partitions or store.shards
    run_tasks(ray, _scatter, [(work, i, parts, config.num_perm) for i in range(store.shards)])
    run_tasks(ray, _link, [(work, p, store.shards, config.threshold, config.margin, config.num_perm) for p in range(parts)])
    run_tasks(ray, _attach, [(work, i, store.shards) for i in range(store.shards)])
    run_tasks(ray, _check, [(work, i, config.threshold) for i in range(store.shards)])
    clusters = _leaders_over(work, n)
    store.run(_record_shard, {"clusters": str(clusters)}, ray, reads=("verdicts",), writes=("verdicts", "dup_clusters"))
    counts = cluster_counts(connect(work), f"read_parquet({sql_text(str(clusters))})")
    remove(work)
    return counts


def _sketch_shard(local: Store, index: int, shards: int, args: dict) -> None:
    """Stage 1: the shard's answered traces with their keep-policy keys and sketches, ``work/sketch/sNNNNN.parquet``."""
    target = location(args["work"]) / "sketch" / f"s{index:05d}.parquet"
    if published(target):
        return
    config, bands = DedupConfig.model_validate_json(args["config"]), args["bands"]
    schema = pa.schema([("trace_id", pa.string()), ("task", pa.string()), ("failures", pa.int64()), ("judge", pa.float64()),
                        ("text_length", pa.int64()), ("exact_key", pa.uint64()), ("keys", pa.list_(pa.uint64(), bands)),
                        ("sig8", pa.binary(config.num_perm)), ("grams", pa.list_(pa.uint32()))])
    with publish(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in local.stream(KEYED_SQL, args["batch_rows"]):
            frame = frame_of(batch)
            part = sketch(frame["text"], config, bands, args["rows"])
            writer.write_table(pa.table({
                **{name: frame[name].to_arrow() for name in ("trace_id", "task", "failures", "judge", "text_length")},
                "exact_key": part.exact.to_arrow(),
                "keys": pa.FixedSizeListArray.from_arrays(pa.array(part.keys.T.ravel()), bands),
                "sig8": _binary(part.sig8, config.num_perm),
                "grams": pa.ListArray.from_arrays(pa.array(part.grams.offsets.astype(np.int32)), pa.array(part.grams.h)),
            }, schema=schema))


def _order(work: UPath, shards: int) -> int:
    """Stage 2: every answered trace's row in keep-policy order over all shards and its task's number (tasks in order,
    as one node numbers them), in ``work/order.parquet``; returns their count."""
    target = work / "order.parquet"
    files = ", ".join(sql_text(str(work / "sketch" / f"s{i:05d}.parquet")) for i in range(shards))
    if not published(target):
        con = connect(work)
        with publish(target) as tmp:
            con.execute(f"""
                COPY (SELECT row_number() OVER (ORDER BY {KEEP_ORDER}) - 1 AS row, dense_rank() OVER (ORDER BY task) - 1 AS task_no,
                             shard, local, trace_id, exact_key
                      FROM (SELECT trace_id, task, failures, judge, text_length, exact_key, file_row_number::INTEGER AS local,
                                   regexp_extract(filename, 's([0-9]+)\\.parquet$', 1)::INTEGER AS shard
                            FROM read_parquet([{files}], filename = true, file_row_number = true)))
                TO {sql_text(str(tmp))} (FORMAT parquet)""")
    with target.open("rb") as file:
        return pq.read_metadata(file).num_rows


def _ordered(work: UPath, shard: int) -> pl.DataFrame:
    """The order of one shard's traces (row, task number), by their place in its sketch file."""
    return frame_of(connect(work).sql(
        f"SELECT row, task_no FROM read_parquet({sql_text(str(work / 'order.parquet'))}) WHERE shard = {shard} ORDER BY local").to_arrow_table())


def _scatter(work: UPath, shard: int, partitions: int, num_perm: int) -> None:
    """Stage 3: the shard's (band, salted key, row, task, where its sketch is, signature bytes) to the bucket partition of
    the key, ``work/scatter/sNNNNN/pNNNNN.parquet``."""
    target = work / "scatter" / f"s{shard:05d}"
    if published(target):
        return
    order = _ordered(work, shard)
    sketch = read_table(work / "sketch" / f"s{shard:05d}.parquet", columns=["keys", "sig8"])
    keys_column = sketch["keys"].combine_chunks()
    bands, n = keys_column.type.list_size, len(order)
    keys = salted(keys_column.flatten().to_numpy().reshape(n, bands).T, order["task_no"].to_numpy()).ravel()
    local = np.tile(np.arange(n, dtype=np.int32), bands)
    part = (spread(keys) % np.uint64(partitions)).astype(np.int64)
    by_part = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[by_part], np.arange(partitions + 1))
    sig8 = _sig8(sketch["sig8"].combine_chunks(), num_perm)
    columns = {"band": np.repeat(np.arange(bands, dtype=np.int16), n), "key": keys, "row": np.tile(order["row"].to_numpy(), bands),
               "task": np.tile(order["task_no"].to_numpy().astype(np.int16), bands), "local": local}
    with publish(target) as tmp:
        tmp.mkdir()
        for p in range(partitions):
            rows = by_part[bounds[p]:bounds[p + 1]]
            table = pa.table({name: values[rows] for name, values in columns.items()})
            table = table.append_column("shard", pa.array(np.full(len(rows), shard, np.int32))).append_column(
                "sig8", _binary(sig8[local[rows]], num_perm))
            pq.write_table(table, tmp / f"p{p:05d}.parquet")


def _binary(rows: np.ndarray, width: int) -> pa.FixedSizeBinaryArray:
    """Rows of ``width`` bytes as one Arrow column (no copy per row)."""
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(rows), [None, pa.py_buffer(np.ascontiguousarray(rows).tobytes())])


def _link(work: UPath, part: int, shards: int, threshold: float, margin: float, num_perm: int) -> None:
    """Stage 4: per band, the partition's buckets linked as one node links them (members in row order, each to the first
    and the previous), the pairs of one task whose signature estimate (the low byte of each position) reaches
    ``threshold - margin`` kept, by the shard of their first trace, ``work/link/pNNNNN/sNNNNN.parquet``."""
    target = work / "link" / f"p{part:05d}"
    if published(target):
        return
    table = read_table([work / "scatter" / f"s{s:05d}" / f"p{part:05d}.parquet" for s in range(shards)])
    frame = frame_of(table.drop_columns(["sig8"])).with_row_index("i").sort("band", "row")
    sig8 = _sig8(table["sig8"].combine_chunks(), num_perm)
    found = []
    for (_,), members in frame.group_by("band", maintain_order=True):
        a, b = bucket_pairs([members["key"].to_numpy()], len(members))
        task, index = members["task"].to_numpy(), members["i"].to_numpy().astype(np.int64)
        same = task[a] == task[b]
        a, b = a[same], b[same]
        likely = estimate(sig8, index[a], index[b]) >= threshold - margin
        a, b = a[likely], b[likely]
        found.append(pl.DataFrame({"row_a": members["row"].to_numpy()[a], "row_b": members["row"].to_numpy()[b],
                                   "local_a": members["local"].to_numpy()[a], "shard_a": members["shard"].to_numpy()[a],
                                   "shard_b": members["shard"].to_numpy()[b], "local_b": members["local"].to_numpy()[b]}))
    pairs = pl.concat(found) if found else pl.DataFrame(schema=LINK_SCHEMA)
    with publish(target) as tmp:
        tmp.mkdir()
        for s in range(shards):
            pairs.filter(pl.col("shard_a") == s).drop("shard_a").write_parquet(tmp / f"s{s:05d}.parquet")


def _grams_of(work: UPath, shard: int) -> Grams:
    """A shard's n-grams, by its sketch file's rows."""
    return _grams(read_table(work / "sketch" / f"s{shard:05d}.parquet", columns=["grams"])["grams"].combine_chunks())


def _sig8(column: pa.FixedSizeBinaryArray, num_perm: int) -> np.ndarray:
    data = column.buffers()[1]
    if data is None:
        return np.zeros((0, num_perm), np.uint8)
    return np.frombuffer(data, dtype=np.uint8)[column.offset * num_perm:(column.offset + len(column)) * num_perm].reshape(-1, num_perm)


def _grams(column: pa.ListArray) -> Grams:
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy()[offsets[0]:offsets[-1]] if len(offsets) else np.zeros(0, np.uint32)
    return Grams(offsets - offsets[0] if len(offsets) else np.zeros(1, np.int64), values.astype(np.uint32))


def _attach(work: UPath, shard: int, shards: int) -> None:
    """Stage 5: the shard's pairs (each once) with their first trace's n-grams, by the shard of the second,
    ``work/attach/sNNNNN/sMMMMM.parquet``."""
    target = work / "attach" / f"s{shard:05d}"
    if published(target):
        return
    files = ", ".join(sql_text(str(work / "link" / f"p{p:05d}" / f"s{shard:05d}.parquet")) for p in _partitions(work))
    pairs = frame_of(connect(work).sql(f"SELECT DISTINCT * FROM read_parquet([{files}]) ORDER BY row_a, row_b").to_arrow_table())
    grams = _grams_of(work, shard)
    local = pairs["local_a"].to_numpy().astype(np.int64)
    picked = Grams(np.concatenate([[0], np.cumsum(grams.sizes[local])]).astype(np.int64),
                   grams.h[gather(grams.offsets[local], grams.sizes[local])])
    attached = pairs.select("row_a", "row_b", "shard_b", "local_b").to_arrow().append_column(
        "grams", pa.ListArray.from_arrays(pa.array(picked.offsets), pa.array(picked.h)))
    with publish(target) as tmp:
        tmp.mkdir()
        shard_b = pairs["shard_b"].to_numpy()
        for s in range(shards):
            pq.write_table(attached.filter(pa.array(shard_b == s)), tmp / f"s{s:05d}.parquet")


def _partitions(work: UPath) -> list[int]:
    return sorted(int(p.name[1:]) for p in (work / "link").glob("p*"))


def _check(work: UPath, shard: int, threshold: float) -> None:
    """Stage 6: the exact Jaccard of the pairs whose second trace is in this shard, held to ``threshold`` as on one
    node; the pairs that reach it, ``work/check/sNNNNN.parquet``."""
    target = work / "check" / f"s{shard:05d}.parquet"
    if published(target):
        return
    table = read_table(sorted((work / "attach").glob(f"s*/s{shard:05d}.parquet"), key=str))
    grams = _grams_of(work, shard)
    # the pairs' first traces as rows 0..m-1, then the shard's own traces
    m = table.num_rows
    first = _grams(table["grams"].combine_chunks())
    both = Grams(np.concatenate([first.offsets, first.offsets[-1] + grams.offsets[1:]]), np.concatenate([first.h, grams.h]))
    a, b = np.arange(m, dtype=np.int64), m + table["local_b"].to_numpy().astype(np.int64)
    passed = jaccard(both, a, b) >= threshold
    with publish(target) as tmp:
        pq.write_table(table.select(["row_a", "row_b"]).filter(pa.array(passed, pa.bool_())), tmp)


def _leaders_over(work: UPath, n: int) -> UPath:
    """Stage 7: one node's greedy leader clustering over the linked pairs, as ``dup_clusters`` rows with their shard."""
    target = work / "clusters.parquet"
    if published(target):
        return target
    linked = read_table(sorted((work / "check").glob("s*.parquet"), key=str))  # each pair once: attach kept it once, for one shard
    labels = leaders(n, linked["row_a"].to_numpy(), linked["row_b"].to_numpy())
    con = connect(work)
    con.register("found", pa.table({"row": np.arange(n), "label": labels, "size": np.bincount(labels, minlength=n)[labels]}))
    order = f"read_parquet({sql_text(str(work / 'order.parquet'))})"
    with publish(target) as tmp:
        con.execute(f"""COPY (SELECT c.*, o.shard FROM ({clusters_sql(order, 'found')}) c JOIN {order} o USING (trace_id))
                        TO {sql_text(str(tmp))} (FORMAT parquet)""")
    return target


def _record_shard(local: Store, index: int, shards: int, args: dict) -> None:
    record_clusters(local, f"SELECT * FROM read_parquet({sql_text(args['clusters'])}) WHERE shard = {index}")
