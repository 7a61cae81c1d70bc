"""The model room: sources by name, and the one loader every stage reads a checkpoint with."""

from __future__ import annotations

import pytest

from recot.errors import DataError
from recot.models import cache_root, get_model
from recot.models.loading import load_model, load_tokenizer


def test_an_unknown_source_is_a_named_error_listing_the_known_ones():
    with pytest.raises(DataError, match="unknown model source[\\s\\S]*smollm2-135m-instruct"):
        get_model("no-such-model")


def test_the_cache_follows_recot_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "models"


def test_a_checkpoint_of_another_catalog_is_refused_naming_both(tmp_path, sample):
    """A tokenizer that knows part of the catalog's SID tokens was trained on another catalog: a named error. One that
    knows none (a base model) or all of them loads; weights always load in float32."""
    import torch

    from recot.trainer.tiny_model import build_tiny_model

    catalog = sample.catalog
    tokens = catalog.dialect.tokens(catalog.codebook_sizes)
    titles = catalog.items["title"].to_list()[:200]
    partial = build_tiny_model(tmp_path / "partial", titles, sid_tokens=tokens[: len(tokens) // 2])
    with pytest.raises(DataError) as err:
        load_tokenizer(partial, catalog, "out/export")
    assert str(partial) in str(err.value) and "out/export" in str(err.value) and "another catalog" in str(err.value)
    for folder in (build_tiny_model(tmp_path / "base", titles), build_tiny_model(tmp_path / "full", titles, sid_tokens=tokens)):
        load_tokenizer(folder, catalog, "out/export")
    assert load_model(partial).model.embed_tokens.weight.dtype == torch.float32
