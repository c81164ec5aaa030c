# Fresh-machine commands: everything runs in an isolated virtual environment (.venv).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean lava-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/svformer-deploy demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2

# Separate Lava/lava-dl environment (Python 3.11 patched, numpy<2) for the netx-in-Lava checks.
lava-venv:
	scripts/make_lava_venv.sh

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
