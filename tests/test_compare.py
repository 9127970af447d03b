"""`rlvr compare` against statistics worked out by hand on synthetic curves."""

import csv
import json
import subprocess
import sys

import pytest
from torch.utils.tensorboard import SummaryWriter

from conftest import REPO
from rlvr.compare import read_scalars

TAG = "eval/heldout/greedy_pass_rate"
FINALS = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.3, 0.4, 0.5, 0.6, 0.7]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for exp, finals in FINALS.items():
        for seed, final in enumerate(finals):
            w = SummaryWriter(str(root / exp / f"seed_{seed}"))
            w.add_scalar(TAG, 0.0, 0)
            w.add_scalar(TAG, final + 0.3, 5)  # the best value comes mid-run
            w.add_scalar(TAG, final, 10)
            w.add_scalar("reward/mean", final / 2, 10)
            w.close()
    return root


def test_statistics_by_hand(runs, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "compare", str(runs / "a"), str(runs / "b"), "--metric", TAG, "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "compare.json").read_text())
    a = result["experiments"]["a"]["metrics"][TAG]["final"]
    # a: finals 0.1 .. 0.5: mean 0.3; std sqrt((0.04 + 0.01 + 0 + 0.01 + 0.04) / 4) = sqrt(0.025) = 0.158114;
    # IQM = mean of the middle half (trim 1 of 5 at each end) = mean(0.2, 0.3, 0.4) = 0.3;
    # best of 5 = 0.5, so reporting the best seed overstates the mean by 0.2
    assert a["mean"] == pytest.approx(0.3) and a["std"] == pytest.approx(0.158114, abs=1e-6)
    assert a["iqm"] == pytest.approx(0.3) and a["best_of_n"] == pytest.approx(0.5) and a["selection_bias"] == pytest.approx(0.2)
    assert 0.1 <= a["mean_ci95"][0] < 0.3 < a["mean_ci95"][1] <= 0.5
    best = result["experiments"]["a"]["metrics"][TAG]["best"]
    assert best["mean"] == pytest.approx(0.6)  # each seed's best (final + 0.3) averaged
    # AUC: each curve's mean over its points (0, final + 0.3, final); b: (2 * 0.5 + 0.3) / 3 on average
    auc = result["experiments"]["b"]["metrics"][TAG]["auc"]
    assert auc["mean"] == pytest.approx(1.3 / 3) and auc["values"][0] == pytest.approx((0.0 + 0.6 + 0.3) / 3)
    md = (out / "compare.md").read_text().splitlines()
    assert md[0].startswith("| experiment | metric | n | final mean ± std")
    assert md[3].startswith(f"| b | {TAG} | 5 | 0.500 ± 0.158 |") and "| 0.433 [" in md[3]
    # P(b > a): over the 25 pairs, b beats a in 18 and ties in 5 (counted 1/2): (18 + 2.5) / 25 = 0.82
    poi = result["probability_of_improvement"][TAG]
    assert poi["b > a"] == pytest.approx(0.82) and poi["a > b"] == pytest.approx(0.18)
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["experiment"], float(r["final_mean"])) for r in rows] == [("a", pytest.approx(0.3)), ("b", pytest.approx(0.5))]
    assert (out / "eval_heldout_greedy_pass_rate.png").stat().st_size > 10_000
    assert "P(row > column)" in proc.stderr and "best of n" in proc.stderr
    # the probability-of-improvement matrix: row a, column b holds P(a > b)
    assert md[-2:] == ["| a |  | 0.18 |", "| b | 0.82 |  |"]
    # the aggregate runs draw the mean and its CI beside the seeds in TensorBoard
    mean = dict(read_scalars(runs / "a" / "aggregate" / "mean")[TAG])
    low = dict(read_scalars(runs / "a" / "aggregate" / "ci_low")[TAG])
    high = dict(read_scalars(runs / "a" / "aggregate" / "ci_high")[TAG])
    assert mean == pytest.approx({0: 0.0, 5: 0.6, 10: 0.3})
    assert low[10] <= 0.3 <= high[10]


def test_missing_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "compare", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == f"rlvr: error: not a folder: {tmp_path / 'nope'}"
