"""`rlvr compare RUN_DIR [RUN_DIR ...] [--metric TAG ...] [--at-step S] [--power DELTA] [--out DIR]`:
honest statistics across seeds.

Reads the TensorBoard event files (tensorboard's own reader) and groups seed runs by experiment
(`runs/<experiment>/seed_<k>/`; a folder of experiments, such as a sweep's, gives one experiment
per subfolder). Every seed is compared at one step: by default the largest step that every seed
of every experiment logged the metric at, stated in the output; seeds that ran longer (extended,
the survivors of culling) are cut there, and values from different steps are never pooled unless
asked (`--pool-steps`). Per experiment and metric: mean, standard deviation, IQM, the best of N
seeds beside the mean with its selection bias, and the curve's mean up to that step (the
normalised area under the learning curve). Between experiments: the difference of means and the
probability of improvement, each with a 95% interval, and a ranking when there are more than two
(rlvr/stats.py says which interval is which, and why). `--power DELTA` adds how many seeds would
tell two methods apart by DELTA, and how the interval width and the best-of-N bias shrink with N.

Writes a table (terminal, and compare.md to paste into a report), CSV, JSON, one PNG per metric
(each experiment's mean curve with its 95% band on the steps all its seeds logged, each seed
faint) and an aggregate TensorBoard run per experiment (`<experiment>/aggregate/{mean,ci_low,
ci_high}`) so TensorBoard draws the band beside the seeds.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlvr import stats

DEFAULT_METRICS = ("eval/heldout/greedy_pass_rate", "eval/heldout/sampled_pass_rate", "reward/mean")
SEED_DIR = re.compile(r"^seed_(\d+)$")


class CompareError(ValueError):
    """Runs that cannot be compared as asked (no common step, seeds short of --at-step, ...)."""


@dataclass
class Experiment:
    name: str
    root: Path
    seeds: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # seed -> tag -> [(step, value)]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _seed_dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and SEED_DIR.match(d.name))


def find_experiments(paths: list[str]) -> dict[str, Experiment]:
    """Each path is an experiment folder (holding seed_<k>/), a folder of experiments (a sweep:
    each subfolder holding seed_<k>/ is one) or one seed folder."""
    experiments: dict[str, Experiment] = {}
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"not a folder: {p}")
        seed_dirs = [p] if SEED_DIR.match(p.name) else _seed_dirs(p)
        if not seed_dirs:
            seed_dirs = [d for sub in sorted(p.iterdir()) if sub.is_dir() for d in _seed_dirs(sub)]
        if not seed_dirs:
            raise FileNotFoundError(f"{p}: no seed_<k>/ run folders (nor experiment folders holding them)")
        for d in seed_dirs:
            root = d.parent
            exp = experiments.setdefault(str(root), Experiment(root.name, root))
            exp.seeds[int(SEED_DIR.match(d.name).group(1))] = read_scalars(d)
    names = [e.name for e in experiments.values()]
    if len(set(names)) != len(names):  # same folder name under different parents: use the path
        for key, e in experiments.items():
            e.name = key
    return {e.name: e for e in experiments.values()}


# ---------------------------------------------------------------------------- one step for every seed


@dataclass
class Aligned:
    """Every included seed's value of one metric at one step."""

    tag: str
    step: int
    how: str
    values: dict[str, dict[int, float]]  # experiment -> seed -> value at `step`
    curves: dict[str, dict[int, list[tuple[int, float]]]]  # experiment -> seed -> points up to `step`
    longer: list[str] = field(default_factory=list)  # seeds that went on past `step` (their later values unused)
    pooled: list[str] = field(default_factory=list)  # seeds whose value is from an earlier step (--pool-steps)
    missing: list[str] = field(default_factory=list)  # seeds that never logged the metric (up to `step`)

    def to_json(self) -> dict:
        return {"step": self.step, "how": self.how, "longer": self.longer, "pooled": self.pooled, "missing": self.missing}


