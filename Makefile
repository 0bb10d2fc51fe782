# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PIP := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: demo test lint bench venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -U pip 2>/dev/null
	# torch first, pinned to the local CPU wheel, so nothing pulls a CUDA build.
	$(PIP) install "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install -e ".[dev,bench]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import eqx_attr, torch, captum"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eqx_attr demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests

lint: $(STAMP)
	$(BIN)/ruff format --check eqx_attr tests benchmarks
	$(BIN)/ruff check eqx_attr tests benchmarks
	$(BIN)/pyright

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo_out
