# The two commands of the README, each making and filling .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# `mlflow run` starts the entry point's `python` from PATH: put the venv first.
RUN := PATH="$(BIN):$$PATH"

.PHONY: study test report train dashboard lint bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

study: $(VENV)/.installed  ## the default study (mlflow run . -e study)
	$(RUN) mlflow run . -e study --env-manager local

# Debian packages for the tests that use real components (a PostgreSQL server, headless Chromium).
# Installed when missing and apt-get can run as root; otherwise those tests skip and say why.
$(VENV)/.system-deps: | $(VENV)/.installed
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages:$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
	    || echo "note: apt-get could not install$$missing; the tests that need them will skip"; \
	else echo "note: missing$$missing (needs root and apt-get); the tests that need them will skip"; fi
	touch $@

test: $(VENV)/.installed $(VENV)/.system-deps  ## the test suite
	$(RUN) python -m pytest

report: $(VENV)/.installed  ## regenerate the default study's report from MLflow
	$(RUN) mlflow run . -e report --env-manager local

train: $(VENV)/.installed  ## one training run with the defaults
	$(RUN) mlflow run . -e train --env-manager local

DASHBOARD_PORT ?= 8080
dashboard: $(VENV)/.installed  ## live Optuna view of the studies in the default storage (optuna.journal), on 127.0.0.1
	$(RUN) optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) optuna.journal

lint: $(VENV)/.installed  ## what CI checks besides the tests (tests/test_lint.py runs the same two commands)
	$(RUN) ruff check .
	$(RUN) ruff format --check .

# The peers of benchmarks/peers.py (BackPACK, Cockpit, W&B) in their own venv, which also sees .venv's packages
# through a .pth file: installing them into .venv would change its pins (setuptools, torch; see the list's header).
BENCH := .venv-bench
BENCH_BIN := $(CURDIR)/$(BENCH)/bin
$(BENCH)/.installed: benchmarks/requirements-peers.txt | $(VENV)/.installed
	$(BIN)/python -m venv $(BENCH)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(BENCH_BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/lab-venv.pth"
	$(BENCH_BIN)/python -m pip install --quiet --no-deps -r benchmarks/requirements-peers.txt
	touch $@

bench: $(VENV)/.installed $(BENCH)/.installed  ## the performance suite (prints ratios; minutes)
	$(RUN) python -m benchmarks.train_overhead
	$(BENCH_BIN)/python -m benchmarks.peers
	$(RUN) python -m benchmarks.report_time
	$(RUN) python -m benchmarks.study_throughput
	$(RUN) python -m benchmarks.storage_throughput
	$(RUN) python -m benchmarks.trial_figure
	$(RUN) python -m benchmarks.histogram_speed

clean:
	rm -rf $(VENV) $(BENCH)
