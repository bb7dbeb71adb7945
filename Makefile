# Tunelab: `make run` starts the service on its embedded default, `make test` checks everything.
# Both install what they need into .venv first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PORT ?= 8000

.PHONY: install run test test-unit test-integration test-faults fuzz-live lint format bench-train bench-presets bench-api bench-study bench-quality clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision are pinned in the `worker` extra; pip takes them as they are.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[worker,dev]"
	touch $(INSTALLED)

run: install
	$(BIN)/tunelab dev --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-unit: install
	$(BIN)/pytest tests/unit

test-integration: install
	$(BIN)/pytest tests/integration

# Kills workers, Redis and the API under running jobs; prints each scenario's figures.
test-faults: install
	$(BIN)/pytest tests/faults -s

# Schemathesis' CLI, every check, against a running API; what remains is in the README.
fuzz-live: install
	tests/security/live_schemathesis.sh

test: lint
	$(BIN)/pytest --ignore=tests/faults --durations=15

# DEVICE=cpu|cuda|auto (auto: the GPU if there is one); BENCH_TRAIN_ARGS="--sections trial"
# picks parts (bench/README.md). On a GPU machine without a package index: bench/gpu_run.sh.
DEVICE ?= auto
bench-train: install
	$(BIN)/tunelab data prepare
	$(BIN)/python -m bench.train_speed --device $(DEVICE) $(BENCH_TRAIN_ARGS)

# BENCH_API_ARGS="--api-workers 1 2" compares one API process with two.
bench-api: install
	$(BIN)/python -m bench.api_speed $(BENCH_API_ARGS)

# BENCH_STUDY_ARGS="--sections scaling" runs the scaling rows alone (no training, a minute).
bench-study: install
	$(BIN)/tunelab data prepare
	$(BIN)/python -m bench.study_speed $(BENCH_STUDY_ARGS)

# The assignment (99.4% under 8,000 parameters) by one study, confirmed on test by refit:
# hours on a CPU at full scale. BENCH_QUALITY_ARGS scales it (bench/README.md).
bench-quality: install
	$(BIN)/tunelab data prepare
	$(BIN)/python -m bench.quality $(BENCH_QUALITY_ARGS)

bench-presets: install
	$(BIN)/tunelab data prepare
	$(BIN)/python -m bench.presets

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
