"""Job and dataset configs: TOML or YAML files validated by pydantic, with CLI overrides on top."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from synth.errors import DataError

M = TypeVar("M", bound=BaseModel)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "config file not found", "check the path") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"config is not UTF-8 ({exc.reason})", "save the file as UTF-8") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise DataError(path, f"config does not parse: {exc}", "fix the syntax at the position shown") from None
    if not isinstance(data, dict):
        raise DataError(path, "config must be a table of settings", "write key = value pairs (TOML) or a mapping (YAML)")
    return data


def load_config(model: type[M], path: Path | None = None, overrides: dict[str, Any] | None = None) -> M:
    """Validate a config file (optional) merged with overrides; the error names the file and the field."""
    data = read_config_file(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(
            path or "command-line options",
            f"setting {field!r}: {first['msg']} ({exc.error_count()} problem(s) in all)",
            f"see the fields of {model.__name__} in the README",
        ) from None
