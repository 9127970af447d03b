"""`rlvr compare RUN_DIR [RUN_DIR ...] [--metric TAG ...] [--out DIR]`: honest statistics across seeds.

Reads the TensorBoard event files (tensorboard's own reader), groups seed runs by experiment
(`runs/<experiment>/seed_<k>/`), and reports per experiment and metric across seeds: the final
and the best value and the curve's mean over all its logged points (the normalised area under
the learning curve: how fast a method gets there), mean, standard deviation, IQM and
stratified-bootstrap 95% confidence intervals (rliable), best-of-N beside the mean with its
selection bias, and the probability of improvement of each experiment over each other. Writes
a table (terminal, and compare.md to paste into a report), CSV, JSON, one PNG
per metric (mean curve with its CI band, each seed faint), and an aggregate TensorBoard run per
experiment (`<experiment>/aggregate/{mean,ci_low,ci_high}`) so TensorBoard draws the band
beside the seeds.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_METRICS = ("eval/heldout/greedy_pass_rate", "eval/heldout/sampled_pass_rate", "reward/mean")
SEED_DIR = re.compile(r"^seed_(\d+)$")


@dataclass
class Experiment:
    name: str
    root: Path
    seeds: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # seed -> tag -> [(step, value)]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def find_experiments(paths: list[str]) -> dict[str, Experiment]:
    """Each path is an experiment folder (holding seed_<k>/) or one seed folder."""
    experiments: dict[str, Experiment] = {}
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"not a folder: {p}")
        seed_dirs = [p] if SEED_DIR.match(p.name) else sorted(d for d in p.iterdir() if SEED_DIR.match(d.name))
        if not seed_dirs:
            raise FileNotFoundError(f"{p}: no seed_<k>/ run folders")
        for d in seed_dirs:
            root = d.parent
            exp = experiments.setdefault(str(root), Experiment(root.name, root))
            exp.seeds[int(SEED_DIR.match(d.name).group(1))] = read_scalars(d)
    names = [e.name for e in experiments.values()]
    if len(set(names)) != len(names):  # same folder name under different parents: use the path
        for key, e in experiments.items():
            e.name = key
    return {e.name: e for e in experiments.values()}


def bootstrap_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Stratified-bootstrap 95% CIs of the mean and the IQM over seeds (rliable)."""
    import warnings

    from rliable import library as rly
    from rliable import metrics

    # rliable 1.2 hands arch a RandomState, which arch 7.2 warns about on every call
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"arch\.")
    scores = {"x": values.reshape(-1, 1)}
    fn = lambda s: np.array([metrics.aggregate_mean(s), metrics.aggregate_iqm(s)])  # noqa: E731
    _, cis = rly.get_interval_estimates(scores, fn, reps=reps, random_state=np.random.RandomState(seed))
    ci = cis["x"]
    return {"mean": (float(ci[0, 0]), float(ci[1, 0])), "iqm": (float(ci[0, 1]), float(ci[1, 1]))}


def seed_stats(values: np.ndarray) -> dict:
    """Statistics of one number per seed."""
    from rliable import metrics

    n = len(values)
    ci = bootstrap_ci(values) if n > 1 else {"mean": (float(values[0]),) * 2, "iqm": (float(values[0]),) * 2}
    mean = float(values.mean())
    best = float(values.max())
    return {
        "n": n,
        "mean": mean,
        "std": float(values.std(ddof=1)) if n > 1 else 0.0,
        "iqm": float(metrics.aggregate_iqm(values.reshape(-1, 1))),
        "mean_ci95": ci["mean"],
        "iqm_ci95": ci["iqm"],
        "best_of_n": best,
        # Reporting the best of N seeds overstates what one run of this config gives by this much:
        "selection_bias": best - mean,
        "values": [float(v) for v in values],
    }


def summarize(experiments: dict[str, Experiment], metrics_: list[str]) -> dict:
    out: dict = {"experiments": {}, "probability_of_improvement": {}}
    finals: dict[str, dict[str, np.ndarray]] = {}
    for name, exp in experiments.items():
        out["experiments"][name] = {"seeds": sorted(exp.seeds), "metrics": {}}
        for tag in metrics_:
            series = {s: v[tag] for s, v in exp.seeds.items() if tag in v and v[tag]}
            if not series:
                continue
            final = np.array([series[s][-1][1] for s in sorted(series)])
            best = np.array([max(v for _, v in series[s]) for s in sorted(series)])
            auc = np.array([np.mean([v for _, v in series[s]]) for s in sorted(series)])
            out["experiments"][name]["metrics"][tag] = {"final": seed_stats(final), "best": seed_stats(best), "auc": seed_stats(auc)}
            finals.setdefault(tag, {})[name] = final
    from rliable import metrics as rmetrics

    for tag, by_exp in finals.items():
        names = sorted(by_exp)
        for a in names:
            for b in names:
                if a != b:
                    p = float(rmetrics.probability_of_improvement(by_exp[a].reshape(-1, 1), by_exp[b].reshape(-1, 1)))
                    out["probability_of_improvement"].setdefault(tag, {})[f"{a} > {b}"] = p
    return out


