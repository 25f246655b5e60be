# Two commands for a fresh machine with Python 3.10+ and make:
#   make run    start the bridge (against Ollama, or the bundled stand-in when none answers)
#   make test   run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?= --enable-cache --cache-dir ./cache

.PHONY: run test lint bench

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m bridge.serve.demo $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 3 --dist loadfile tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bridge tests bench

bench: $(VENV)/.installed
	$(PY) bench/proxy_bench.py
