# Two commands do all set-up on a fresh clone (see README):
#   make demo   -> synthetic cohort -> build -> train -> eval -> export, on CPU, in runs/demo/
#   make test   -> the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
VENV_TF ?= .venv-tf
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TF_STAMP := $(VENV_TF)/.installed

.PHONY: demo test test-tf browser install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# TensorFlow only for TFDS's own CLI front-end and DatasetBuilderTestCase: a venv layered on .venv.
$(TF_STAMP): $(STAMP)
	$(PYTHON) -m venv $(VENV_TF)
	$(PY) -c "import site; print(site.getsitepackages()[0])" > "$$($(VENV_TF)/bin/python -c 'import site; print(site.getsitepackages()[0])')/jaxpetct-base.pth"
	$(VENV_TF)/bin/python -m pip install -q tensorflow-cpu dill mlcroissant
	$(VENV_TF)/bin/python -m pip install -q --no-deps --ignore-installed "$$($(PY) -m pip show tensorflow-datasets | sed -n "s/^Version: /tensorflow-datasets==/p")"
	touch $(TF_STAMP)

install: $(STAMP)

# The viewer's screenshot test drives Debian's chromium; install it where apt is available (CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || ( command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ) || \
		echo "chromium not installed: the viewer screenshot test will skip"

demo: $(STAMP)
	$(PY) launch.py

test: $(STAMP) $(TF_STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadfile -q
	$(VENV_TF)/bin/python -m pytest -q -p no:cacheprovider tests/tfds_builder/test_tfds_testcase.py tests/tfds_builder/test_tfds_cli.py

clean:
	rm -rf runs .pytest_cache