def align(experiments: dict[str, Experiment], tag: str, at_step: int | None = None, pool: bool = False) -> Aligned | None:
    """Each seed's value of `tag` at one common step (None: no seed logged `tag`)."""
    label = lambda key: f"{key[0]}/seed_{key[1]}"  # noqa: E731
    series = {(n, s): dict(v[tag]) for n, e in experiments.items() for s, v in sorted(e.seeds.items()) if v.get(tag)}
    if not series:
        return None
    missing = [label((n, s)) for n, e in experiments.items() for s in sorted(e.seeds) if (n, s) not in series]
    if at_step is None:
        common = set.intersection(*(set(points) for points in series.values()))
        if not common:
            lasts = ", ".join(f"{label(k)} {min(p)}-{max(p)}" for k, p in series.items())
            raise CompareError(f"{tag}: the seeds share no logged step (steps logged: {lasts}); pick one with --at-step and --pool-steps")
        step, how = max(common), "the largest step every seed logged"
    else:
        step, how = at_step, "--at-step"
    values: dict[str, dict[int, float]] = {n: {} for n in experiments}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {n: {} for n in experiments}
    out = Aligned(tag, step, how, values, curves, missing=missing)
    off = []
    for key, points in series.items():
        if step in points:
            value = points[step]
        else:
            before = [k for k in points if k <= step]
            off.append(f"{label(key)} (last logged at step {max(before) if before else 'none'} ≤ {step})")
            if not pool:
                continue
            if not before:
                out.missing.append(label(key))
                continue
            value = points[max(before)]
            out.pooled.append(off[-1])
        if not np.isfinite(value):  # a diverged seed: named, never averaged in
            out.missing.append(f"{label(key)} (NaN/inf at step {step}, left out)")
            continue
        values[key[0]][key[1]] = value
        curves[key[0]][key[1]] = sorted((k, v) for k, v in points.items() if k <= step and np.isfinite(v))
        if max(points) > step:
            out.longer.append(f"{label(key)} (to step {max(points)})")
    if off and not pool:
        raise CompareError(
            f"{tag}: not every seed logged step {step}: {', '.join(off)}. Compare at a step they all reached "
            "(leave out --at-step), or pass --pool-steps to use each seed's last value before it (values from different steps)"
        )
    if not any(values.values()):
        raise CompareError(f"{tag}: no seed logged it at or before step {step}")
    return out


# ---------------------------------------------------------------------------- statistics


def _iv(ci: stats.Interval) -> list:
    """An interval for JSON: [lo, hi], None where there is none (one seed)."""
    return [None if not np.isfinite(v) else float(v) for v in ci[:2]]


def seed_stats(values: np.ndarray, steps: list | None = None) -> dict:
    """Statistics of one number per seed."""
    from rliable import metrics

    n = len(values)
    mean, best = float(values.mean()), float(values.max())
    ci = stats.mean_ci(values)
    return {
        "n": n,
        "mean": mean,
        "std": float(values.std(ddof=1)) if n > 1 else 0.0,
        "iqm": float(metrics.aggregate_iqm(values.reshape(-1, 1))),
        "mean_ci95": _iv(ci),
        "mean_ci95_bootstrap_t": ci.bootstrap_t,  # False: the percentile interval (most seeds equal), or none
        "iqm_ci95": iqm_ci(values),
        "best_of_n": best,
        # Reporting the best of N seeds overstates what one run of this config gives by this much:
        "selection_bias": best - mean,
        "values": [float(v) for v in values],
    }


def iqm_ci(values: np.ndarray) -> list:
    """Percentile-bootstrap 95% interval of the IQM (rliable's stratified bootstrap is this for one task;
    its `library` module is not imported: it loads numba's llvmlite, whose objects break vLLM's start-up
    scan of every module when both live in one process)."""
    return _iv(stats.iqm_ci(values))


def auc(points: list[tuple[int, float]]) -> float:
    """The curve's normalised area: the trapezoid rule over its logged steps divided by their span, so that
    an extra point (an evaluation at a stop) does not reweigh the curve; one point: its value."""
    steps, values = np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points])
    if len(points) < 2:
        return float(values[0])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def parse_metric(text: str) -> tuple[str, int]:
    """`TAG`, `max:TAG` or `min:TAG` -> (tag, +1 when higher is better, -1 when lower is)."""
    kind, colon, tag = text.partition(":")
    if colon and kind in ("min", "max"):
        return tag, -1 if kind == "min" else 1
    return text, 1


