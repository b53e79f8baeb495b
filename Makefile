# lazydrift: every target installs into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test reproduce-table1 reproduce-prop4 reproduce-table2 figures bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lazydrift run recipes/table1-quick.toml

test: $(STAMP)
	$(PY) -m pytest -q

reproduce-table1: $(STAMP)
	$(PY) -m lazydrift run recipes/table1.toml --download

clean:
	rm -rf results .pytest_cache
