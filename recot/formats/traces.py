"""The traces schema: one row per subject and sample, as synthesis writes ``traces.parquet`` and the curation store
keeps it. The subject (user, history, target, items) is spread into columns; the rest keeps the journal's names
(status, reason, the answer, provenance)."""

from __future__ import annotations

import pyarrow as pa

TRACES_SCHEMA = pa.schema([
    ("request_hash", pa.string()), ("task", pa.string()), ("subject_id", pa.string()), ("user_id", pa.string()),
    ("part", pa.string()), ("history", pa.list_(pa.string())), ("history_ts", pa.list_(pa.int64())),
    ("target", pa.string()), ("target_ts", pa.int64()), ("cutoff_ts", pa.int64()), ("items", pa.list_(pa.string())),
    ("popular_rank", pa.int32()),
    ("sample", pa.int32()), ("seed", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("output", pa.string()), ("text", pa.string()), ("raw", pa.string()),
    ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()), ("messages", pa.string()), ("template", pa.string()),
    ("template_version", pa.int32()), ("template_hash", pa.string()), ("teacher", pa.string()),
    ("model", pa.string()), ("params", pa.string()), ("created_at", pa.string()),
    ("reasoning", pa.string()), ("reasoning_tokens", pa.int64()),
])
# reasoning: a thinking teacher's own reasoning, kept as provenance (the trace is ``text``); reasoning_tokens: as its
# server reported them (NULL: not reported), within completion_tokens
# items: the subject item(s) of R0/R1, the candidate slate (in the order shown) of slate tasks;
# popular_rank: a slate target's rank by training popularity among its candidates (the most-popular baseline)
SUBJECT_FIELDS = ("user_id", "part", "history", "history_ts", "target", "target_ts", "cutoff_ts", "items", "popular_rank")
