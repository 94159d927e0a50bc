PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0" || $(PYTHON) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

demo: install
	$(BIN)/domdistill demo --out runs/demo --overwrite

bench: install
	for f in bench/*.py; do echo "== $$f"; $(PYTHON) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
