# make bench: the main job (pytest bench --benchmark-autosave); make test: the test suite.
# Both create .venv on first use and install the project into it from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install bench test quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]'
	# foolbox ships the first 20 real CIFAR-10 test images; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps foolbox==3.3.4
	touch $(STAMP)

bench: install
	$(PY) -m pytest bench --benchmark-autosave

quick: install
	$(PY) -m pytest bench --bench-quick --benchmark-autosave

test: install
	$(PY) -m pytest tests
	$(PY) -m pytest bench --benchmark-disable --bench-quick -q

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
