"""Every kind of bad answer becomes a rejected row with its reason; a good one validates."""

import json

import pytest

from recot.formats.schemas import ItemRelation, cot_trace_model
from recot.synth.parse import parse_response
from recot.teachers.base import Response

GOOD = json.dumps({"relation": "substitute", "rationale": "both are drill bits"})


@pytest.mark.parametrize(("response", "reason"), [
    (Response("k", None, "stop"), "empty"),
    (Response("k", "   \n", "stop"), "empty"),
    (Response("k", None, "stop", refusal="I cannot help"), "refused"),
    (Response("k", "", "content_filter"), "refused"),
    (Response("k", GOOD[:15], "length", completion_tokens=8), "truncated"),
    (Response("k", "Sure! complement.", "stop"), "malformed_json"),
    (Response("k", "[1, 2]", "stop"), "malformed_json"),
    (Response("k", json.dumps({"relation": "sibling", "rationale": "x"}), "stop"), "schema_invalid"),
    (Response("k", json.dumps({"relation": "substitute", "rationale": "x", "extra": 1}), "stop"), "schema_invalid"),
    (Response("k", error="HTTP 400: bad request"), "request_error"),
])
def test_bad_answers_are_rejected_with_a_reason(response, reason):
    parsed = parse_response(response, ItemRelation)
    assert (parsed.status, parsed.reason, parsed.output) == ("rejected", reason, None)


def test_good_answer_validates():
    parsed = parse_response(Response("k", GOOD, "stop"), ItemRelation)
    assert parsed.status == "ok" and parsed.output.relation == "substitute"


def test_persona_outside_the_list_is_schema_invalid():
    trace = {"persona": {"prototype": "astronaut", "evidence": "x"}, "interests": [{"name": "a", "evidence": [1]}],
             "transition": {"recent": "r", "follows": 1, "reasoning": "y"}, "answer": "<a_1><b_2><c_3>"}
    parsed = parse_response(Response("k", json.dumps(trace), "stop"), cot_trace_model(("pet owner",)))
    assert parsed.reason == "schema_invalid" and "persona.prototype" in parsed.detail
