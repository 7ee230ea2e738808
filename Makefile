# The README's commands. Python packages install into .venv from PyPI; the few
# programs the tests run (promtool, prometheus, haproxy) come from Debian's packages.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test system-deps lint typecheck pytest mutate e2e soak demo demo-sidecar bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# setuptools' "Editable installation" notice is information, not a problem: kept out of the output.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## test: lint, type-check and run the whole test suite
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/pytest

# BENCHMARKS.md is assembled (python -m bench.assemble) from one fragment per part in bench/results,
# each written by the run that measured it: bench (sidecar, autoscaler, simulator, router), e2e, soak.
RESULTS := bench/results
BENCHMARKS := BENCHMARKS.md
E2E_REPORT := out/e2e-report.json
# The soak's minimums: the test runs until it reaches them, and its part of BENCHMARKS.md judges them.
SOAK_SCALE_DOWNS := 500
SOAK_BUSY_SCALE_DOWNS := 60
SOAK_CYCLES := 3000
SOAK_MAX_SECONDS := 2400

## e2e: the end-to-end tests alone (tests/e2e, ~8 min); writes their part of BENCHMARKS.md
# The fragment is written whatever pytest answered (a failed run is reported, not skipped);
# the exit status is pytest's, or 1 if the fragment misses a target. The whole file's verdict
# (other parts included) is make bench's to enforce.
e2e: $(STAMP)
	since=$$(date -u +%Y-%m-%dT%H:%M:%SZ); \
	$(BIN)/pytest tests/e2e; status=$$?; \
	$(BIN)/python -m bench.e2e_section $(E2E_REPORT) --part e2e --since $$since --pytest-status $$status \
		--results $(RESULTS) || status=1; \
	$(BIN)/python -m bench.assemble --results $(RESULTS) --out $(BENCHMARKS) --exit-zero || status=1; \
	exit $$status

## system-deps: the Debian packages the tests run (prometheus, haproxy, openssl), installed if missing
system-deps:
	.ci/install-system-deps

## mutate: mutation testing (mutmut) of the decision core, tracking, draining, scale-down actuation;
## ~80 min on 2 busy cores, so not part of `test`; from scratch each time (mutmut keeps a survivor's
## verdict even after a test that kills it is added). MUTATE_JOBS: mutants at once. See docs/mutation.md.
MUTATE_JOBS ?= 2
MUTMUT_STAMP := $(VENV)/.mutmut

$(MUTMUT_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[mutate]'
	touch $(MUTMUT_STAMP)

mutate: $(MUTMUT_STAMP)
	rm -rf mutants
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mutmut run --max-children $(MUTATE_JOBS)
	$(BIN)/python -m tests.mutation_report

## soak: the end-to-end fleet run, long: at least 500 scale-downs (tests/e2e; ~20 min); writes its part of BENCHMARKS.md
soak: $(STAMP)
	since=$$(date -u +%Y-%m-%dT%H:%M:%SZ); \
	E2E_MIN_SCALE_DOWNS=$(SOAK_SCALE_DOWNS) E2E_MIN_BUSY_SCALE_DOWNS=$(SOAK_BUSY_SCALE_DOWNS) \
		E2E_MIN_CYCLES=$(SOAK_CYCLES) E2E_MAX_SECONDS=$(SOAK_MAX_SECONDS) \
		$(BIN)/pytest tests/e2e/test_no_build_lost.py -s; status=$$?; \
	$(BIN)/python -m bench.e2e_section $(E2E_REPORT) --part soak --since $$since --pytest-status $$status \
		--min-scale-downs $(SOAK_SCALE_DOWNS) --min-busy-scale-downs $(SOAK_BUSY_SCALE_DOWNS) \
		--min-cycles $(SOAK_CYCLES) --results $(RESULTS) || status=1; \
	$(BIN)/python -m bench.assemble --results $(RESULTS) --out $(BENCHMARKS) --exit-zero || status=1; \
	exit $$status

## demo: replay a bundled day of CI builds against the shipped autoscaler config (no cluster needed)
demo: $(STAMP)
	$(BIN)/buildkit-autoscaler simulate --config deploy/config.yaml --trace bursty-ci-day --out out/demo

## demo-sidecar: the real sidecar against a fake buildkitd: builds, a drain, SIGTERM
demo-sidecar: $(STAMP)
	$(BIN)/python -m tests.demo_sidecar

## bench: the benchmarks (sidecar, autoscaler, simulator, router; ~15 min); rewrites BENCHMARKS.md, fails if any target in it is missed
bench: $(STAMP)
	$(BIN)/python -m bench.run --results $(RESULTS); status=$$?; \
	$(BIN)/python -m bench.simulate_bench --results $(RESULTS) || status=1; \
	$(BIN)/python -m bench.router_bench --results $(RESULTS) || status=1; \
	$(BIN)/python -m bench.assemble --results $(RESULTS) --out $(BENCHMARKS) || status=1; \
	exit $$status

## proto: regenerate sidecar/protocol from proto/
proto: $(STAMP)
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
