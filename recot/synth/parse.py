"""Turn a teacher's raw answer into a validated output or a rejection with a reason code.

A bad answer never crashes a job: it becomes a row with ``status = "rejected"`` and one of
:data:`REASONS`, so curation can count and inspect it. Checks run from the cheapest to the most
specific, and the first failing one names the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from recot.teachers.base import Response

REASONS = {
    "empty": "the teacher returned no text",
    "refused": "the teacher refused (refusal field or content filter)",
    "truncated": "generation stopped at max_tokens (finish_reason length); raise sampling.max_tokens",
    "truncated_reasoning": "a thinking teacher spent sampling.max_tokens on its reasoning and never answered; raise "
                           "max_tokens (it bounds reasoning and answer together) or lower the teacher's reasoning effort",
    "malformed_json": "the text is not one JSON object",
    "schema_invalid": "the JSON does not match the task's output schema",
    "request_error": "the endpoint rejected the request itself (a 4xx other than 429)",
    "bad_reply": "every reply was unusable (HTTP 200 with a truncated, non-JSON or choice-less body), retries included",
    "off_slate": "a slate answer names a SID that is not a candidate, repeats one, or ranks the wrong number of them",
    "prompt_too_long": "the prompt does not fit the engine's context (max_model_len); shorten max_history or raise it",
}


@dataclass(frozen=True)
class Parsed:
    status: str  # "ok" or "rejected"
    reason: str | None
    detail: str | None
    output: BaseModel | None


def _reject(reason: str, detail: str | None = None) -> Parsed:
    return Parsed("rejected", reason, detail, None)


def parse_response(response: Response, schema: type[BaseModel]) -> Parsed:
    """Validate ``response`` against ``schema``; the result is ok or names why not."""
    if response.error:
        return _reject(response.reason, response.error)
    if response.refusal or response.finish_reason == "content_filter":
        return _reject("refused", response.refusal or "finish_reason content_filter")
    text = (response.text or "").strip()
    thought = f" ({response.reasoning_tokens} of them reasoning)" if response.reasoning_tokens is not None else ""
    if response.finish_reason == "length" and not text and response.reasoning:
        return _reject("truncated_reasoning", f"stopped inside the reasoning after {response.completion_tokens} tokens{thought}")
    if not text:
        return _reject("empty")
    if response.finish_reason == "length":
        return _reject("truncated", f"stopped after {response.completion_tokens} tokens{thought}")
    try:
        # strict=False: vLLM's JSON grammars let raw control characters into strings; keep the answer
        # and leave such text to curation's format rules rather than lose it here.
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        return _reject("malformed_json", f"{exc.msg} at character {exc.pos}")
    if not isinstance(data, dict):
        return _reject("malformed_json", f"expected a JSON object, got {type(data).__name__}")
    try:
        return Parsed("ok", None, None, schema.model_validate(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        return _reject("schema_invalid", f"{where}: {first['msg']} ({exc.error_count()} errors)")


def off_slate(parsed: Parsed, slate_sids: list[str], top_k: int) -> Parsed:
    """``parsed`` (a valid slate trace) or its rejection when the picks are not ``top_k`` distinct candidates.

    Structured outputs already confine the picks; this holds for teachers that decode freely too."""
    output: Any = parsed.output  # a slate trace model: answer and alternatives
    picks = [output.answer, *output.alternatives]
    off = [sid for sid in picks if sid not in slate_sids]
    if off:
        return _reject("off_slate", f"{off[0]} is not a candidate")
    if len(set(picks)) != len(picks) or len(picks) != top_k:
        return _reject("off_slate", f"{len(picks)} picks ({len(set(picks))} distinct) where {top_k} were asked")
    return parsed
