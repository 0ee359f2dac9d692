# The two entry points of the README. Both install first (idempotent) into .venv.
.PHONY: install quickstart test bench
install:
	bash scripts/install.sh

quickstart: install
	.venv/bin/activesyn run jobs/quickstart.yaml

test: install
	.venv/bin/python -m pytest -q --timeout=1200 --durations=15

bench: install
	.venv/bin/activesyn bench
