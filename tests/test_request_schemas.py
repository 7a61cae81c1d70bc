"""Per-request schemas: what a request's JSON schema allows is what the curation rules accept, every list and string is
bounded so a reply fits ``max_tokens``, and the schema stays in the subset every backend honours."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from recot.formats.profiles import PROFILES, ProfileBook
from recot.formats.request_schemas import EVIDENCE_ITEMS, longest, narrow, plain_line, plain_line_bounds, unbounded
from recot.formats.splits import SplitSpec
from recot.formats.tasks import TASKS, get_task
from recot.synth.prompts import PromptLibrary
from recot.synth.requests import ItemView, iter_requests, plan_subjects
from recot.synth.slates import SlateConfig, SlateSampler
from recot.teachers.base import Sampling


@pytest.fixture(scope="module")
def requests_of(sample, tmp_path_factory):
    """Planned requests of a task on the sample's training part (the job's own planning)."""
    split = SplitSpec.choose(sample.boundaries, "auto", 10).build(sample.sequences())
    slates = SlateSampler(SlateConfig(size=8, top_k=2), sample.catalog, split.part("train"))
    folder = tmp_path_factory.mktemp("plans")

    def plan(name: str, max_tokens: int = 768, narrowed: bool = True) -> list:
        subjects, _ = plan_subjects(get_task(name), sample.catalog, split, "train", 30)
        path = folder / f"{name}.parquet"
        subjects.sink_parquet(path)
        return list(iter_requests(get_task(name), path, PromptLibrary(), ItemView(sample.catalog), ProfileBook(PROFILES["ecommerce"]),
                                  ("rules", "rules-v1"), Sampling(max_tokens=max_tokens), slates=slates, narrowed=narrowed))

    return plan


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("max_tokens", [512, 768, 4096])
def test_every_bundled_request_schema_is_bounded_and_fits_its_max_tokens(requests_of, name, max_tokens):
    for request in requests_of(name, max_tokens)[:5]:
        assert unbounded(request.schema) == [], request.schema
        assert sum(longest(request.schema, 21)) <= max_tokens
        for node in [request.schema, *request.schema.get("$defs", {}).values()]:  # the strict form
            assert node.get("additionalProperties") is False and set(node["required"]) == set(node["properties"])
        assert "uniqueItems" not in json.dumps(request.schema)  # vLLM refuses it when the request is made


def test_the_schema_holds_no_keyword_xgrammar_would_hand_to_a_slower_backend(requests_of):
    pytest.importorskip("vllm")
    from vllm.v1.structured_output.backend_xgrammar import has_xgrammar_unsupported_json_features

    for name in TASKS:
        assert not has_xgrammar_unsupported_json_features(requests_of(name)[0].schema), name


def test_citations_and_answers_are_confined_to_the_request(requests_of, sample):
    sid_of = dict(zip(sample.catalog.items["item_id"], sample.catalog.sid_text()))
    for request in requests_of("r3_cot_hindsight"):
        h = len(request.subject["history"])
        evidence = request.schema["$defs"]["Interest"]["properties"]["evidence"]
        assert evidence["items"] == {"type": "integer", "minimum": 1, "maximum": h} and evidence["maxItems"] == min(h, EVIDENCE_ITEMS)
        assert request.schema["properties"]["answer"]["enum"] == [sid_of[request.subject["target"]]]
    for request in requests_of("r3_cot_slate"):
        shown = [sid_of[i] for i in request.subject["items"]]
        assert request.schema["properties"]["answer"]["enum"] == list(dict.fromkeys(shown))
        assert request.schema["properties"]["alternatives"]["maxItems"] == 1
    blind = requests_of("r3_cot_blind")[0].schema["properties"]["answer"]["pattern"]
    assert all(re.fullmatch(blind, sid) for sid in sid_of.values())
    assert not any(re.fullmatch(blind, bad) for bad in ("3,", "1666881701329709", "<a_1><b_2>", "<a_1><b_2><c_3><d_4>", "<a_1234><b_1><c_1>"))


def test_what_the_schema_allows_the_rules_accept_and_what_they_reject_it_refuses(requests_of, sample):
    """A reply at the schema's edges (the last history number, the longest strings) validates; the replies the real
    teacher wrote and the rules rejected (a citation past the history, a timestamp as an answer) do not."""
    request = requests_of("r3_cot_hindsight")[0]
    schema, h = request.schema, len(request.subject["history"])
    defs = schema["$defs"]

    def most(node: dict) -> int:  # a reasoning field is one plain line, its bound in the pattern
        return plain_line_bounds(node["pattern"])[1]

    longest_text = {name: "x" * most(node) for name, node in defs["Transition"]["properties"].items() if name != "follows"}
    reply = {"persona": {"prototype": "student", "evidence": "x" * most(defs["Persona"]["properties"]["evidence"])},
             "interests": [{"name": "n", "evidence": [h] * defs["Interest"]["properties"]["evidence"]["maxItems"]}],
             "transition": {**longest_text, "follows": 1}, "answer": schema["properties"]["answer"]["enum"][0]}
    jsonschema.validate(reply, schema)
    for bad in ({"interests": [{"name": "n", "evidence": [h + 1]}]}, {"interests": [{"name": "n", "evidence": [0]}]},
                {"answer": "1666881701329709"}, {"interests": [{"name": "n", "evidence": [1] * (EVIDENCE_ITEMS + 1)}]},
                {"transition": {**reply["transition"], "reasoning": "x" * 2000}},
                {"transition": {**reply["transition"], "reasoning": "after <a_1><b_2><c_3>"}},
                {"persona": {"prototype": "student", "evidence": "two\nlines"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(reply | bad, schema)


def test_task_schemas_as_declared_when_asked(requests_of):
    """``request_schemas = "task"``: the task's own schema (a slate answer still confined to its slate)."""
    hindsight = requests_of("r3_cot_hindsight", narrowed=False)[0].schema
    assert "enum" not in hindsight["properties"]["answer"] and "maxItems" not in hindsight["$defs"]["Interest"]["properties"]["evidence"]
    assert "enum" in requests_of("r3_cot_slate", narrowed=False)[0].schema["properties"]["answer"]


