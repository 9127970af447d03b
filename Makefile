# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates/updates .venv from the project's own files first (scripts/setup_env.sh).
PY := .venv/bin/python

.PHONY: venv demo test test-slow bench compare-baselines clean

venv:
	@bash scripts/setup_env.sh

demo: venv
	.venv/bin/rlvr recipe --config experiments/tiny/recipe.yaml

test: venv
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: venv  # the full baseline comparison, about 12 minutes (exit status 5: nothing marked slow)
	$(PY) -m pytest -m "slow" -q || [ $$? -eq 5 ]

bench: venv
	$(PY) scripts/bench_rollouts.py
	$(PY) scripts/bench_verifiers.py
	$(PY) scripts/bench_learner.py
	$(PY) scripts/bench_actors.py

# PPO and the critic-free baselines on the tiny task, 5 seeds each, then their comparison
# (README "Baselines"); about 20 minutes on 2 cores.
BASELINES := ppo grpo rloo reinforce_pp dapo
compare-baselines: venv
	for b in $(BASELINES); do .venv/bin/rlvr seeds --config experiments/tiny/baselines/$$b.yaml --seeds 0-4 --max-parallel 2 || exit 1; done
	.venv/bin/rlvr compare $(addprefix runs/baselines/,$(BASELINES)) --power 0.02 --out runs/baselines/compare

clean:
	rm -rf runs bench_out .pytest_cache
