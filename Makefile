# Bootstraps (virtualenv, pinned packages, Debian packages), then delegates to doit or pytest.
#   make run     the default pipeline (pipeline.toml); make run DOIT_ARGS="config=configs/smoke.toml"
#   make test    the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test bootstrap
run: bootstrap
	$(VENV)/bin/doit $(DOIT_ARGS)

test: bootstrap
	@scripts/bootstrap-debian.sh --with-test-tools
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bootstrap: $(STAMP)
	@scripts/bootstrap-debian.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "bootstrap: Python 3.11 is required (torch==2.13.0 wheel); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@
