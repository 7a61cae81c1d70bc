"""How long `recot --help` takes to start, against the interpreter starting and doing nothing (`python -c pass`).

Both run as fresh processes, interleaved, --repeat times; the medians and their ratio are printed, with what
the command line imported of the heavy stack (it should be nothing: polars, DuckDB, torch and vLLM load only
in the command that uses them). A third row times the import of everything (`import recot.runs.pipeline`,
recot.trainer.evaluate), as every command had cost before the command line loaded its commands lazily.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECOT = str(Path(sys.executable).with_name("recot"))
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "recot --help": [RECOT, "--help"],
    "import the whole toolkit": [sys.executable, "-c", "import recot.runs.pipeline, recot.cli.train, recot.cli.curate, recot.cli.synth"],
}
HEAVY = ("polars", "duckdb", "torch", "vllm", "transformers", "pyarrow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, command in CASES.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - started)
    probe = ("import sys; from click.testing import CliRunner; from recot.cli.main import main; CliRunner().invoke(main, ['--help']); "
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    imported = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({"median_s": {k: round(v, 3) for k, v in median.items()}, "heavy_modules_imported_by_help": imported,
                      "ratio_help_over_python": round(median["recot --help"] / median["python -c pass"], 2),
                      "ratio_whole_toolkit_over_help": round(median["import the whole toolkit"] / median["recot --help"], 2)}, indent=1))


if __name__ == "__main__":
    main()