def curves(exp: Experiment, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values [seeds, steps]) on the steps every seed logged."""
    series = [dict(v[tag]) for v in exp.seeds.values() if tag in v]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    return np.array(steps), np.array([[s[k] for k in steps] for s in series])


def write_aggregate_runs(exp: Experiment, metrics_: list[str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writers = {k: SummaryWriter(str(exp.root / "aggregate" / k)) for k in ("mean", "ci_low", "ci_high")}
    try:
        for tag in metrics_:
            c = curves(exp, tag)
            if c is None:
                continue
            steps, vals = c
            for j, step in enumerate(steps):
                col = vals[:, j]
                lo, hi = bootstrap_ci(col, reps=500)["mean"] if len(col) > 1 else (col[0], col[0])
                writers["mean"].add_scalar(tag, float(col.mean()), int(step))
                writers["ci_low"].add_scalar(tag, lo, int(step))
                writers["ci_high"].add_scalar(tag, hi, int(step))
    finally:
        for w in writers.values():
            w.close()


def plot(experiments: dict[str, Experiment], tag: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for i, (name, exp) in enumerate(experiments.items()):
        c = curves(exp, tag)
        if c is None:
            continue
        steps, vals = c
        color = f"C{i}"
        for row in vals:
            ax.plot(steps, row, color=color, alpha=0.2, linewidth=0.8)
        cis = [bootstrap_ci(vals[:, j], reps=500)["mean"] if len(vals) > 1 else (vals[0, j],) * 2 for j in range(len(steps))]
        ax.fill_between(steps, [c[0] for c in cis], [c[1] for c in cis], color=color, alpha=0.25)
        ax.plot(steps, vals.mean(0), color=color, linewidth=2, label=f"{name} (mean of {len(vals)}, 95% CI)")
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def compare(paths: list[str], metrics_: list[str] | None, out_dir: str) -> dict:
    metrics_ = list(metrics_ or DEFAULT_METRICS)
    experiments = find_experiments(paths)
    result = summarize(experiments, metrics_)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "metric", "seeds", "final_mean", "final_std", "final_iqm", "mean_ci_low", "mean_ci_high",
                    "iqm_ci_low", "iqm_ci_high", "best_of_n", "selection_bias", "best_mean", "auc_mean", "auc_std",
                    "auc_ci_low", "auc_ci_high"])
        for name, e in result["experiments"].items():
            for tag, m in e["metrics"].items():
                f_ = m["final"]
                w.writerow([name, tag, f_["n"], f_["mean"], f_["std"], f_["iqm"], *f_["mean_ci95"], *f_["iqm_ci95"],
                            f_["best_of_n"], f_["selection_bias"], m["best"]["mean"], m["auc"]["mean"], m["auc"]["std"],
                            *m["auc"]["mean_ci95"]])
    (out / "compare.md").write_text(markdown_table(result))
    result["plots"] = []
    for tag in metrics_:
        path = out / (re.sub(r"[^\w.-]+", "_", tag) + ".png")
        if plot(experiments, tag, path):
            result["plots"].append(str(path))
    for exp in experiments.values():
        write_aggregate_runs(exp, metrics_)
    print_table(result)
    return result


def _cells(name: str, tag: str, m: dict) -> list[str]:
    f, a = m["final"], m["auc"]
    return [
        name, tag, str(f["n"]), f"{f['mean']:.3f} ± {f['std']:.3f}", f"[{f['mean_ci95'][0]:.3f}, {f['mean_ci95'][1]:.3f}]",
        f"{f['iqm']:.3f} [{f['iqm_ci95'][0]:.3f}, {f['iqm_ci95'][1]:.3f}]", f"{a['mean']:.3f} [{a['mean_ci95'][0]:.3f}, {a['mean_ci95'][1]:.3f}]",
        f"{f['best_of_n']:.3f}", f"+{f['selection_bias']:.3f}",
    ]


COLUMNS = ("experiment", "metric", "n", "final mean ± std", "mean 95% CI", "IQM [95% CI]", "AUC [95% CI]", "best of n", "bias of best")


def markdown_table(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, e in result["experiments"].items():
        for tag, m in e["metrics"].items():
            lines.append("| " + " | ".join(_cells(name, tag, m)) + " |")
    for tag, names, rows in _poi_matrices(result):
        lines += ["", f"P(row > column) on the final {tag}:", "", "| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in zip(names, rows)]
    return "\n".join(lines) + "\n"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title="final value across seeds (95% CIs: stratified bootstrap)")
    for col in COLUMNS:
        table.add_column(col)
    for name, e in result["experiments"].items():
        for tag, m in e["metrics"].items():
            table.add_row(*_cells(name, tag, m))
    console.print(table)
    console.print("AUC: the curve's mean over its logged points (area under the learning curve, normalised).")
    console.print("best of n: the best seed's final value; the bias column is how much reporting it overstates the mean run.")
    for tag, names, rows in _poi_matrices(result):
        t = Table(title=f"P(row > column) on the final {tag} (rliable's probability of improvement)")
        t.add_column("")
        for name in names:
            t.add_column(name, justify="right")
        for name, cells in zip(names, rows):
            t.add_row(name, *cells)
        console.print(t)


def _poi_matrices(result: dict):
    """(metric, experiment names, rows of cells) of the probability-of-improvement matrices."""
    for tag, pairs in result["probability_of_improvement"].items():
        names = sorted({p.split(" > ")[0] for p in pairs}, key=list(result["experiments"]).index)
        rows = [["" if a == b else f"{pairs[f'{a} > {b}']:.2f}" for b in names] for a in names]
        yield tag, names, rows
