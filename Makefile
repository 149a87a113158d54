# The course in two commands: `make lab` and `make test`. Both bootstrap .venv/ on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
# Loads helpers.kernel in every kernel of this venv: %%module and short errors exist before the setup cell runs.
KERNEL_CONFIG := $(VENV)/etc/ipython/ipython_kernel_config.py
JOBS   ?=# grading slots; empty: the grader's default, twice the cores (graded notebooks mostly wait)
# Test workers: notebooks mostly wait (on timers, activities, the server), so three per core keep the cores busy
# (on 2 cores: 5:07 with 6 workers, 5:49 with 4). Time budgets in the tests stretch by workers per core.
TEST_JOBS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 2) * 3 )))
# Strict nbval over solutions/: stored outputs are the reference, tests/nbval.cfg masks ids, ports and times.
# --twice (root conftest.py): then each solution runs all again in the same kernel, every cell within its budget.
NBVAL  := --twice --nbval-current-env --nbval-sanitize-with tests/nbval.cfg --nbval-cell-timeout 60
# JupyterLab refuses to run as root unless told; containers and CI run as root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help setup lab test test-fast lint format notebooks solutions server-start server-stop server-status grade grade-worker check lock clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "The course needs Python 3.10 or newer (found " + sys.version.split()[0] + "). Set PYTHON=python3.x")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check pip==26.3  # pinned, like everything else
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements-lock.txt
	@# setuptools (pinned above) builds the editable install; its advice about editable modes is not for learners.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# Jupyter settings for this venv only: no "news" prompt on first start.
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)

$(KERNEL_CONFIG): $(STAMP)
	@mkdir -p $(dir $@)
	@echo 'c.InteractiveShellApp.extensions = ["helpers.kernel"]  # written by the Makefile' > $@

setup: $(STAMP) $(KERNEL_CONFIG) ## Create .venv and install the pinned dependencies

lab: setup server-start ## Start (or reuse) the Temporal server and open the course in JupyterLab
	@echo "Opening JupyterLab on the course. Stop it with Ctrl-C; the Temporal server keeps running (make server-stop)."
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 $(ROOT_FLAG) --ServerApp.root_dir=. notebooks/00_welcome.ipynb

test: setup ## Lint, then test helpers, solutions (strict nbval) and learner notebooks
	$(BIN)/ruff check helpers tests conftest.py
	$(BIN)/ruff format --check helpers tests conftest.py
	$(PY) -m pytest -n $(TEST_JOBS) tests solutions $(NBVAL)

lint: setup ## ruff check + format check
	$(BIN)/ruff check helpers tests conftest.py
	$(BIN)/ruff format --check helpers tests conftest.py

format: setup ## ruff fix + format
	$(BIN)/ruff check --fix helpers tests conftest.py
	$(BIN)/ruff format helpers tests conftest.py

notebooks: setup ## Regenerate the learner notebooks in notebooks/ from solutions/
	$(PY) -m helpers.build notebooks

solutions: setup ## Re-execute solutions/ in place (their outputs are the nbval reference)
	$(PY) -m helpers.build execute $(NB)

server-start: setup ## Reuse a Temporal server at TEMPORAL_ADDRESS or start the dev server
	@$(PY) -m helpers.server start

server-stop: setup ## Stop the dev server the course started (never another one)
	@$(PY) -m helpers.server stop

server-status: setup ## Say whether a Temporal server answers and who started it
	@$(PY) -m helpers.server status || true  # "no server" is an answer, not a failure of make

grade: setup ## Grade SUBMISSIONS=<dir> into OUT=<dir> with JOBS workers [LEARNER=name] [NB=NN]
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=<dir> OUT=<dir> [JOBS=n] [LEARNER=name] [NB=NN]"; exit 2; }
	$(PY) -m helpers.grade "$(SUBMISSIONS)" --out "$(or $(OUT),grading-out)" $(if $(JOBS),--jobs $(JOBS)) \
	  $(if $(LEARNER),--learner "$(LEARNER)") $(foreach n,$(NB),--notebook $(n))

grade-worker: setup ## Help grade: join the grading runs of these course files at TEMPORAL_ADDRESS with JOBS slots
	$(PY) -m helpers.grading.worker $(if $(JOBS),--jobs $(JOBS))

check: setup ## Grade your own notebooks/ like the instructor's grader: how far are you? [NB=NN]
	@$(PY) -m helpers.grading.check $(if $(JOBS),--jobs $(JOBS)) $(foreach n,$(NB),--notebook $(n))

lock: ## Re-resolve requirements-lock.txt in a scratch venv (after changing requirements.txt)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q -r requirements.txt
	{ head -n 2 requirements-lock.txt; .lock-venv/bin/pip freeze --exclude-editable \
	  | grep -viE "^($$(sed -nE 's/^([A-Za-z0-9_.-]+)==.*/\1/p' requirements.txt | sort -u | paste -sd'|'))==" \
	  | sed 's/$$/ ; python_version >= "3.11"/'; } > requirements-lock.new && mv requirements-lock.new requirements-lock.txt
	rm -rf .lock-venv

clean: ## Remove .venv and caches (keeps the server's data)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