def pair_stats(finals: dict[str, np.ndarray], sign: int) -> dict:
    """For every ordered pair (x, y): the difference of means x − y and P(x better than y), each with its
    95% interval. Each unordered pair is bootstrapped once and mirrored, so `x vs y` and `y vs x` agree."""
    out = {}
    names = list(finals)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            a, b = finals[x], finals[y]
            d, p = stats.diff_ci(a, b), stats.prob_improvement_ci(a, b)
            poi = float(stats.prob_improvement(a, b))
            if sign < 0:  # lower is better: P(x < y) + ties / 2 = 1 − (P(x > y) + ties / 2)
                poi, p = 1 - poi, stats.Interval(1 - p.hi, 1 - p.lo, False)
            diff = float(a.mean() - b.mean())
            out[f"{x} vs {y}"] = {"diff": diff, "diff_ci95": _iv(d), "diff_ci95_bootstrap_t": d.bootstrap_t,
                                  "p_better": poi, "p_better_ci95": _iv(p)}
            out[f"{y} vs {x}"] = {"diff": -diff, "diff_ci95": _iv(stats.Interval(-d.hi, -d.lo, d.bootstrap_t)),
                                  "diff_ci95_bootstrap_t": d.bootstrap_t, "p_better": 1 - poi,
                                  "p_better_ci95": _iv(stats.Interval(1 - p.hi, 1 - p.lo, False))}
    return out


def summarize(experiments: dict[str, Experiment], metrics_: list[str], at_step: int | None = None, pool: bool = False,
              power: float | None = None) -> dict:
    out: dict = {"experiments": {n: {"seeds": sorted(e.seeds), "metrics": {}} for n, e in experiments.items()},
                 "aligned": {}, "pairs": {}, "ranking": {}}
    ns = []
    for spec in metrics_:
        tag, sign = parse_metric(spec)
        a = align(experiments, tag, at_step, pool)
        if a is None:
            continue
        out["aligned"][tag] = {**a.to_json(), "better": "higher" if sign > 0 else "lower"}
        finals = {}
        for name in experiments:
            seeds = sorted(a.values[name])
            if not seeds:
                continue
            final = np.array([a.values[name][s] for s in seeds])
            best = np.array([(max if sign > 0 else min)(v for _, v in a.curves[name][s]) for s in seeds])
            areas = np.array([auc(a.curves[name][s]) for s in seeds])
            out["experiments"][name]["metrics"][tag] = {
                "step": a.step, "seeds": seeds, "final": seed_stats(final), "best": seed_stats(best), "auc": seed_stats(areas)
            }
            finals[name] = final
            ns.append(len(final))
        out["pairs"][tag] = pair_stats(finals, sign)
        if len(finals) > 1:
            out["ranking"][tag] = ranking(finals, out["pairs"][tag], sign)
        if power is not None:
            out.setdefault("power", {})[tag] = power_table(finals, power)
    out["intervals"] = stats.interval_note(ns) if ns else ""
    return out


def ranking(finals: dict[str, np.ndarray], pairs: dict, sign: int) -> list[dict]:
    """Experiments by mean, best first; each against the first: the gap (first − it) and P(first better), with intervals."""
    order = sorted(finals, key=lambda n: -sign * finals[n].mean())
    top = order[0]
    rows = []
    for name in order:
        ci = stats.mean_ci(finals[name])
        row = {"experiment": name, "mean": float(finals[name].mean()), "mean_ci95": _iv(ci), "mean_ci95_bootstrap_t": ci.bootstrap_t}
        if name != top:
            p = pairs[f"{top} vs {name}"]
            row.update(gap=p["diff"], gap_ci95=p["diff_ci95"], gap_ci95_bootstrap_t=p["diff_ci95_bootstrap_t"],
                       p_first_better=p["p_better"], p_first_better_ci95=p["p_better_ci95"])
        rows.append(row)
    return rows


def power_table(finals: dict[str, np.ndarray], delta: float) -> dict:
    sigma = stats.pooled_std(list(finals.values()))
    known = bool(np.isfinite(sigma))
    return {
        "delta": delta,
        "pooled_std": sigma if known else None,  # None: no method has 2 seeds
        "seeds_per_method": stats.seeds_needed(delta, sigma) if known else None,
        "seeds_per_method_normal_approx": stats.seeds_needed_normal(delta, sigma) if known else None,
        "precision_by_n": {name: stats.precision_by_n(v) for name, v in finals.items()},
    }


# ---------------------------------------------------------------------------- curves, TensorBoard, plots


