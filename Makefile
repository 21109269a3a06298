# Two commands do all set-up on a fresh clone (see README):
#   make demo   -> synthetic cohort -> build -> train -> eval -> export, on CPU, in runs/demo/
#   make test   -> the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) launch.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

clean:
	rm -rf runs .pytest_cache
