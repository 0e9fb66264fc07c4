# Two entry points (README): `make demo` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data

.PHONY: setup demo test browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned by constraints.txt, so that the CPU build is used where there is no GPU.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q -c constraints.txt --no-deps "rt-utils>=1.2.7"
	touch $@

setup: $(VENV)/.installed

# Headless Chromium for the HTML report tests (Debian package; skipped where apt is unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
	  echo "chromium not installed: HTML rendering tests will be skipped"

demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/medseg demo --out demo_out

test: setup browser
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q
