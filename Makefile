# The two entry points of the README. Both install first (idempotent) into .venv.
.PHONY: install quickstart test test-fast bench
install:
	bash scripts/install.sh

quickstart: install
	.venv/bin/activesyn run jobs/quickstart.yaml

# What CI runs: every test, the 25 slowest listed at the end (docs/testing.md).
test: install
	.venv/bin/python -m pytest -q --timeout=1200 --durations=25

# The inner loop: no Ray cluster, no engine, no DeepSpeed rank (docs/testing.md).
test-fast: install
	.venv/bin/python -m pytest -q -m "not slow" --timeout=300 --durations=10

bench: install
	.venv/bin/activesyn bench