def curves(exp: Experiment, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values [seeds, steps]) on the steps every seed logged."""
    series = [dict(v[tag]) for v in exp.seeds.values() if tag in v]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    return np.array(steps), np.array([[s[k] for k in steps] for s in series])


def band(vals: np.ndarray, interval=None) -> tuple[np.ndarray, np.ndarray]:
    """The 95% interval of the mean at each step (columns of [seeds, steps]); bootstrap-t unless `interval` is given."""
    interval = interval or (lambda x: stats.mean_ci(x, reps=1000))
    cis = [interval(vals[:, j]) for j in range(vals.shape[1])]
    return np.array([c[0] for c in cis]), np.array([c[1] for c in cis])


def write_aggregate_runs(exp: Experiment, metrics_: list[str], interval=None) -> None:
    """`<experiment>/aggregate/{mean,ci_low,ci_high}` (each metric under its own tag, so TensorBoard overlays them on
    the seeds' charts) and `aggregate/band` (`band/<tag>/{mean,low,high}`, the Custom Scalars margin charts)."""
    from rlvr.runlog import write_runs

    runs: dict[str, dict[str, list]] = {k: {} for k in ("mean", "ci_low", "ci_high", "band")}
    for tag in metrics_:
        c = curves(exp, tag)
        if c is None:
            continue
        steps, vals = c
        low, high = band(vals, interval)
        mean = vals.mean(0)
        for run, key, v in (("mean", "mean", mean), ("ci_low", "low", low), ("ci_high", "high", high)):
            points = [(int(s), float(x)) for s, x in zip(steps, v) if np.isfinite(x)]
            runs[run][tag] = points
            runs["band"][f"band/{tag}/{key}"] = points
    write_runs({exp.root / "aggregate" / k: series for k, series in runs.items()})


def plot(experiments: dict[str, Experiment], tag: str, path: Path, at_step: int | None) -> bool:
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
        color = f"C{i % 10}"
        for v in exp.seeds.values():  # every seed whole, also past the steps the others reached
            if tag in v:
                ax.plot(*zip(*v[tag]), color=color, alpha=0.2, linewidth=0.8)
        low, high = band(vals)
        ax.fill_between(steps, low, high, color=color, alpha=0.25)
        ax.plot(steps, vals.mean(0), color=color, linewidth=2, label=f"{name} (mean of {len(vals)}, 95% CI)")
        drawn = True
    if drawn:
        if at_step is not None:
            ax.axvline(at_step, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


# ---------------------------------------------------------------------------- the command


def compare(paths: list[str], metrics_: list[str] | None, out_dir: str, at_step: int | None = None, pool: bool = False,
            power: float | None = None) -> dict:
    metrics_ = list(metrics_ or DEFAULT_METRICS)
    experiments = find_experiments(paths)
    result = summarize(experiments, metrics_, at_step, pool, power)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "metric", "step", "seeds", "final_mean", "final_std", "final_iqm", "mean_ci_low", "mean_ci_high",
                    "iqm_ci_low", "iqm_ci_high", "best_of_n", "selection_bias", "best_mean", "auc_mean", "auc_std",
                    "auc_ci_low", "auc_ci_high"])
        for name, e in result["experiments"].items():
            for tag, m in e["metrics"].items():
                f_ = m["final"]
                w.writerow([name, tag, m["step"], f_["n"], f_["mean"], f_["std"], f_["iqm"], *f_["mean_ci95"], *f_["iqm_ci95"],
                            f_["best_of_n"], f_["selection_bias"], m["best"]["mean"], m["auc"]["mean"], m["auc"]["std"],
                            *m["auc"]["mean_ci95"]])
    (out / "compare.md").write_text(markdown(result))
    result["plots"] = []
    for spec in metrics_:
        tag = parse_metric(spec)[0]
        path = out / (re.sub(r"[^\w.-]+", "_", tag) + ".png")
        if plot(experiments, tag, path, result["aligned"].get(tag, {}).get("step")):
            result["plots"].append(str(path))
    from rlvr.runlog import HEADLINE

    tags = list(dict.fromkeys([parse_metric(m)[0] for m in metrics_] + [t for ts in HEADLINE.values() for t in ts]))
    for exp in experiments.values():
        write_aggregate_runs(exp, tags)  # the compared metrics and the headline panels' (rlvr/runlog.py)
    print_tables(result)
    return result


# ---------------------------------------------------------------------------- tables

COLUMNS = ("experiment", "metric", "step", "n", "final mean ± std", "mean 95% CI", "IQM [95% CI]", "AUC [95% CI]", "best of n", "bias of best")


