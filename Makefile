# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs, trains M2SR and GRU4Rec+fusion for 1 epoch on ML-100K
#   make test   -> same set-up, then the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	# torch first, as a pinned pair: a torch without its matching torchvision breaks open_clip/transformers
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fusionlayer demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench-quick: $(STAMP)
	$(PY) -m benchmarks.compat --quick

clean:
	rm -rf $(VENV) log log_tensorboard saved .pytest_cache
