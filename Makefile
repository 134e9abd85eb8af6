# Everyday entry points. `make run` and `make test` work on a fresh machine: both
# depend on `install`, which is a no-op until pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast run bench lint

install: $(STAMP)

# torch first and pinned, so pip takes the matching pair (from a local wheel cache when
# there is one) instead of resolving a different build while installing the project.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev,redis,postgres,gpu]'
	touch $(STAMP)

# Everything, as CI runs it (.ci/run); the services it needs are in README, "Development".
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while working (under two minutes on 2 cores): no servers, workers or other
# services started, no browser, nothing over ~2 s (the markers: pyproject.toml).
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser and not postgres and not redis" $(PYTEST_ARGS)

# The portal and one detection worker; Ctrl-C stops both (detection/.../run_portal.py).
run: install
	$(BIN)/python manage.py migrate --noinput --skip-checks
	$(BIN)/python manage.py migrate_channels
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py run_portal 127.0.0.1:8000

# The prototype's loop, analyze_video and the worker side by side on shared/data/vtest.avi,
# plus the ceiling and the live capacity (bench/benchmark.py); random weights, same compute.
# About 2.5 minutes on 2 cores. BENCH_ARGS for more: a video, --json out.json, --cameras ...
BENCH_ARGS ?=
bench: install
	DETECTION_PRETRAINED=none $(BIN)/python manage.py bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
