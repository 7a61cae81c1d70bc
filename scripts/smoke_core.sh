#!/usr/bin/env bash
# The core-only install, as a user without torch or vLLM gets it: the built wheel (not editable) in a
# fresh venv, then the curation-side path on the bundled sample (inspect, rules-teacher synthesis,
# curate, export). Usage: scripts/smoke_core.sh WHEEL
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEEL=$(realpath "$1")
VENV=${CORE_VENV:-$ROOT/.venv-core}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEEL" 2>&1 | { grep -v "^WARNING: Location" || true; }
"$VENV/bin/pip" install -q "$WHEEL" 2>&1 | { grep -v "^WARNING: Location" || true; }
if "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "smoke_core: torch or vllm is installed in $VENV; the core install must not need them" >&2; exit 1
fi
cd "$WORK"  # nothing from the source tree is importable from here
SAMPLE=$ROOT/examples/amazon18-industrial-sample
R="$VENV/bin/recot"
cp -r "$SAMPLE" sample
cat > synth.toml <<TOML
dataset = "sample"
out = "synth"
tasks = ["r0_caption", "r1_relation", "r2_interests", "r3_cot_blind", "r3_cot_hindsight"]
limit = 40
[teacher]
kind = "rules"
TOML
"$R" --help >/dev/null
"$R" data inspect sample > inspect.txt
grep -q "items" inspect.txt
"$R" synth run synth.toml --no-progress --json > synth.json
"$R" curate ingest synth/traces.parquet --dataset sample --store store.duckdb --json > /dev/null
"$R" curate rules --store store.duckdb --json > /dev/null
"$R" curate judge --store store.duckdb --json > /dev/null
"$R" curate dedup --store store.duckdb --json > /dev/null
"$R" curate report --store store.duckdb --json > report.json
"$R" export smoke --out export --dataset sample --store store.duckdb --json > export.json
test -s export/sft/train-00000-of-00001.parquet || ls export/sft/*.parquet >/dev/null
# a command that needs an extra names the pip command, exit 2, no traceback
for command in "train sft nothing.toml" "eval --model x"; do
  set +e; $R $command > out.txt 2> err.txt; code=$?; set -e
  if [ "$code" != 2 ] || ! grep -q "pip install 'recot\[train\]'" err.txt || grep -q Traceback err.txt; then
    echo "smoke_core: 'recot $command' without torch should name the train extra and exit 2, got $code:" >&2; cat err.txt >&2; exit 1
  fi
done
echo "smoke_core: core-only wheel ran inspect, synth, curate and export on the sample, and named the train extra ($(grep -o '"kept": [0-9]*' report.json | head -1))"
