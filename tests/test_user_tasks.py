"""A task declared in a user's own module (outside recot) runs through synthesis, curation and export:
its template, schema and student prompt are its own, and the rules that apply follow from what it
declares (a plain pairs task gets the general rules, a CoT task the CoT rules and the blind-hit check)."""

from __future__ import annotations

import textwrap

import polars as pl
import pytest

from recot.curation.export import ExportConfig, export
from recot.curation.rules import BlindHitRule, RulesConfig, run_rules
from recot.curation.store import Store
from recot.errors import DataError
from recot.formats.student import ASK_THINK
from recot.formats.tasks import get_task
from recot.synth.job import SynthConfig, run_synth
from recot.teachers import OpenAITeacherConfig

MODULE = '''
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from recot.formats.cot import render_cot
from recot.formats.schemas import cot_trace_model
from recot.formats.tasks import Task

HERE = Path(__file__).parent


class Fit(BaseModel):
    relation: Literal["complement", "substitute", "same_interest", "unrelated"]
    rationale: str


FIT = Task("acme_fit", "pairs", lambda personas: Fit, lambda out: f"{out.relation}, because {out.rationale}",
           needs_target=True, student="Does {sid2} {title2} go with {sid1} {title1}?", template=HERE / "acme_fit.j2")
GUESS = Task("acme_guess", "samples", cot_trace_model, render_cot, cot=True, template=HERE / "acme_guess.j2")
NOT_A_TASK = 42
'''
FIT_TEMPLATE = '''{#- task: acme_fit
version: 1
schema: Fit -#}
{% block system %}You judge product fit. Answer in JSON.{% endblock %}
{% block user %}First: {{ first.sid }} {{ first.title }}
Second: {{ second.sid }} {{ second.title }}
How does the second relate to the first?{% endblock %}
'''
GUESS_TEMPLATE = '''{#- task: acme_guess
version: 1
schema: CotTrace -#}
{% block system %}Guess the next purchase. Answer in JSON.{% endblock %}
{% block user %}{% for it in history %}{{ loop.index }}. {{ it.sid }} {{ it.title }}
{% endfor %}Personas: {{ personas | join(", ") }}{% endblock %}
'''


@pytest.fixture()
def acme(tmp_path, monkeypatch):
    """The module ``acme_tasks`` in a folder of the user's, importable as a user's own code is."""
    folder = tmp_path / "userland"
    folder.mkdir()
    (folder / "acme_tasks.py").write_text(textwrap.dedent(MODULE))
    (folder / "acme_fit.j2").write_text(FIT_TEMPLATE)
    (folder / "acme_guess.j2").write_text(GUESS_TEMPLATE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_users_tasks_run_through_synthesis_curation_and_export(acme, sample_path, sample, tmp_path, instant_server):
    def job(task: str, model: str, out: str):
        return run_synth(SynthConfig(dataset=sample_path, out=tmp_path / out, tasks=[task], limit=20,
                                     teacher=OpenAITeacherConfig(model=model, base_urls=[instant_server.url])), progress=False)

    fit, guess = job("acme_tasks:FIT", "ok", "fit"), job("acme_tasks:GUESS", "cot", "guess")
    assert fit.complete and fit.ok == 20 and guess.complete and guess.ok == 20
    rows = pl.read_parquet(tmp_path / "fit" / "traces.parquet")
    assert set(rows["task"]) == {"acme_fit"} and rows["text"][0] == "complement, because a drill needs bits"
    assert rows["messages"][0].startswith('[{"role": "system", "content": "You judge product fit.')
    with Store(tmp_path / "c.duckdb") as store:
        store.load_catalog(sample.catalog)
        store.ingest(tmp_path / "fit" / "traces.parquet")
        store.ingest(tmp_path / "guess" / "traces.parquet")
        declared = dict(store.con.execute("SELECT task, cot FROM tasks WHERE task LIKE 'acme_%'").fetchall())
        assert declared == {"acme_fit": False, "acme_guess": True}
        run_rules(store)
        rules = dict(store.con.execute("""SELECT t.task, list(DISTINCT v.rule ORDER BY v.rule) FROM verdicts v
                                          JOIN traces t USING (trace_id) GROUP BY t.task""").fetchall())
        assert rules["acme_fit"] == ["language", "length", "schema_valid", "sid_validity"]
        assert {"cot_format", "persona", "interests", "grounding", "blind_hit"} <= set(rules["acme_guess"])
        assert "leakage" not in rules["acme_guess"]  # its prompt shows no target
        failed = dict(store.con.execute("SELECT rule, count(*) FROM verdicts WHERE NOT passed GROUP BY rule").fetchall())
        assert set(failed) <= {"blind_hit"}  # answering the last history item rarely hits the next one
        run_rules(store, RulesConfig(blind_hit=BlindHitRule(enabled=False)))
        export(store, ExportConfig(name="acme", out=tmp_path / "export", formats=["sft"], valid_share=0.0))
    sft = pl.read_parquet(tmp_path / "export" / "sft" / "train-*.parquet")
    by_task = {task: messages for task, messages in zip(sft["task"], sft["messages"])}
    fit_prompt = by_task["acme_fit"][0]["content"]
    assert fit_prompt.startswith("Does <a_") and " go with <a_" in fit_prompt and fit_prompt.endswith("?")
    assert by_task["acme_guess"][0]["content"].endswith(ASK_THINK) and by_task["acme_guess"][1]["content"].startswith("<think>")


def test_a_task_that_cannot_be_found_is_named(acme):
    assert get_task("acme_tasks:GUESS").cot
    with pytest.raises(DataError, match="cannot import module 'acme_nowhere'"):
        get_task("acme_nowhere:TASK")
    with pytest.raises(DataError, match="has no attribute 'MISSING'"):
        get_task("acme_tasks:MISSING")
    with pytest.raises(DataError, match="not a recot.formats.tasks.Task"):
        get_task("acme_tasks:NOT_A_TASK")
    with pytest.raises(DataError, match="unknown task"):
        get_task("r9_nothing")


def test_traces_of_an_undeclared_task_are_refused_at_ingest(acme, sample_path, tmp_path, instant_server):
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "fit", tasks=["acme_tasks:FIT"], limit=3,
                          teacher=OpenAITeacherConfig(model="ok", base_urls=[instant_server.url])), progress=False)
    (tmp_path / "fit" / "tasks.json").unlink()
    with Store(tmp_path / "c.duckdb") as store, pytest.raises(DataError, match=r"acme_fit.*not declared"):
        store.ingest(tmp_path / "fit" / "traces.parquet")


