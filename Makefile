# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and
# install the project into it first; nothing else is needed but Python 3.11+ and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench fuzz clean

DEMO_STAMP := $(VENV)/.demo-stamp
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

# The demo needs only the project; the test tools come with `make test` (and lint, bench).
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/staticipd demo

test: $(STAMP)
	$(BIN)/python -m pytest --numprocesses=auto --maxprocesses=4

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The benchmarks compare against the eventsourcing library too (the `bench` extra).
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PIP) -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# Coverage-guided fuzzing (atheris) of the webhook signature checks, the webhook body parser
# and the auth-event decoder, FUZZ_SECONDS each (tests/fuzz/). Where atheris does not install,
# fuzz.py falls back to random mutations of the samples and says so.
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := signature standard_webhooks webhook_body auth_event
FUZZ_STAMP   := $(VENV)/.fuzz-stamp

$(FUZZ_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,fuzz]' \
	  || echo "atheris did not install: fuzz.py will use random mutations"
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)
	for target in $(FUZZ_TARGETS); do \
	  $(BIN)/python tests/fuzz/fuzz.py $$target $(FUZZ_SECONDS) || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
