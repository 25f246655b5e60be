# Two commands for a fresh machine with Python 3.10+ and make:
#   make run    start the bridge (against Ollama, or the bundled stand-in when none answers)
#   make test   run the whole test suite
# `make run ARGS="-o http://gpu-box:11434 -a 3"` adds flags; the cache stays on unless
# `CACHE_ARGS=` is given too. The tools: .venv/bin/deepseek-ollama-bridge cache|keys ...
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE_ARGS ?= --enable-cache --cache-dir ./cache
ARGS ?=

.PHONY: run test test-under-load lint bench claude-code

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m bridge.serve.demo $(CACHE_ARGS) $(ARGS)

# Claude Code (npm), for the test that drives it against the bridge: installed into a
# project-local, git-ignored directory, never globally.
CLAUDE_CODE_DIR := .tools/claude-code
# the version its test was written against
CLAUDE_CODE_VERSION ?= 2.1.197
claude-code: $(CLAUDE_CODE_DIR)/node_modules/.bin/claude
$(CLAUDE_CODE_DIR)/node_modules/.bin/claude:
	npm install --silent --no-audit --no-fund --prefix $(CLAUDE_CODE_DIR) @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)

# Bytecode first: the suite starts hundreds of bridges, and each worker would otherwise
# compile every module again where PYTHONDONTWRITEBYTECODE is set (a second per boot).
test: $(VENV)/.installed
	$(PY) -m compileall -q bridge
	$(PY) -m pytest -q -n 3 --dist loadfile tests

# The suite RUNS times in a row beside a CPU hog on each core: it must never flake.
RUNS ?= 5
test-under-load: $(VENV)/.installed
	bash .ci/test-under-load $(RUNS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bridge tests bench

# The speed of issue 29 in one run (nginx + wrk needed): the bridge vs the bare stack, the
# in-process cost of a hit and of each feature. `make bench BENCH_ARGS="--only 1"` runs a part.
BENCH_ARGS ?=
bench: $(VENV)/.installed
	$(PY) bench/speed_bench.py $(BENCH_ARGS)
