# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
PIP := $(BIN)/python -m pip -q --disable-pip-version-check
FILTER := 2>&1 | grep -v "is ignored: it is neither" || true

.PHONY: demo test test-isa lint bench bench-large docs venv clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -U pip 2>/dev/null
	# torch first, pinned to the local CPU wheel, so nothing pulls a CUDA build.
	$(PIP) install "torch==2.13.0" $(FILTER)
	$(PIP) install -e ".[dev,bench]" $(FILTER)
	# zennit's (and zennit-crp's) metadata requires torchvision, which would replace
	# torch with a CUDA build: install them without dependencies (their tests stub
	# torchvision).
	$(PIP) install --no-deps "zennit>=0.5" "zennit-crp==0.6.0" $(FILTER)
	$(BIN)/python -c "import eqx_attr, torch, captum, saliency, zarr, importlib.util as u; assert u.find_spec('zennit') and u.find_spec('crp') and u.find_spec('quantus')"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eqx_attr demo

# A worker that dies (a crash in native code) ends the run at once: xdist's
# loadgroup scheduler would otherwise wait forever for its re-queued tests.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadgroup --max-worker-restart=0 -q tests

test: $(STAMP)
	$(PYTEST)

# The whole suite again as XLA:CPU compiles it for other CPUs: vector width, and so
# summation order and fusions, follow the instruction set (tests/conftest.py adds
# these flags to its own; tests/helpers.py holds the one tolerance policy).
ISAS ?= AVX2 SSE4_2
test-isa: $(STAMP)
	set -e; for isa in $(ISAS); do \
	  echo "== the suite under --xla_cpu_max_isa=$$isa"; \
	  XLA_FLAGS="--xla_cpu_max_isa=$$isa" $(PYTEST); \
	done

lint: $(STAMP)
	$(BIN)/ruff format --check eqx_attr tests benchmarks
	$(BIN)/ruff check eqx_attr tests benchmarks
	$(BIN)/pyright

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# ImageNet-size models at 224x224 against Captum and Zennit, each side in its own
# process (hours on 2 cores; `--models`/`--methods`/`--batches` pick a subset).
bench-large: $(STAMP)
	$(BIN)/python benchmarks/bench_large.py --out benchmarks/results/large-cpu.md

# The documentation site, into site/ (`$(BIN)/mkdocs serve` to read it while editing).
docs: $(STAMP)
	$(BIN)/python docs/_make_figures.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) demo_out site docs/figures
