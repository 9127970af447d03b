"""`make test-slow`: the full baseline comparison as README shows it: PPO, GRPO, RLOO, REINFORCE++
and DAPO on the tiny task, 5 seeds each through `rlvr seeds`, then `rlvr compare` (about 20 min)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

METHODS = ("ppo", "grpo", "rloo", "reinforce_pp", "dapo")


@pytest.mark.slow
def test_every_baseline_raises_the_heldout_pass_rate_for_every_seed(tmp_path):
    for m in METHODS:
        proc = subprocess.run(
            [sys.executable, "-m", "rlvr.cli", "seeds", "--config", str(REPO / "experiments" / "tiny" / "baselines" / f"{m}.yaml"),
             "--seeds", "0-4", "--max-parallel", "2", "--output_dir", str(tmp_path)],
            capture_output=True, text=True, cwd=REPO, timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        for seed in range(5):
            s = json.loads((tmp_path / m / f"seed_{seed}" / "summary.json").read_text())
            for mode in ("greedy", "sampled"):
                start, end = s["initial"][f"eval/heldout/{mode}_pass_rate"], s["final"][f"eval/heldout/{mode}_pass_rate"]
                assert end >= start + 0.5, (m, seed, mode, start, end)
    out = tmp_path / "compare"
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "compare", *[str(tmp_path / m) for m in METHODS], "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ") and "eval/heldout" in line]
    assert len(rows) == 2 * len(METHODS)  # greedy and sampled pass rate per method
