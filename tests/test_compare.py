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
    # bootstrap-t: around the mean, and (unlike a percentile interval) free to reach past the seeds' range
    lo, hi = a["mean_ci95"]
    assert lo < 0.1 and hi > 0.5 and hi - 0.3 == pytest.approx(0.3 - lo, abs=0.02)
    best = result["experiments"]["a"]["metrics"][TAG]["best"]
    assert best["mean"] == pytest.approx(0.6)  # each seed's best (final + 0.3) averaged
    # AUC: the trapezoid rule over steps 0, 5, 10 (values 0, f + 0.3, f) over the span 10:
    # ((0 + f + 0.3) / 2 × 5 + (2f + 0.3) / 2 × 5) / 10 = (3f + 0.6) / 4; b's seed 0 (f = 0.3): 0.375; b's mean (f = 0.5): 0.525
    auc = result["experiments"]["b"]["metrics"][TAG]["auc"]
    assert auc["mean"] == pytest.approx(0.525) and auc["values"][0] == pytest.approx(0.375)
    md = (out / "compare.md").read_text().splitlines()
    assert md[2].startswith("| experiment | metric | step | n | final mean ± std")
    assert md[5].startswith(f"| b | {TAG} | 10 | 5 | 0.500 ± 0.158 |") and "| 0.525 [" in md[5]
    # P(b > a): over the 25 pairs, b beats a in 18 and ties in 5 (counted 1/2): (18 + 2.5) / 25 = 0.82
    pairs = result["pairs"][TAG]
    assert pairs["b vs a"]["p_better"] == pytest.approx(0.82) and pairs["a vs b"]["p_better"] == pytest.approx(0.18)
    lo, hi = pairs["b vs a"]["p_better_ci95"]
    assert lo < 0.82 < hi <= 1.0
    assert pairs["a vs b"]["p_better_ci95"] == pytest.approx([1 - hi, 1 - lo])  # one bootstrap per pair, mirrored
    # the difference of means, 0.2, with an interval around it; a vs b is its mirror image
    assert pairs["b vs a"]["diff"] == pytest.approx(0.2) and pairs["a vs b"]["diff"] == pytest.approx(-0.2)
    lo, hi = pairs["b vs a"]["diff_ci95"]
    assert lo < 0.2 < hi and pairs["a vs b"]["diff_ci95"] == pytest.approx([-hi, -lo])
    assert result["aligned"][TAG] == {"step": 10, "how": "the largest step every seed logged", "longer": [], "pooled": [],
                                      "missing": [], "better": "higher"}
    assert "compared at step 10 (the largest step every seed logged)" in proc.stderr
    assert "UNRELIABLE" not in proc.stderr  # 5 seeds each
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["experiment"], float(r["final_mean"])) for r in rows] == [("a", pytest.approx(0.3)), ("b", pytest.approx(0.5))]
    assert (out / "eval_heldout_greedy_pass_rate.png").stat().st_size > 10_000
    assert "P(row > column)" in proc.stderr and "best of n" in proc.stderr
    # the probability-of-improvement matrix: row a, column b holds P(a > b)
    poi = md.index(f"P(row > column) on {TAG} [95% CI]:")
    assert md[poi + 4].startswith("| a |  | 0.18 [") and md[poi + 5].startswith("| b | 0.82 [")
    # the aggregate runs draw the mean and its CI beside the seeds in TensorBoard
    mean = dict(read_scalars(runs / "a" / "aggregate" / "mean")[TAG])
    low = dict(read_scalars(runs / "a" / "aggregate" / "ci_low")[TAG])
    high = dict(read_scalars(runs / "a" / "aggregate" / "ci_high")[TAG])
    assert mean == pytest.approx({0: 0.0, 5: 0.6, 10: 0.3})
    assert low[10] <= 0.3 <= high[10]


def test_missing_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "compare", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == f"rlvr: error: not a folder: {tmp_path / 'nope'}"


def _write(root, exp, seed, points, tag=TAG):
    w = SummaryWriter(str(root / exp / f"seed_{seed}"))
    for step, value in points:
        w.add_scalar(tag, value, step)
    w.close()


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """An experiment whose seeds stopped at steps 50, 100 and 150 (culled, kept, extended) beside one whose
    seeds all reached 100. Each value is step / 1000 + seed / 100, so a value tells where it came from."""
    root = tmp_path_factory.mktemp("uneven")
    for seed, last in enumerate((50, 100, 150)):
        _write(root, "a", seed, [(s, s / 1000 + seed / 100) for s in range(0, last + 1, 10)])
    for seed in range(3):
        _write(root, "b", seed, [(s, s / 1000 + seed / 100) for s in range(0, 101, 10)])
    return root


