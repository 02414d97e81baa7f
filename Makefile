# Two commands for a fresh machine:  `make demo`  (set up + run the main job)  and  `make test`  (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-gpu docs setup clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metalearn demo

test: $(STAMP)
	$(PY) -m pytest -q

# The tests `make test` leaves out (pyproject.toml deselects the markers; a later -m overrides that):
# short full-pipeline runs per learner family on the real data (minutes each), and the CUDA tests.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -rs

# The documentation site (MkDocs + mkdocstrings), checked strictly: a warning fails the build.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info