def test_narrowing_keeps_the_task_schema_untouched():
    schema = TASKS["r3_cot_blind"].schema(("student",)).model_json_schema()
    before = json.dumps(schema, sort_keys=True)
    narrow(schema, 3, "<a_\\d{1,2}>", 1, 256, 8)
    assert json.dumps(schema, sort_keys=True) == before


@pytest.mark.parametrize(("low", "high"), [(1, 1), (1, 80), (0, 128), (1, 129), (5, 400)])
def test_a_plain_line_holds_its_bounds_and_no_sid_or_line_break(low, high):
    pattern, most = re.compile(plain_line(low, high)), min(high, 128)
    lengths = [n for n in range(high + 3) if pattern.fullmatch("x" * n)]
    assert (lengths[0], lengths[-1], len(lengths)) == (low, most, most - low + 1) and plain_line_bounds(pattern.pattern) == (low, most)
    assert not pattern.search("a <a_1><b_2> b") and not pattern.search("two\nlines") and not pattern.search('say "x"')


def test_every_bundled_request_schema_compiles_in_xgrammar(requests_of, tiny_model):
    """The grammar vLLM builds from each schema, on a real tokenizer: xgrammar compiles it (it refuses some schemas
    that validate, e.g. a bounded repetition above 128)."""
    xgrammar = pytest.importorskip("xgrammar")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer)))
    for name in TASKS:
        for max_tokens in (768, 4096):
            compiler.compile_json_schema(json.dumps(requests_of(name, max_tokens)[0].schema), any_whitespace=False)
