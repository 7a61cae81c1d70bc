"""One way to load every config: TOML or YAML, validated, paths relative to the file, typos answered.

Pydantic models (synthesis, rules, judge, export, review, eval, recipe, pipeline) and TRL-style
dataclasses (RecSFTConfig, RecGRPOConfig) load through :func:`load_config`:

- relative paths are resolved from the file that names them (CLI overrides stay relative to the
  working directory): every ``Path`` field, and model fields (``model``, ``model_path``, ...) when
  the file-relative folder exists or the value starts with ``./`` or ``../`` (otherwise they stay as
  given: a hub id such as ``Qwen/Qwen3-8B``);
- unknown keys, nested ones included, are refused with the closest valid key suggested;
- sub-configs are validated at load time, so a typo never surfaces after hours of work.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from recot.errors import DataError

C = TypeVar("C")
# str fields that name a model: a hub id stays as given, a folder next to the config file is rebased
MODEL_KEYS = frozenset({"model", "model_path", "base_model", "scorer", "tokenizer"})
# str fields of the TRL-style dataclass configs that are paths
DATACLASS_PATH_KEYS = frozenset({"dataset_path", "sid_catalog", "output_dir", "logging_dir"})


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


def load_config(kind: type[C], path: Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """A ``kind`` (pydantic model or dataclass) from the file at ``path`` (optional), with non-None
    ``overrides`` on top. Errors name the file, the setting and the fix."""
    where = path or "command-line options"
    data = read_config_file(path) if path else {}
    if path is not None:
        data = rebase_paths(kind, data, path.parent)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    check_keys(kind, data, where)
    if dataclasses.is_dataclass(kind):
        try:
            return kind(**data)
        except (TypeError, ValueError) as exc:
            raise DataError(where, f"{kind.__name__}: {exc}", f"fix the setting; the fields of {kind.__name__} are TRL's plus recot's") from None
    try:
        return kind.model_validate(data)  # type: ignore[attr-defined]  # a pydantic model here: dataclasses returned above
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(where, f"setting {field!r}: {first['msg']} ({exc.error_count()} problem(s) in all)",
                        f"see the fields of {kind.__name__} (`recot config NAME` lists them)") from None


def config_fields(kind: type) -> dict[str, Any]:
    """Field name -> annotation (pydantic) or None (dataclass: names only)."""
    if dataclasses.is_dataclass(kind):
        return {f.name: None for f in dataclasses.fields(kind) if f.init}
    return {name: info.annotation for name, info in kind.model_fields.items()}  # type: ignore[attr-defined]  # a pydantic model


def check_keys(kind: type, data: dict[str, Any], where: str | Path, prefix: str = "") -> None:
    """Refuse unknown keys (nested sub-configs included), suggesting the closest valid one."""
    fields = config_fields(kind)
    problem = unknown_keys(kind, data, prefix)
    if problem:
        raise DataError(where, *problem)
    for key, value in data.items():
        kinds = _kinds(fields[key])
        if kinds and isinstance(value, dict) and value.get("kind") not in kinds:
            raise DataError(where, f"setting '{prefix}{key}.kind' is {value.get('kind')!r}",
                            f"set {prefix}{key}.kind to one of {', '.join(map(repr, kinds))}")
        sub = _sub_config(fields[key], value)
        if sub is not None:
            check_keys(sub, value, where, f"{prefix}{key}.")


def unknown_keys(kind: type, data: dict[str, Any], prefix: str = "") -> tuple[str, str] | None:
    """(problem, fix) for the first key of ``data`` that ``kind`` lacks, with the closest valid key; None if all are known."""
    fields = config_fields(kind)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(sorted(fields))}"
            return f"unknown setting '{prefix}{key}' in {kind.__name__}", hint
    return None


def check_stage(kind: type, data: dict[str, Any], name: str, **fixed: Any) -> None:
    """Validate a nested stage table (keys and values) by building its config now, so a typo in a later stage
    of a recipe or pipeline surfaces when the file loads, not hours into the run. Raises ValueError."""
    problem = unknown_keys(kind, data, f"{name}.")
    if problem:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    try:
        kind(**{**data, **fixed})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"[{name}]: {exc}") from None


def rebase_paths(kind: type, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """``data`` with relative paths resolved from ``base`` (the config file's folder), sub-configs included."""
    fields = config_fields(kind)
    out = dict(data)
    for key, value in data.items():
        if key not in fields or value is None:
            continue
        annotation = fields[key]
        sub = _sub_config(annotation, value)
        if sub is not None:
            out[key] = rebase_paths(sub, value, base)
        elif key in MODEL_KEYS and isinstance(value, str):
            out[key] = _rebase(value, base) if _is_local(value, base) else value
        elif (annotation is None and key in DATACLASS_PATH_KEYS) or _is_path(annotation):
            out[key] = [_rebase(v, base) for v in value] if isinstance(value, list) else _rebase(value, base)
    return out


def _is_local(model: str, base: Path) -> bool:
    """A model value names a folder (not a hub id) when it exists next to the config or is written as a
    relative path (``./m``, ``../out/sft``)."""
    return (base / model).exists() or model.startswith(("./", "../"))


def _rebase(value: str | Path, base: Path) -> str:
    return str(value) if Path(value).is_absolute() else os.path.normpath(base / value)


def _members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    return (annotation,)


def _kinds(annotation: Any) -> list[str]:
    """The ``kind`` values of a union of configs told apart by kind (empty for any other annotation)."""
    members = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel) and "kind" in m.model_fields]
    if len(members) < 2:
        return []
    return [kind for m in members for kind in typing.get_args(m.model_fields["kind"].annotation)]


def _is_path(annotation: Any) -> bool:
    members = _members(annotation)
    return any(m is Path or (typing.get_origin(m) is list and typing.get_args(m) == (Path,)) for m in members)


def _sub_config(annotation: Any, value: Any) -> type | None:
    """The config class a nested table is validated as: a pydantic model or dataclass field, or the member
    of a union whose ``kind`` matches the table's (configs told apart by kind)."""
    if annotation is None or not isinstance(value, dict):
        return None
    candidates = [m for m in _members(annotation)
                  if isinstance(m, type) and (dataclasses.is_dataclass(m) or issubclass(m, BaseModel))]
    if len(candidates) > 1:
        candidates = [m for m in candidates if issubclass(m, BaseModel) and "kind" in m.model_fields
                      and value.get("kind") in typing.get_args(m.model_fields["kind"].annotation)]
    return candidates[0] if len(candidates) == 1 else None
