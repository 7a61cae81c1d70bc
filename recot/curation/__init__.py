"""Curation: the DuckDB store, rules with reason codes, dedup, judges, usefulness, review in Argilla and the
export (with the hand-off training reads)."""
