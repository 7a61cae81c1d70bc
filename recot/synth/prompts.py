"""The prompt library: one Jinja template per task, rendered in a sandbox.

A template starts with a header comment naming its task, version and output schema::

    {#- task: r3_cot_blind
    version: 1
    schema: CotTrace -#}

and defines a ``system`` and a ``user`` block. Item text is passed as variables, so it is data:
it is never parsed as template code; the ``quoted`` filter writes it as a JSON string literal, so the teacher
too reads a title as one delimited value, not as a line of the prompt. Rendering uses Jinja's sandbox with ``StrictUndefined`` (a
missing variable is an error, not an empty string). The template's content hash goes into every
request's provenance. Users override or add templates with a directory of their own.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from recot.errors import DataError
from recot.formats.profiles import PROFILES

_HEADER = re.compile(r"\A\{#-?(.*?)-?#\}", re.DOTALL)
_REQUIRED = ("task", "version", "schema")


class _Environment(SandboxedEnvironment):
    """Jinja's sandbox, with ``item.field`` read straight from a plain dict that has the key: the variables
    are plain data, and the sandbox's attribute lookup (which fails first, then indexes) costs a third of
    rendering a prompt with 30 item lines. Anything else goes through the sandbox's checks."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


@dataclass(frozen=True)
class PromptTemplate:
    task: str
    version: int
    schema: str
    path: Path
    source: str
    content_hash: str


@dataclass(frozen=True)
class RenderedPrompt:
    """Chat messages for one request, with the template provenance that goes with them."""

    messages: list[dict[str, str]]
    task: str
    template: str
    template_version: int
    template_hash: str
    schema: str


def _parse(path: Path) -> PromptTemplate:
    source = path.read_text(encoding="utf-8")
    match = _HEADER.match(source)
    try:
        header = yaml.safe_load(match.group(1).strip()) if match else None
    except yaml.YAMLError:
        header = None
    if not isinstance(header, dict) or any(k not in header for k in _REQUIRED):
        raise DataError(path, "template header is missing or incomplete",
                        "start the file with {#- task: NAME\\nversion: N\\nschema: MODEL -#}")
    return PromptTemplate(str(header["task"]), int(header["version"]), str(header["schema"]), path, source,
                          hashlib.sha256(source.encode()).hexdigest()[:16])


def quoted(value: Any) -> str:
    """Item text as a JSON string literal: quotes, newlines and control characters escaped, so a title reads as one
    delimited value (data) and cannot end its line or pose as the prompt's own instructions."""
    return json.dumps("" if value is None else str(value), ensure_ascii=False)


class PromptLibrary:
    """Templates by task: the bundled ones, overridden by any in ``override_dir`` with the same task, then
    ``extra`` files (the templates of user-declared tasks)."""

    def __init__(self, override_dir: Path | None = None, extra: list[Path] | None = None) -> None:
        bundled = Path(str(files("recot.prompts")))
        self.templates: dict[str, PromptTemplate] = {}
        paths = [p for folder in [bundled, *([override_dir] if override_dir else [])] for p in sorted(folder.glob("*.j2"))]
        for path in [*paths, *(extra or [])]:
            if not path.is_file():
                raise DataError(path, "no such template file", "point the task's template at its .j2 file")
            template = _parse(path)
            self.templates[template.task] = template
        env = _Environment(undefined=StrictUndefined, autoescape=False)
        env.filters["quoted"] = quoted
        # Compiled once here: a synthesis job renders each template millions of times.
        self._compiled: dict[str, Template] = {}
        for task, template in self.templates.items():
            try:
                self._compiled[task] = env.from_string(template.source)
            except TemplateError as exc:
                raise DataError(template.path, f"template does not compile: {exc}", "fix the Jinja syntax") from None

    def __getitem__(self, task: str) -> PromptTemplate:
        if task not in self.templates:
            raise KeyError(f"no template for task {task!r}; known: {sorted(self.templates)}")
        return self.templates[task]

    def render(self, task: str, **variables: Any) -> RenderedPrompt:
        """System and user messages of ``task`` for these variables (``profile``: the e-commerce one unless given)."""
        if "profile" not in variables:
            variables["profile"] = PROFILES["ecommerce"].model_dump()
        template, compiled = self[task], self._compiled[task]
        try:
            context = compiled.new_context(variables)
            parts = {name: "".join(block(context)).strip() for name, block in compiled.blocks.items()}
        except TemplateError as exc:
            raise DataError(template.path, f"template failed to render: {exc}",
                            "pass every variable the template uses; templates may not reach Python internals") from None
        messages = [{"role": role, "content": parts[role]} for role in ("system", "user") if parts.get(role)]
        return RenderedPrompt(messages, template.task, template.path.name, template.version,
                              template.content_hash, template.schema)
