# Fresh-machine commands: everything runs in an isolated virtual environment (.venv).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the CPU-only torch wheel comes from. Empty (the default): pip's own configuration, which on our
# machines already serves the CPU wheel from local disk. On an ordinary machine plain PyPI would give the
# multi-GB CUDA build, so point pip at PyTorch's CPU index:
#   make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
TORCH_PIP_FLAGS := $(if $(strip $(TORCH_INDEX_URL)),--index-url $(strip $(TORCH_INDEX_URL)))

.PHONY: setup demo test lint clean lava-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_PIP_FLAGS) -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/svformer-deploy demo $(if $(QAT),--qat)

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