def test_a_teacher_that_cannot_answer_a_task_names_those_that_can(acme, sample_path, tmp_path):
    from recot.teachers import UnsupportedTask

    with pytest.raises(UnsupportedTask, match=r"teacher 'rules' cannot answer task 'acme_fit'[\s\S]*fix: choose a teacher that can: openai, vllm"):
        run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "fit", tasks=["acme_tasks:FIT"], limit=3), progress=False)
    assert not (tmp_path / "fit" / "traces.parquet").exists()


MIRROR = '''
from typing import Literal

from pydantic import BaseModel, ConfigDict

from recot.teachers.base import TeacherKind
from recot.teachers.rules import RulesTeacher


class MirrorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["mirror"] = "mirror"
    model: str = "mirror-1"


class Mirror(RulesTeacher):
    kind = "mirror"


def build(config, inputs):
    teacher = Mirror.from_targets(inputs.catalog, inputs.personas, inputs.train_targets)
    teacher.model = config.model
    return teacher


KIND = TeacherKind(MirrorConfig, build, Mirror.tasks)
'''


def test_a_teacher_from_a_users_package_joins_the_registry_through_its_entry_point(sample_path, tmp_path):
    """A package that declares a TeacherKind under the `recot.teachers` entry points is a `[teacher] kind` of the
    installed command line: recot itself is not edited, and a typo in its table is refused like any other."""
    import os
    import subprocess

    from recot.testing import RECOT

    site = tmp_path / "site"
    (site / "mirror_teacher-0.1.dist-info").mkdir(parents=True)
    (site / "mirror_teacher.py").write_text(textwrap.dedent(MIRROR))
    (site / "mirror_teacher-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mirror-teacher\nVersion: 0.1\n")
    (site / "mirror_teacher-0.1.dist-info" / "entry_points.txt").write_text("[recot.teachers]\nmirror = mirror_teacher:KIND\n")
    config = tmp_path / "synth.toml"
    config.write_text(f'dataset = "{sample_path}"\nout = "{tmp_path / "out"}"\ntasks = ["r2_interests"]\nlimit = 6\n'
                      '[teacher]\nkind = "mirror"\nmodel = "mirror-7"\n')
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([*RECOT, "synth", "run", str(config), "--no-progress", "--json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pl.read_parquet(tmp_path / "out" / "traces.parquet")
    assert rows.height == 6 and set(rows["teacher"]) == {"mirror"} and set(rows["model"]) == {"mirror-7"}
    config.write_text(config.read_text().replace('model = "mirror-7"', 'modle = "mirror-7"'))
    done = subprocess.run([*RECOT, "synth", "run", str(config), "--no-progress"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "did you mean 'teacher.model'" in done.stderr
