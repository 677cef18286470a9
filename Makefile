# Two commands do all the set-up on a fresh machine:
#   make demo   install, then transcribe examples/ with the bundled model
#   make test   install (system packages too), then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-deps install-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/conformer-asr transcribe examples/*.wav examples/*.flac

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# A user's install: the package alone (no dev extras) from a wheel into a fresh venv, then
# the demo from outside the checkout. Catches a dependency that only the dev extras bring.
install-check:
	rm -rf build/install-check
	$(PYTHON) -m venv build/install-check
	build/install-check/bin/python -m pip install -q torch==2.13.0
	build/install-check/bin/python -m pip install -q .
	cd build && install-check/bin/conformer-asr transcribe ../examples/*.wav ../examples/*.flac
