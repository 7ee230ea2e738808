# The README's commands. Python packages install into .venv from PyPI; the few
# programs the tests run (promtool, prometheus, haproxy) come from Debian's packages.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test system-deps lint typecheck pytest soak demo demo-sidecar bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## test: lint, type-check and run the whole test suite
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/pytest

## system-deps: the Debian packages the tests run (prometheus, haproxy), installed if missing
system-deps:
	.ci/install-system-deps

## soak: the end-to-end fleet run, long: at least 500 scale-downs (tests/e2e; ~20 min)
soak: $(STAMP)
	E2E_MIN_SCALE_DOWNS=500 E2E_MIN_BUSY_SCALE_DOWNS=60 E2E_MIN_CYCLES=3000 E2E_MAX_SECONDS=2400 \
		$(BIN)/pytest tests/e2e/test_no_build_lost.py -s

## demo: replay a bundled day of CI builds against the shipped autoscaler config (no cluster needed)
demo: $(STAMP)
	$(BIN)/buildkit-autoscaler simulate --config deploy/config.yaml --trace bursty-ci-day --out out/demo

## demo-sidecar: the real sidecar against a fake buildkitd: builds, a drain, SIGTERM
demo-sidecar: $(STAMP)
	$(BIN)/python -m tests.demo_sidecar

## bench: the benchmarks (sidecar, autoscaler, simulator); writes BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m bench.run --out BENCHMARKS.md; status=$$?; \
	$(BIN)/python -m bench.simulate_bench --out bench/SIMULATION.md && \
	{ echo; cat bench/SIMULATION.md; } >> BENCHMARKS.md; \
	exit $$status

## proto: regenerate sidecar/protocol from proto/
proto: $(STAMP)
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
