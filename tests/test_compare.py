"""Teachers side by side (`recot curate compare`): the rules teacher against a teacher over HTTP (the instant server's
R3 trace mode, priced), on the same planned requests. Every figure equals what each output's own store says, the
agreement counts cover the requests both answered, each listed disagreement is one, and the page holds the JSON's
numbers with trace text escaped. The embedded real model against the rules teacher is in test_real_teacher.py."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from recot.cost import Price
from recot.curation.compare import AGREEMENT, Arm, compare, curate_output
from recot.curation.report import funnel
from recot.curation.store import Store
from recot.errors import DataError
from recot.synth.job import SynthConfig, run_synth
from recot.teachers import OpenAITeacherConfig
from recot.testing import RECOT

TASKS = ["r1_relation", "r3_cot_hindsight", "r3_cot_blind"]
PRICE = Price(input_per_million=1.0, output_per_million=4.0)


@pytest.fixture(scope="module")
def outputs(sample_path, instant_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    run_synth(SynthConfig(dataset=sample_path, out=root / "rules", tasks=TASKS, limit=10), progress=False)
    run_synth(SynthConfig(dataset=sample_path, out=root / "http", tasks=TASKS, limit=10, price=PRICE,
                          teacher=OpenAITeacherConfig(model="cot", base_urls=[instant_server.url], backoff_s=0.01)), progress=False)
    return root


def test_two_teachers_side_by_side_add_up_to_each_stores_own_funnel(outputs, tmp_path):
    done = subprocess.run([*RECOT, "curate", "compare", str(outputs / "rules"), str(outputs / "http"), "--work", str(tmp_path),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [arm["name"] for arm in result["arms"]] == ["rules", "http"] and result["common"] == 30 and result["only_in"] == {}
    for arm in result["arms"]:
        with Store.existing(tmp_path / f"{arm['name']}.duckdb") as db:
            own = funnel(db)
            tokens = db.con.execute("SELECT task, sum(prompt_tokens), sum(completion_tokens) FROM traces GROUP BY task").fetchall()
        assert arm["kept"] == own["kept"] and {t: f["kept"] for t, f in arm["by_task"].items() if f["kept"]} == own["kept_by_task"]
        assert arm["traces"] == own["traces"] == arm["planned"] == 30
        assert arm["kept"] + sum(arm[f"stopped_at_{o}"] for o in ("synthesis", "rules", "dedup", "review")) == 30
        for task, prompt, completion in tokens:
            figures = arm["by_task"][task]
            assert figures["completion_tokens"] == completion
            if arm["name"] == "http":
                assert figures["cost"] == PRICE.cost(prompt, completion)
                assert figures["cost_per_kept"] == (round(figures["cost"] / figures["kept"], 6) if figures["kept"] else None)
    http = result["arms"][1]
    assert http["by_task"]["r1_relation"]["reasons"] == {"schema_invalid": 10}  # an R3 trace is no R1 answer
    assert result["arms"][0]["cost_per_kept"] is None  # the rules teacher has no price
    for counts in result["agreement"].values():
        assert sum(counts.values()) == 10 and set(counts) == set(AGREEMENT)
    assert result["agreement"]["r1_relation"]["kept by some"] == 10
    assert result["disagreements"] and all(_disagree(case) for case in result["disagreements"])

    page = (tmp_path / "compare.html").read_text()
    assert not re.search(r"(src|href)=\"?https?:", page) and "<script" not in page
    outputs_table = page.split('data-table="outputs"')[1].split("</table>")[0]
    assert all(f"<td class=\"\">{arm['kept']}</td>" in outputs_table for arm in result["arms"])
    assert "&quot;persona&quot;" in page  # trace text (the HTTP teacher's JSON) is escaped, never markup


def _disagree(case: dict) -> bool:
    arms = case["arms"].values()
    kept = [arm["outcome"] == "kept" for arm in arms]
    return (any(kept) and not all(kept)) or (all(kept) and len({arm["answer"] for arm in arms}) > 1)


def test_what_cannot_be_compared_is_named(outputs, sample_path, tmp_path):
    store = curate_output(outputs / "rules", tmp_path / "rules.duckdb")
    with pytest.raises(DataError, match="compare two or more"):
        compare([Arm("rules", store, outputs / "rules")])
    with pytest.raises(DataError, match="share a name"):
        compare([Arm("a", store, outputs / "rules"), Arm("a", store, outputs / "rules")])
    run_synth(SynthConfig(dataset=sample_path, out=tmp_path / "r0", tasks=["r0_caption"], limit=5), progress=False)
    other = curate_output(tmp_path / "r0", tmp_path / "r0.duckdb")
    with pytest.raises(DataError, match="no request in common"):
        compare([Arm("rules", store, outputs / "rules"), Arm("r0", other, tmp_path / "r0")])
    with pytest.raises(DataError, match="no traces.parquet"):
        curate_output(tmp_path, tmp_path / "x.duckdb")
    names = subprocess.run([*RECOT, "curate", "compare", str(outputs / "rules"), str(outputs / "http"), "--name", "one",
                            "--work", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert names.returncode == 2 and "1 names for 2 outputs" in names.stderr and "Traceback" not in names.stderr
