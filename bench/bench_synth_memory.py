"""Peak memory of a synthesis job against its size: 10k requests versus 100k requests.

Both jobs run the full runner (planning, journal, parse, export) with the rules teacher on the
full Industrial set (../shared/data), ``n = 10`` samples per subject, 1,000 versus 10,000 subjects;
each job runs in a fresh process and reports its VmHWM. The 100k job runs twice: sending, then
answered from the cache. Target: the 100k peak within 10% of the 10k peak (memory flat in requests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDUSTRIAL = ROOT.parent / "shared" / "data" / "amazon18-industrial"
CHILD = """
import json, sys
from pathlib import Path
from recot.synth.job import SynthConfig, run_synth
from recot.teachers import Sampling
cfg = SynthConfig(dataset=Path(sys.argv[1]), out=Path(sys.argv[2]), tasks=["r3_cot_hindsight"], limit=int(sys.argv[3]),
                  sampling=Sampling(n=10))
report = run_synth(cfg, progress=False)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"rows": report.rows, "sent": report.sent, "cached": report.cached, "seconds": report.seconds, "peak_mb": peak / 1024}))
"""


def job(out: Path, subjects: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(INDUSTRIAL), str(out), str(subjects)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if not (INDUSTRIAL / "items.json").exists():
        sys.exit(f"needs the full Industrial set at {INDUSTRIAL}")
    work = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    small = job(work / "10k", 1_000)
    large = job(work / "100k", 10_000)
    cached = job(work / "100k", 10_000)
    print(f"{'job':<22} {'rows':>8} {'sent':>8} {'seconds':>8} {'peak MB':>8}")
    for name, r in (("10k requests", small), ("100k requests", large), ("100k, from the cache", cached)):
        print(f"{name:<22} {r['rows']:>8} {r['sent']:>8} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f}")
    print(f"peak ratio 100k / 10k: {large['peak_mb'] / small['peak_mb']:.3f}   cached 100k / 10k: {cached['peak_mb'] / small['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
