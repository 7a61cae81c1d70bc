"""Planning blind R3 with candidate slates against planning it without, on the full Industrial set.

Planning is what a job does before it sends anything: the split, the subjects (cut-off enforced),
and every request rendered and keyed. recot: ``r3_cot_slate`` with N = 20 and all four samplers
(popularity, prefix, co-occurrence, embedding: its tables are built inside the timed part).
Baseline: ``r3_cot_blind`` on the same samples, the same code path without slates. Each case runs
in a fresh process (interleaved, best of ``--repeat``) and reports its wall and CPU time and its VmHWM; the slate case also
runs on a quarter of the samples, so peak memory can be compared across job sizes, and as the job's rerun,
which reads the embedding-neighbour table its first run kept in the work folder.

Item embeddings for the embedding sampler come from a file, as after ``recot sid build`` (MiniLM over
the catalog text, computed once into bench/.data/): computing them is the SID builder's work.
Targets: slate planning at most 1.5x the time of planning without, memory flat in the number of samples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
EMBEDDINGS = ROOT / "bench" / ".data" / "industrial-minilm.npy"
CHILD = """
import json, sys, time, tempfile
from pathlib import Path
from recot.data.loaders import load_dataset
from recot.synth.prompts import PromptLibrary
from recot.synth.requests import ItemView, iter_requests, plan_subjects
from recot.formats.profiles import PROFILES, ProfileBook
from recot.synth.slates import SlateConfig, SlateSampler
from recot.formats.splits import SplitSpec
from recot.formats.tasks import get_task
from recot.teachers import Sampling

task, limit, embeddings = get_task(sys.argv[2]), int(sys.argv[3]) or None, Path(sys.argv[4])
work = Path(sys.argv[5]) if sys.argv[5] else None
dataset = load_dataset(Path(sys.argv[1]))
start, cpu = time.perf_counter(), time.process_time()
split = SplitSpec.choose(dataset.boundaries, "auto", 10).build(dataset.sequences())
subjects, _ = plan_subjects(task, dataset.catalog, split, "train", limit)
path = Path(tempfile.mkdtemp()) / "subjects.parquet"
subjects.sink_parquet(path)
slates = None
if task.slate:
    config = SlateConfig(size=20, samplers={"popularity": 1, "prefix": 1, "cooccurrence": 1, "embedding": 1}, embeddings=embeddings)
    slates = SlateSampler(config, dataset.catalog, split.part("train"), work)
requests = sum(1 for _ in iter_requests(task, path, PromptLibrary(), ItemView(dataset.catalog), ProfileBook(PROFILES['ecommerce']),
                                         ("rules", "rules-v1"), Sampling(), slates=slates))
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"requests": requests, "seconds": seconds, "cpu_s": cpu, "peak_mb": peak / 1024}))
"""


def plan(task: str, limit: int = 0, work: Path | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(INDUSTRIAL), task, str(limit), str(EMBEDDINGS), str(work or "")],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def embeddings() -> None:
    """MiniLM embeddings of the catalog text, in catalog order (computed once)."""
    if EMBEDDINGS.exists():
        return
    import numpy as np

    from recot.data.embeddings import embed_texts
    from recot.data.loaders import load_dataset

    EMBEDDINGS.parent.mkdir(parents=True, exist_ok=True)
    np.save(EMBEDDINGS, embed_texts(load_dataset(INDUSTRIAL).catalog.text().to_list()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    embeddings()
    with tempfile.TemporaryDirectory() as work:
        plan("r3_cot_slate", 0, Path(work))  # the job's first run: it keeps the neighbour table in its work folder
        runs: dict[str, list[dict]] = {"blind": [], "slates": [], "rerun": []}
        for _ in range(args.repeat):
            runs["blind"].append(plan("r3_cot_blind"))
            runs["slates"].append(plan("r3_cot_slate"))
            runs["rerun"].append(plan("r3_cot_slate", 0, Path(work)))
    best = {case: min(r, key=lambda x: x["seconds"]) for case, r in runs.items()}
    quarter = plan("r3_cot_slate", best["slates"]["requests"] // 4)
    print(f"{'case':<42} {'requests':>9} {'seconds':>8} {'CPU s':>8} {'peak MB':>8}")
    for name, r in (("without slates (r3_cot_blind)", best["blind"]), ("slates N=20, 4 samplers, tables built", best["slates"]),
                    ("slates, the job's rerun (neighbours kept)", best["rerun"]), ("slates, a quarter of the samples", quarter)):
        print(f"{name:<42} {r['requests']:>9} {r['seconds']:>8.2f} {r['cpu_s']:>8.2f} {r['peak_mb']:>8.0f}")
    print(f"time ratio slates / without: {best['slates']['seconds'] / best['blind']['seconds']:.2f}x (target <= 1.5x); "
          f"on a rerun: {best['rerun']['seconds'] / best['blind']['seconds']:.2f}x; in CPU time (steal excluded, BLAS threads "
          f"summed): {best['slates']['cpu_s'] / best['blind']['cpu_s']:.2f}x; "
          f"peak all / quarter of the samples: {best['slates']['peak_mb'] / quarter['peak_mb']:.2f}")

if __name__ == "__main__":
    main()
