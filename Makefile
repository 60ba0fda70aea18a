# Two commands: `make demo` and `make test`. Both create .venv; `demo` installs only what the demo needs
# (the runtime), `test` adds the dev tools, Ray Serve, matplotlib, ONNX, OpenVINO and the real-weight models (extras).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Extra pip options for torch and torchvision, e.g. `--index-url <PyTorch's CPU wheel index>` to skip the
# CUDA libraries (about 3 GB) on a machine without a GPU. Empty: the default index (CUDA wheels on Linux).
TORCH_PIP_OPTIONS ?=
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: install demo test lint test-slow test-compose clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_PIP_OPTIONS) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PIP) -e '.[dev,ray,plot,onnx,openvino,compression-bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	$(BIN)/splitinfer demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# --durations: the slowest tests, to keep the suite inside CI's budget (about 20 minutes on 2 cores).
test: lint
	$(BIN)/python -m pytest --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Builds the image and runs the compose stack (see tests/compose); BASE_IMAGE, TORCH_INDEX, TORCH_CUDA pass through.
test-compose: $(STAMP)
	SPLITINFER_COMPOSE_RESULTS=$${SPLITINFER_COMPOSE_RESULTS-bench/results/compose.json} \
		$(BIN)/python -m pytest -m compose -p no:cacheprovider tests/compose

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