def compare_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlvr.cli", "compare", *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_seeds_are_compared_at_one_step(uneven, tmp_path):
    proc = compare_cli(uneven / "a", uneven / "b", "--metric", TAG, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "compare.json").read_text())
    aligned = result["aligned"][TAG]
    assert aligned["step"] == 50 and aligned["pooled"] == []
    assert aligned["longer"] == ["a/seed_1 (to step 100)", "a/seed_2 (to step 150)"] + [f"b/seed_{s} (to step 100)" for s in range(3)]
    # every value is the one at step 50: 0.05 + seed / 100, never a longer seed's last value
    assert result["experiments"]["a"]["metrics"][TAG]["final"]["values"] == pytest.approx([0.05, 0.06, 0.07])
    assert result["experiments"]["b"]["metrics"][TAG]["final"]["values"] == pytest.approx([0.05, 0.06, 0.07])
    # best and AUC stop there too: each seed's best is its step-50 value; AUC the mean of steps 0..50
    assert result["experiments"]["a"]["metrics"][TAG]["best"]["values"] == pytest.approx([0.05, 0.06, 0.07])
    assert result["experiments"]["a"]["metrics"][TAG]["auc"]["values"][2] == pytest.approx(0.025 + 0.02)
    assert result["pairs"][TAG]["a vs b"]["diff"] == pytest.approx(0.0)
    assert "compared at step 50 (the largest step every seed logged); ran longer, cut at that step: a/seed_1" in " ".join(proc.stderr.split())
    assert "UNRELIABLE with fewer than 5 seeds per method (here 3)" in " ".join(proc.stderr.split())


def test_mixing_steps_is_refused_unless_asked(uneven, tmp_path):
    proc = compare_cli(uneven / "a", uneven / "b", "--metric", TAG, "--at-step", 100, "--out", tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"rlvr: error: {TAG}: not every seed logged step 100: a/seed_0 (last logged at step 50 ≤ 100)")
    assert not (tmp_path / "compare.json").exists()
    proc = compare_cli(uneven / "a", "--metric", TAG, "--at-step", 100, "--pool-steps", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["aligned"][TAG]["pooled"] == ["a/seed_0 (last logged at step 50 ≤ 100)"]
    assert result["experiments"]["a"]["metrics"][TAG]["final"]["values"] == pytest.approx([0.05, 0.11, 0.12])
    assert "POOLED from earlier steps" in proc.stderr


def test_a_folder_of_experiments_is_ranked(uneven, tmp_path):
    """A sweep's folder holds one experiment per cell: compare groups by cell and ranks the cells."""
    root = tmp_path / "sweep"
    for cell, shift in (("lr=1", 0.0), ("lr=2", 0.2), ("lr=3", 0.1)):
        for seed in range(5):
            _write(root, cell, seed, [(0, 0.0), (10, 0.5 + shift + seed / 100)])
    proc = compare_cli(root, "--metric", TAG, "--power", "0.05", "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    ranked = result["ranking"][TAG]
    assert [r["experiment"] for r in ranked] == ["lr=2", "lr=3", "lr=1"]
    assert ranked[1]["gap"] == pytest.approx(0.1) and ranked[2]["p_first_better"] == pytest.approx(1.0)
    assert ranked[1]["gap_ci95"][0] > 0  # 5 seeds, no overlap: the gap's interval excludes 0
    # power: every cell's seeds are 0.50..0.54 shifted, so σ = std(0, .01, .02, .03, .04) = 0.0158114;
    # δ = 0.05 is 3.16 σ: the t-test reaches 80% power at 3 seeds per method (noncentral t)
    power = result["power"][TAG]
    assert power["pooled_std"] == pytest.approx(0.0158114, abs=1e-6) and power["seeds_per_method"] == 3
    assert "ranking by" in proc.stderr and "seeds per method" in proc.stderr


def test_lower_is_better_nan_values_and_a_single_seed(tmp_path):
    from rlvr.compare import find_experiments, summarize

    root = tmp_path / "runs"
    for seed, (x, y) in enumerate([(0.1, 0.5), (0.2, 0.6), (0.3, float("nan"))]):
        _write(root, "x", seed, [(0, 1.0), (10, x)], tag="loss")
        _write(root, "y", seed, [(0, 1.0), (10, y)], tag="loss")
    _write(root, "z", 0, [(0, 1.0), (10, 0.05)], tag="loss")
    result = summarize(find_experiments([str(root / e) for e in "xyz"]), ["min:loss"], power=0.1)
    # the NaN is left out and named; lower is better: x (0.2) ranks above y (0.55), z's one seed (0.05) first
    assert result["aligned"]["loss"]["step"] == 10 and result["aligned"]["loss"]["missing"] == ["y/seed_2 (NaN/inf at step 10, left out)"]
    assert [r["experiment"] for r in result["ranking"]["loss"]] == ["z", "x", "y"]
    pair = result["pairs"]["loss"]["x vs y"]
    assert pair["diff"] == pytest.approx(-0.35) and pair["p_better"] == 1.0  # P(x < y): every x seed is below every y seed
    assert result["pairs"]["loss"]["y vs x"]["p_better"] == 0.0
    z = result["experiments"]["z"]["metrics"]["loss"]["final"]
    assert z["mean_ci95"] == [None, None] and result["pairs"]["loss"]["z vs x"]["diff_ci95"] == [None, None]  # one seed: no interval
    assert result["experiments"]["x"]["metrics"]["loss"]["best"]["values"] == pytest.approx([0.1, 0.2, 0.3])  # the lowest point
    from rlvr.compare import markdown

    assert "P(row < column) on loss" in markdown(result) and "n/a" in markdown(result)


def test_compare_leaves_vllm_startable_in_its_process():
    """vLLM's in-process start-up scans every loaded module and trips over numba's llvmlite objects (which
    rliable.library loads through arch): a comparison must not load them, so that a script (or a test
    session) can compare and then sample."""
    code = ("import sys, numpy as np\nfrom rlvr.compare import seed_stats, iqm_ci\nseed_stats(np.array([0.1, 0.2, 0.4]))\n"
            "iqm_ci(np.array([0.1, 0.2, 0.4]))\nassert 'llvmlite' not in sys.modules, 'llvmlite loaded'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
