"""Prompt library: headers, sandboxed rendering, overrides, schemas and the CoT text format."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from recot.errors import DataError
from recot.formats.cot import render_cot
from recot.formats.schemas import ECOMMERCE_PERSONAS, InterestExpansion, cot_trace_model
from recot.synth.prompts import PromptLibrary

TASKS = {"r0_caption", "r1_relation", "r2_interests", "r3_cot_blind", "r3_cot_slate", "r3_cot_hindsight", "judge"}


def _items(sample, n: int) -> list[dict]:
    rows = sample.catalog.items.with_columns(sid=sample.catalog.sid_text()).head(n)
    return rows.select("sid", "title", "brand", "description").to_dicts()


def test_every_task_has_a_versioned_template_with_a_known_schema(sample):
    library = PromptLibrary()
    assert set(library.templates) == TASKS
    history = _items(sample, 4)
    variables = {
        "r0_caption": {"item": history[0]},
        "r1_relation": {"first": history[0], "second": history[1]},
        "r2_interests": {"history": history},
        "r3_cot_blind": {"history": history, "personas": ECOMMERCE_PERSONAS},
        "r3_cot_slate": {"history": history, "personas": ECOMMERCE_PERSONAS, "slate": history[::-1], "top_k": 2,
                         "slate_lines": "".join(f"- {it['sid']} {it['title']}\n" for it in history[::-1])},
        "r3_cot_hindsight": {"history": history[:3], "target": history[3], "personas": ECOMMERCE_PERSONAS},
        "judge": {"history": history, "trace": "<think>...</think>"},
    }
    for task, kwargs in variables.items():
        prompt = library.render(task, **kwargs)
        assert [m["role"] for m in prompt.messages] == ["system", "user"]
        assert prompt.template_version >= 1 and len(prompt.template_hash) == 16
        assert history[0]["title"] in prompt.messages[1]["content"]
    hindsight = library.render("r3_cot_hindsight", **variables["r3_cot_hindsight"]).messages[1]["content"]
    assert "must not contain" in hindsight and history[3]["sid"] in hindsight


def test_item_text_is_data_never_template_code(sample):
    evil = {"sid": "<a_1><b_1><c_1>", "title": "{{ 7*7 }}{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
            "brand": "{{ config }}", "description": None}
    prompt = PromptLibrary().render("r0_caption", item=evil)
    text = prompt.messages[1]["content"]
    assert evil["title"] in text and "49" not in text and "{{ config }}" in text


def test_missing_variable_and_unsafe_override_are_refused(tmp_path):
    library = PromptLibrary()
    with pytest.raises(DataError, match="r0_caption.j2.*'item' is undefined"):
        library.render("r0_caption")
    (tmp_path / "r0.j2").write_text(
        "{#- task: r0_caption\nversion: 2\nschema: ItemCaption -#}\n"
        "{% block user %}{{ item.__class__.__mro__[1].__subclasses__() }}{% endblock %}"
    )
    custom = PromptLibrary(tmp_path)
    assert custom["r0_caption"].version == 2
    with pytest.raises(DataError, match="unsafe|not safely|access"):
        custom.render("r0_caption", item={"title": "x"})
    (tmp_path / "bad.j2").write_text("{% block user %}no header{% endblock %}")
    with pytest.raises(DataError, match="bad.j2: template header"):
        PromptLibrary(tmp_path)


def test_cot_schema_enforces_personas_and_renders_the_fixed_format():
    model = cot_trace_model(("bargain hunter", "hobbyist maker"))
    trace = {
        "persona": {"prototype": "hobbyist maker", "evidence": "buys filament and glue (#1, #2)"},
        "interests": [{"name": "3D printing supplies", "evidence": [1, 2]}],
        "transition": {"recent": "just bought glue", "follows": 1, "reasoning": "finishing prints needs sanding"},
        "answer": "<a_1><b_2><c_3>",
    }
    text = render_cot(model.model_validate(trace))
    assert text.splitlines() == [
        "<think>",
        "Persona: hobbyist maker. buys filament and glue (#1, #2)",
        "Interests:",
        "1. 3D printing supplies (from #1, #2)",
        "Transition: just bought glue -> interest 1. finishing prints needs sanding",
        "</think>",
        "<a_1><b_2><c_3>",
    ]
    with pytest.raises(ValidationError):
        model.model_validate({**trace, "persona": {"prototype": "astronaut", "evidence": "x"}})
    with pytest.raises(ValidationError):
        InterestExpansion.model_validate({"interests": [{"name": f"i{i}", "evidence": [1]} for i in range(6)]})
    schema = json.dumps(model.model_json_schema())
    assert "bargain hunter" in schema and "additionalProperties" in schema


def test_template_with_broken_syntax_is_named_at_load(tmp_path):
    (tmp_path / "r0.j2").write_text("{#- task: r0_caption\nversion: 3\nschema: ItemCaption -#}\n{% block user %}{{ item.title {% endblock %}")
    with pytest.raises(DataError, match="r0.j2: template does not compile"):
        PromptLibrary(tmp_path)
