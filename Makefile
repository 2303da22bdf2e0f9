# Set-up is two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The torch build every venv gets first (the CPU wheel on our machines), so that no dependency
# ever resolves another torch.
TORCH := 2.13.0
# Every package `make test` and `make demo` install, pinned: CPython 3.11 on x86_64 Linux, torch
# $(TORCH)+cpu, the extras below. `make lock` regenerates it from pyproject.toml's ranges.
LOCK := requirements/lock.txt
LOCK_EXTRAS := dev dali
# uv installs the lock (much faster than pip, see README); pip does where uv cannot be had.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
# Where `make lock` finds the CPU torch wheel's metadata (a local wheel folder on our machines).
TORCH_FIND_LINKS ?= /opt/wheels
# `make test-latest`: a second venv from the ranges alone, newest releases of everything.
LATEST_VENV := .venv-latest
EXTRAS ?= dev,dali

.PHONY: install test test-latest lock demo ablation budget bench mutation lint clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) $(LOCK) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH)
	if $(PIP) install -q uv==$(UV_VERSION); then \
		$(UV) pip install --python $(PY) --no-deps -r $(LOCK); \
	else \
		$(PIP) install --no-deps -r $(LOCK); \
	fi
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -q

# Run before refreshing the lock, and now and then (weekly): a fresh venv with the newest releases
# the ranges admit (torch stays $(TORCH)), then the whole suite.
test-latest:
	rm -rf $(LATEST_VENV)
	python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install torch==$(TORCH)
	$(LATEST_VENV)/bin/python -m pip install --upgrade pip setuptools wheel pybind11
	$(LATEST_VENV)/bin/python -m pip install --upgrade --no-build-isolation -e ".[$(EXTRAS)]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/freeze.txt
	$(LATEST_VENV)/bin/ruff check .
	$(LATEST_VENV)/bin/python -m pytest tests -q

# The lock: pyproject.toml's ranges (project, extras, build requirements) resolved to the newest
# releases for CPython 3.11 on x86_64 Linux with torch $(TORCH)+cpu, which is left out of the
# file (installed first, above).
lock: $(PY)
	$(PIP) install -q uv==$(UV_VERSION)
	$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" > $(VENV)/build-requirements.in
	echo "torch==$(TORCH)+cpu" > $(VENV)/torch-override.txt
	$(UV) pip compile pyproject.toml $(VENV)/build-requirements.in \
		$(addprefix --extra ,$(LOCK_EXTRAS)) --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_FIND_LINKS) \
		--override $(VENV)/torch-override.txt --no-emit-package torch \
		--custom-compile-command "make lock" -o $(LOCK)

# The recipe's verdict over three seeds (a control and a student per seed, two training
# processes side by side; see the README's "The recipe on a synthetic world").
demo: $(STAMP)
	$(PY) -m depth_anything_fast.demo --out demo_out

# The paper's ablation and the levers for the unseen kind on the demo's synthetic world (13 rows
# x 3 seeds, 26 minutes from scratch on 2 cores; not part of `make test`). Reuses demo_out's
# data, semantic encoder and finished runs when present.
ablation: $(STAMP)
	$(PY) -m depth_anything_fast.recipe.ablation --out ablation_out --world demo_out --seeds 0 1 2

# Student - control and student - teacher at 400, 800 and 1600 steps over five seeds (hours
# on 2 cores; not part of `make test`). Reuses demo_out like the ablation.
budget: $(STAMP)
	$(PY) -m depth_anything_fast.recipe.budget --out budget_out --world demo_out \
		--seeds 0 1 2 3 4 --steps 400 800 1600

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only -q

# Mutation testing of the core modules (mutmut; the files and the tests: [tool.mutmut] in
# pyproject.toml). Not part of `make test`. Time-boxed to MUTATION_MINUTES: results are cached
# in mutants/ per function, so a rerun resumes and tests only the mutants of functions that
# changed, then tests the surviving mutants again (tests may have changed since). Then
# results/mutation/README.md: the score per module and every surviving mutant (exit status 1
# when a module has under 90% of its non-equivalent mutants killed). One torch thread per test
# process: mutmut forks its workers, and a fork inside OpenMP's thread pool hangs (every mutant
# of a function running a parallel op timed out). Which tests reach which function is collected
# afresh each time (mutants/mutmut-stats.json removed; ~3 min): mutmut alone would trace only new
# tests, so a function moved to another module, or an old test that now reaches it, would go
# untested and its mutants reported as survivors.
MUTATION_MINUTES ?= 120
MUTATION_JOBS ?= 1
MUTMUT := OMP_NUM_THREADS=1 timeout --signal=INT $$(( $(MUTATION_MINUTES) * 60 )) nice -n 10 \
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS)
mutation: $(STAMP)
	rm -f mutants/mutmut-stats.json
	-$(MUTMUT)
	-survivors=$$($(VENV)/bin/mutmut results | sed -n 's/^ *\(.*\): \(survived\|no tests\)$$/\1/p'); \
		[ -z "$$survivors" ] || $(MUTMUT) $$survivors
	$(PY) tools/mutation_report.py results/mutation

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info depth_anything_fast/_C*.so
