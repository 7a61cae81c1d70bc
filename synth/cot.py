"""The one text format of a chain-of-thought trace used for training.

Every R3 trace, whoever wrote it, is rendered from its structured output into::

    <think>
    Persona: <prototype>. <evidence>
    Interests:
    1. <name> (from #2, #5)
    2. ...
    Transition: <recent behaviour> -> interest 1. <reasoning>
    </think>
    <answer SID>

so every training sample has the same shape and curation rules can find each module by its label.
"""

from __future__ import annotations

from pydantic import BaseModel

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def render_cot(trace: BaseModel) -> str:
    """Training text of a validated :func:`synth.schemas.cot_trace_model` instance."""
    interests = "\n".join(
        f"{i}. {item.name} (from {', '.join(f'#{e}' for e in item.evidence)})"
        for i, item in enumerate(trace.interests, start=1)
    )
    return (
        f"{THINK_OPEN}\n"
        f"Persona: {trace.persona.prototype}. {trace.persona.evidence}\n"
        f"Interests:\n{interests}\n"
        f"Transition: {trace.transition.recent} -> interest {trace.transition.follows}. {trace.transition.reasoning}\n"
        f"{THINK_CLOSE}\n"
        f"{trace.answer}"
    )
