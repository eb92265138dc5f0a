# Two entry points on a fresh machine with Python 3.11: `make run` and `make test`.
# Both create .venv at the repository root when needed and install requirements-dev.txt.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench train-demo train-probe screenshots chromium

run: $(STAMP)
	$(BIN)/python -m streamlit run streamlit_app.py

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# the unit tier without the tests marked slow (see pytest.ini): the quick loop while editing
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "unit and not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_capture.py
	$(BIN)/python benchmarks/bench_importance.py
	$(BIN)/python benchmarks/bench_strength.py
	$(BIN)/python benchmarks/bench_patterns.py
	$(BIN)/python benchmarks/bench_casestudy.py
	$(BIN)/python benchmarks/bench_dinov2.py
	$(BIN)/python benchmarks/bench_attribution.py
	$(BIN)/python benchmarks/bench_stages.py
	$(BIN)/python benchmarks/bench_probe.py

train-demo: $(STAMP)
	$(BIN)/python scripts/train_demo.py

train-probe: $(STAMP)
	$(BIN)/python scripts/train_probe.py

# the pictures of docs/images: the app on dinov2-s, driven through every page in headless Chromium
screenshots: $(STAMP) chromium
	$(BIN)/python scripts/screenshots.py

# the browser tests drive Debian's chromium; install it once when it is missing (needs root)
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $(STAMP)
