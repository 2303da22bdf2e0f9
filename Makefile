# Set-up is two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Extras of the editable install: tests (dev: pytest, transformers, Hub, ONNX) and DALI for the
# CUDA 13 driver; on a CUDA 12 machine: make test EXTRAS=dev,dali-cuda12
EXTRAS ?= dev,dali

.PHONY: install test demo ablation bench lint clean

$(PY):
	python3 -m venv $(VENV)

# torch==2.13.0 first (the CPU wheel on our machines) so that no dependency resolves another torch.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install "setuptools>=77" wheel "pybind11>=2.12"
	$(PIP) install --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q

demo: $(STAMP)
	$(PY) -m depth_anything_fast.demo --out demo_out

# The paper's ablation on the demo's synthetic world (5 rows x 3 seeds, ~40 min on 2 cores;
# not part of `make test`). Reuses demo_out's data and semantic encoder when present.
ablation: $(STAMP)
	$(PY) -m depth_anything_fast.recipe.ablation --out ablation_out --world demo_out --seeds 0 1 2

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info depth_anything_fast/_C*.so
