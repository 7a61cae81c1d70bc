"""Output schemas the teacher must follow, one pydantic model per task.

Persona prototypes are configurable per domain, so the R3 schema is built for a prototype list:
the teacher's structured output (vLLM structured outputs, OpenAI json_schema) can then only name
a listed prototype.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

ECOMMERCE_PERSONAS: tuple[str, ...] = (
    "family-oriented", "bargain hunter", "hobbyist maker", "professional buyer", "home improver",
    "tech enthusiast", "brand loyalist", "quality seeker", "bulk stocker", "gift giver",
    "outdoor adventurer", "health-conscious", "fashion follower", "pet owner", "student",
    "new homeowner", "eco-conscious", "collector", "small business owner", "impulse browser",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QA(Strict):
    question: str = Field(min_length=1, max_length=200)
    answer: str = Field(min_length=1, max_length=300)


class Attribute(Strict):
    name: str = Field(min_length=1, max_length=40)
    value: str = Field(min_length=1, max_length=120)


class ItemCaption(Strict):
    """R0: a caption grounded in the item's own text, the attributes it states, and question-answer
    pairs that tie the item's SID to its title and attributes (item perception: SID <-> language).
    Attributes are a bounded list of name-value pairs (a free-form object has no bound a grammar can hold,
    and OpenAI's strict mode refuses one)."""

    caption: str = Field(min_length=1, max_length=600)
    attributes: list[Attribute] = Field(max_length=8)
    qa: list[QA] = Field(min_length=1, max_length=4)


class ItemRelation(Strict):
    """R1: how a second item relates to a first, judged by the teacher."""

    relation: Literal["complement", "substitute", "same_interest", "unrelated"]
    rationale: str = Field(min_length=1, max_length=400)


class Interest(Strict):
    """One interest hypothesis, grounded in history positions (1-based, as numbered in the prompt)."""

    name: str = Field(min_length=1, max_length=80)
    evidence: list[int] = Field(min_length=1)


class InterestExpansion(Strict):
    """R2: a narrow set of next-interest hypotheses (1-5 worked best in OneReason)."""

    interests: list[Interest] = Field(min_length=1, max_length=5)


class Transition(Strict):
    """From the recent behaviour to what comes next, and which hypothesis it follows (1-based)."""

    recent: str = Field(min_length=1, max_length=300)
    follows: int = Field(ge=1, le=5)
    reasoning: str = Field(min_length=1, max_length=400)


class JudgeScore(Strict):
    """An LLM judge's score of one trace."""

    score: int = Field(ge=1, le=5)
    faithful: bool
    reason: str = Field(min_length=1, max_length=300)


@lru_cache(maxsize=32)
def cot_trace_model(personas: tuple[str, ...] = ECOMMERCE_PERSONAS) -> type[BaseModel]:
    """R3 trace schema for a persona list: persona, interests, transition, then the answer."""
    if not personas:
        raise ValueError("a persona list needs at least one prototype")
    persona = create_model(
        "Persona", __base__=Strict,
        prototype=(Literal[personas], ...),  # type: ignore[valid-type,arg-type]  # a Literal of run-time values
        evidence=(str, Field(min_length=1, max_length=300)),
    )
    return create_model(
        "CotTrace", __base__=Strict,
        persona=(persona, ...),
        interests=(list[Interest], Field(min_length=1, max_length=5)),
        transition=(Transition, ...),
        answer=(str, Field(min_length=1, max_length=200, description="the predicted next item's SID")),
    )


@lru_cache(maxsize=32)
def slate_trace_model(personas: tuple[str, ...] = ECOMMERCE_PERSONAS) -> type[BaseModel]:
    """R3 over a candidate slate: the CoT trace, its ``answer`` the picked candidate's SID, and for a ranked
    top-k the next ``alternatives`` in order. Each request's JSON schema narrows both to its slate
    (:func:`recot.formats.request_schemas.choice_constraint`); the job checks the same after parsing, whatever the teacher's decoding."""
    return create_model(
        "SlateTrace", __base__=cot_trace_model(personas),
        alternatives=(list[str], Field(default_factory=list, max_length=99, description="the next candidates' SIDs, best first")),
    )
