"""Grounding of a reasoning text in its history (the design's EHR and cov_rate), defined once and written twice:
in Python for one text (evaluation) and in SQL for every trace of a store (the ``grounding`` rule). The two are
held to each other by tests/test_formats.py.

EHR is the share of SIDs the reasoning mentions that are not in the history (0 when it mentions none); cov_rate
the share of history positions it cites as ``#k`` or whose SID it mentions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from recot.formats.sid import ANY_SID_PATTERN

CITATION = r"#(\d+)"  # a history position cited as #k (Python re and DuckDB RE2 alike)


def grounding(reasoning: str, history_sids: Sequence[str | None], sid_pattern: str = ANY_SID_PATTERN) -> tuple[float, float]:
    """(EHR, cov_rate) of a reasoning text against its history's SIDs (None for an item without one)."""
    mentioned = re.findall(sid_pattern, reasoning)
    cited = {int(k) for k in re.findall(CITATION, reasoning)}
    known = {s for s in history_sids if s}
    ehr = sum(s not in known for s in mentioned) / len(mentioned) if mentioned else 0.0
    covered = sum(1 for k, s in enumerate(history_sids, start=1) if k in cited or (s is not None and s in mentioned))
    return ehr, covered / max(len(history_sids), 1)


def grounding_sql(relation: str, sid_pattern: str = ANY_SID_PATTERN) -> str:
    """SQL: ``trace_id, ehr, cov_rate`` of every row of ``relation``, whose columns are ``trace_id``, ``reasoning`` and
    ``history_sids`` (NULL for an item without a SID): :func:`grounding` for a whole table at once."""
    return f"""
        WITH x AS (SELECT trace_id, history_sids AS hist, regexp_extract_all(reasoning, '{sid_pattern}') AS sids,
                          list_transform(regexp_extract_all(reasoning, '{CITATION}', 1), lambda p: TRY_CAST(p AS INTEGER)) AS cited
                   FROM {relation})
        SELECT trace_id, coalesce(len(list_filter(sids, lambda s: NOT list_contains(hist, s))) / nullif(len(sids), 0)::DOUBLE, 0.0) AS ehr,
               len(list_filter(range(1, len(hist) + 1), lambda p: list_contains(cited, p) OR list_contains(sids, hist[p])))
                   / greatest(len(hist), 1)::DOUBLE AS cov_rate
        FROM x"""
