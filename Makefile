# Front door. Every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CHECKOV_VENV := .venv-checkov

.PHONY: install demo test test-unit test-functional test-integration test-infra provider-schemas bench lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The `dicom-events` command (.venv/bin/dicom-events), from this checkout: the pinned
	# requirements above are its dependencies.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

$(CHECKOV_VENV)/.installed: infra/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r infra/checkov-requirements.txt
	touch $@

# The whole pipeline on the local cloud: upload, import, export, completion events.
demo: install
	$(PY) -m localcloud demo

test: install $(CHECKOV_VENV)/.installed lint
	terraform fmt -check -recursive infra
	$(CHECKOV_VENV)/bin/checkov -d infra --framework terraform --compact --quiet --skip-download
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-functional: install
	$(PY) -m pytest tests/functional

test-integration: install
	$(PY) -m pytest tests/integration

test-infra: install $(CHECKOV_VENV)/.installed
	terraform fmt -check -recursive infra
	$(CHECKOV_VENV)/bin/checkov -d infra --framework terraform --compact --quiet --skip-download
	$(PY) -m pytest tests/infra

# Rewrites tests/infra/provider_schema/*.json from the CDK provider packages pinned in its
# refresh.py (downloads them from PyPI; installs nothing). Then pin infra/versions.tf to match.
provider-schemas: install
	$(PY) -m tests.infra.provider_schema.refresh

bench: install
	$(PY) -m bench

lint: install
	$(PY) -m ruff check functions localcloud tests bench main.py
	$(PY) -m mypy functions localcloud bench main.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .localcloud .pytest_cache *.egg-info
