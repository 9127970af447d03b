# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates/updates .venv from the project's own files first (scripts/setup_env.sh).
PY := .venv/bin/python

.PHONY: venv demo test test-slow bench clean

venv:
	@bash scripts/setup_env.sh

demo: venv
	.venv/bin/rlvr recipe --config experiments/tiny/recipe.yaml

test: venv
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: venv  # (exit status 5 = no test marked slow yet)
	$(PY) -m pytest -m "slow" -q || [ $$? -eq 5 ]

bench: venv
	$(PY) scripts/bench_rollouts.py
	$(PY) scripts/bench_verifiers.py

clean:
	rm -rf runs bench_out .pytest_cache
