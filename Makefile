# Two entry points for a newcomer: `make demo` and `make test`.
# Everything installs into .venv inside the checkout; torch==2.13.0 first (CPU wheel on these machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LATEST := .venv-latest

.PHONY: install demo test test-fast test-latest bench clean

# Pinned: constraints.txt holds the tested versions of every dependency (torch comes first, alone).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,bioimageio,napari,distributed]' -c constraints.txt
	# bioimageio.core pins bioimageio.spec 0.5.12.0, broken with pydantic 2.14; its other dependencies come with the extra
	$(BIN)/pip install --quiet --no-deps bioimageio.core -c constraints.txt
	# 2025 edition: Betti-Matching-3D ships inside topolosses, which declares torchvision (unusable here)
	$(BIN)/pip install --quiet --no-deps topolosses -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/selma3d demo demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Drift check: the newest release of every dependency (no constraints; torch stays 2.13.0), and the
# tests marked `drift` (usage errors of every command, a CLI smoke run) against them.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet torch==2.13.0
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]' torch==2.13.0
	$(LATEST)/bin/pip install --quiet --upgrade --no-deps topolosses
	$(LATEST)/bin/pip freeze | grep -viE '^(-e |#|selma3d)' > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -m drift -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/io_bench.py
	$(BIN)/python benchmarks/metrics_bench.py
	$(BIN)/python benchmarks/train_infer_bench.py
	$(BIN)/python benchmarks/sampling_bench.py
	$(BIN)/python benchmarks/blockwise_bench.py

clean:
	rm -rf $(VENV) $(LATEST) demo_out