def _ci(ci, bootstrap_t: bool = True) -> str:
    if ci[0] is None:
        return "n/a"  # one seed: no interval
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" + ("" if bootstrap_t else "†")


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of a comparison, in order; both the terminal and compare.md draw these."""
    rows = []
    for name, e in result["experiments"].items():
        for tag, m in e["metrics"].items():
            f, a = m["final"], m["auc"]
            rows.append([
                name, tag, str(m["step"]), str(f["n"]), f"{f['mean']:.3f} ± {f['std']:.3f}", _ci(f["mean_ci95"], f["mean_ci95_bootstrap_t"]),
                f"{f['iqm']:.3f} {_ci(f['iqm_ci95'])}", f"{a['mean']:.3f} {_ci(a['mean_ci95'], a['mean_ci95_bootstrap_t'])}", f"{f['best_of_n']:.3f}",
                f"+{f['selection_bias']:.3f}",
            ])
    out = [("value at the aligned step across seeds", list(COLUMNS), rows)]
    for tag, pairs in result["pairs"].items():
        names = [n for n in result["experiments"] if tag in result["experiments"][n]["metrics"]]
        if len(names) < 2:
            continue
        def cell(a, b):
            if a == b:
                return ""
            p = pairs[f"{a} vs {b}"]
            return f"{p['diff']:+.3f} {_ci(p['diff_ci95'], p['diff_ci95_bootstrap_t'])}"

        out.append((f"difference of means, row − column, of {tag} [95% CI]", ["", *names], [[a, *(cell(a, b) for b in names)] for a in names]))
        def poi(a, b):
            if a == b:
                return ""
            p = pairs[f"{a} vs {b}"]
            return f"{p['p_better']:.2f} {_ci(p['p_better_ci95'])}"

        better = ">" if result["aligned"][tag]["better"] == "higher" else "<"
        out.append((f"P(row {better} column) on {tag} [95% CI]", ["", *names], [[a, *(poi(a, b) for b in names)] for a in names]))
    for tag, ranked in result["ranking"].items():
        head = ["rank", "experiment", "mean [95% CI]", "behind the first [95% CI]", "P(first better) [95% CI]"]
        body = [[str(i + 1), r["experiment"], f"{r['mean']:.3f} {_ci(r['mean_ci95'], r['mean_ci95_bootstrap_t'])}",
                 f"{r['gap']:+.3f} {_ci(r['gap_ci95'], r['gap_ci95_bootstrap_t'])}" if "gap" in r else "", f"{r['p_first_better']:.2f} {_ci(r['p_first_better_ci95'])}" if "gap" in r else ""]
                for i, r in enumerate(ranked)]
        out.append((f"ranking by {tag}", head, body))
    for tag, p in result.get("power", {}).items():
        n = p["seeds_per_method"]
        names = list(p["precision_by_n"])
        if p["pooled_std"] is None:
            title = f"power on {tag}: σ unknown (no method has 2 seeds), so no seed count. With N seeds, from resampling the seeds at hand"
        else:
            title = (f"power on {tag}: to tell two methods apart by {p['delta']:g} (σ = {p['pooled_std']:.4f} pooled over the seeds; "
                     f"two-sided t-test, α = 0.05, 80% power, noncentral t) takes {n if n is not None else 'more than 100000'} seeds per "
                     f"method (normal approximation 2σ²(z₀.₉₇₅ + z₀.₈)²/δ² = {p['seeds_per_method_normal_approx']:.1f}). With N seeds, "
                     "from resampling the seeds at hand")
        title += ": width of the 95% range of the N-seed mean / best-of-N bias"
        body = [[str(row["n"]), *(f"{p['precision_by_n'][name][i]['ci_width']:.3f} / +{p['precision_by_n'][name][i]['best_of_n_bias']:.3f}" for name in names)]
                for i, row in enumerate(p["precision_by_n"][names[0]])]
        out.append((title, ["N", *names], body))
    return out


def notes(result: dict) -> list[str]:
    lines = []
    for tag, a in result["aligned"].items():
        line = f"{tag}: compared at step {a['step']} ({a['how']})"
        for key, what in (("longer", "ran longer, cut at that step"), ("pooled", "POOLED from earlier steps (--pool-steps)"),
                          ("missing", "left out (did not log it, or not a finite number)")):
            if a[key]:
                line += f"; {what}: {', '.join(a[key])}"
        lines.append(line)
    lines.append(result["intervals"])
    lines.append("AUC: the area under the curve up to the step (trapezoid rule over the logged steps), divided by the steps it spans. "
                 "best of n: the best seed's value; its bias is how much reporting it overstates the mean run.")
    return lines


def markdown(result: dict) -> str:
    lines = []
    for title, head, rows in tables(result):
        lines += [f"{title}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines + notes(result)) + "\n"


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 220)  # a log file: whole rows, not squeezed
    for title, head, rows in tables(result):
        t = Table(title=title)
        for col in head:
            t.add_column(col)
        for r in rows:
            t.add_row(*r)
        console.print(t)
    for line in notes(result):
        console.print(line, soft_wrap=True, highlight=False)
