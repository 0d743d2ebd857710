# Two entry points for a newcomer: `make demo` and `make test`.
# Everything installs into .venv inside the checkout; torch==2.13.0 first (CPU wheel on these machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/selma3d demo demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/io_bench.py
	$(BIN)/python benchmarks/metrics_bench.py
	$(BIN)/python benchmarks/train_infer_bench.py
	$(BIN)/python benchmarks/sampling_bench.py
	$(BIN)/python benchmarks/blockwise_bench.py

clean:
	rm -rf $(VENV) demo_out
