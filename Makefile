# The two commands of the README, each making and filling .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# `mlflow run` starts the entry point's `python` from PATH: put the venv first.
RUN := PATH="$(BIN):$$PATH"

.PHONY: study test report train lint bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

study: $(VENV)/.installed  ## the default study (mlflow run . -e study)
	$(RUN) mlflow run . -e study --env-manager local

test: $(VENV)/.installed  ## the test suite
	$(RUN) python -m pytest

report: $(VENV)/.installed  ## regenerate the default study's report from MLflow
	$(RUN) mlflow run . -e report --env-manager local

train: $(VENV)/.installed  ## one training run with the defaults
	$(RUN) mlflow run . -e train --env-manager local

lint: $(VENV)/.installed
	$(RUN) ruff check .

bench: $(VENV)/.installed  ## the performance suite (prints ratios; minutes)
	$(RUN) python -m benchmarks.train_overhead
	$(RUN) python -m benchmarks.report_time
	$(RUN) python -m benchmarks.study_throughput

clean:
	rm -rf $(VENV)
