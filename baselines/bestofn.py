"""Best-of-N with a verifier: pass@k and maj@k of one checkpoint on a prompt set.

    rlvr bestofn --config experiments/tiny/bestofn.yaml --model.name_or_path runs/.../policy

n samples per prompt at the sampling temperature, each scored by the row's verifier.
- pass@k: the chance that at least one of k samples passes (the verifier picks the best of k),
  by the unbiased estimator of Chen et al. 2021 from all n samples.
- maj@k: majority vote. Each sample's answer is what its verifier extracted (`info["extracted"]`,
  e.g. the final number of a math solution) or else its whitespace-normalised text; samples the
  verifier could not parse do not vote. The most common answer wins (ties: the one seen first)
  and the vote passes when that answer's sample passes. Averaged over the n // k disjoint
  groups of k samples of each prompt.

The run folder has the usual shape (`runs/<name>/seed_<k>/`): config.yaml, samples.jsonl (every
sample with its score, status and answer), results.json, TensorBoard scalars `bestofn/pass@k`,
`bestofn/maj@k` (so `rlvr compare` reads them) and bestofn.png (both against k).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from rlvr.config import BestOfNConfig, to_yaml
from rlvr.verifiers import VerifierResult

NO_VOTE = ("unparsable", "error", "timeout")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c passing (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def answer_key(result: VerifierResult, text: str) -> str | None:
    """What a sample votes for: the verifier's extracted answer, else its normalised text; None
    when the verifier could not read an answer."""
    if result.status in NO_VOTE:
        return None
    extracted = result.info.get("extracted")
    if extracted is not None:
        return str(extracted)
    return " ".join(text.split())


def majority_passes(keys: list[str | None], passed: list[bool]) -> bool:
    """Does the majority answer of these samples pass? False when no sample votes."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(k for k in keys if k is not None and votes[k] == top)  # ties: the first seen
    return passed[keys.index(winner)]


def best_of_n_metrics(passed: list[list[bool]], keys: list[list[str | None]], ks: tuple[int, ...]) -> dict[str, float]:
    """{"pass@k": ..., "maj@k": ...} averaged over prompts; rows of `passed`/`keys` are prompts."""
    out: dict[str, float] = {}
    for k in ks:
        pk, mk = [], []
        for p, key in zip(passed, keys):
            n = len(p)
            pk.append(pass_at_k(n, sum(p), k))
            groups = [range(g * k, (g + 1) * k) for g in range(n // k)]
            mk.append(sum(majority_passes([key[i] for i in g], [p[i] for i in g]) for g in groups) / len(groups))
        out[f"pass@{k}"] = sum(pk) / len(pk)
        out[f"maj@{k}"] = sum(mk) / len(mk)
    return out


def prompt_rows(cfg: BestOfNConfig) -> list[dict]:
    """The prompt set: data.eval rows, else the held-out split of data.task."""
    from rlvr.data import DataError, load_rows, normalize_rows
    from rlvr.tasks import make_task

    d = cfg.data
    if d.eval:
        rows = normalize_rows(load_rows(d.eval, d.eval_split), d.eval)
    elif d.task:
        try:
            _, heldout = make_task(d.task, 1, d.num_eval, seed=0)
        except KeyError as e:
            raise DataError(f"data.task: {e.args[0]}") from None
        rows = normalize_rows(heldout, f"{d.task} held-out")
    else:
        raise DataError("set data.eval (a file of prompt rows) or data.task (its held-out split) for the prompts")
    return rows[: cfg.num_prompts] if cfg.num_prompts > 0 else rows


def run_best_of_n(cfg: BestOfNConfig, progress: bool = True) -> dict:
    """Sample, verify, write the run folder; returns results.json's content."""
    import torch

    from rlvr.data import DataError, encode_prompts
    from rlvr.models import check_model
    from rlvr.rollouts import Sampling, derive_seed, make_engine
    from rlvr.runlog import RunLogger
    from rlvr.verifiers import VerifierPool, load_verifier_file

    run_dir = cfg.run_dir
    if (run_dir / "results.json").exists():
        raise FileExistsError(f"{run_dir} already holds a best-of-n result; change name or seed")
    if not cfg.model.name_or_path:
        raise DataError("model.name_or_path: the checkpoint to sample from (a policy folder or hub id)")
    for path in cfg.verifier_files:
        load_verifier_file(path)
    rows = prompt_rows(cfg)
    tokenizer = check_model(cfg.model.name_or_path)
    ids = encode_prompts(rows, tokenizer, cfg.data.max_prompt_tokens, cfg.data.eval or "held-out")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    s = cfg.sampling
    engine = make_engine(
        s.engine, cfg.model.name_or_path, dtype=cfg.model.dtype, max_model_len=cfg.data.max_prompt_tokens + s.max_new_tokens,
        kv_cache_mb=s.kv_cache_mb, gpu_memory_utilization=s.gpu_memory_utilization, seed=cfg.seed,
    )
    chunk = 64
    texts, results = [], []
    try:
        with VerifierPool(cfg.verify.workers, cfg.verify.timeout_s, cfg.verifier_files, cfg.verify.max_memory_mb) as pool:
            starts = range(0, len(rows), chunk)
            if progress:
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc=f"{cfg.name}: {cfg.n} samples x {len(rows)} prompts", unit=f"x{chunk} prompts")
            for start in starts:
                part = ids[start : start + chunk]
                sampling = Sampling(s.max_new_tokens, s.temperature, s.top_p, seed=derive_seed(cfg.seed, start))
                rollouts = engine.generate(part, sampling, cfg.n)
                scored = pool.score([r.text for r in rollouts], [row for row in rows[start : start + chunk] for _ in range(cfg.n)])
                texts += [r.text for r in rollouts]
                results += scored.results
    finally:
        engine.close()

    n = cfg.n
    passed = [[results[i * n + j].score >= cfg.pass_threshold for j in range(n)] for i in range(len(rows))]
    keys = [[answer_key(results[i * n + j], texts[i * n + j]) for j in range(n)] for i in range(len(rows))]
    metrics = best_of_n_metrics(passed, keys, cfg.k)
    by_verifier: dict[str, dict[str, float]] = {}
    for name in sorted({r["verifier"] for r in rows}):
        sel = [i for i, r in enumerate(rows) if r["verifier"] == name]
        by_verifier[name] = best_of_n_metrics([passed[i] for i in sel], [keys[i] for i in sel], cfg.k)
    with (run_dir / "samples.jsonl").open("w") as f:
        for i in range(len(rows)):
            for j in range(n):
                r = results[i * n + j]
                f.write(json.dumps({"prompt_index": i, "sample": j, "completion": texts[i * n + j], "score": r.score,
                                    "status": r.status, "answer": keys[i][j]}) + "\n")
    result = {
        "name": cfg.name,
        "model": cfg.model.name_or_path,
        "prompts": len(rows),
        "n": n,
        "temperature": s.temperature,
        "metrics": metrics,
        "by_verifier": by_verifier,
        "mean_score": float(torch.tensor([r.score for r in results]).mean()),
        "status_counts": dict(Counter(r.status for r in results)),
    }
    log = RunLogger(run_dir)
    log.scalars(0, {f"bestofn/{k}": v for k, v in metrics.items()}
                | {f"bestofn/{name}/{k}": v for name, m in by_verifier.items() for k, v in m.items()})
    log.close()
    plot(result, cfg.k, run_dir / "bestofn.png")
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    print_table(result, cfg.k)
    return result


def plot(result: dict, ks: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    m = result["metrics"]
    ax.plot(ks, [m[f"pass@{k}"] for k in ks], marker="o", label="pass@k (verifier picks)")
    ax.plot(ks, [m[f"maj@{k}"] for k in ks], marker="s", label="maj@k (majority vote)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k")
    ax.set_ylabel("held-out pass rate")
    ax.set_title(f"{result['name']}: {result['prompts']} prompts, n={result['n']}, T={result['temperature']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(result: dict, ks: tuple[int, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    parts = [("", result["metrics"])]
    if len(result["by_verifier"]) > 1:
        parts += [(f"{name} ", m) for name, m in result["by_verifier"].items()]
    table = Table(title=f"{result['name']}: best-of-n on {result['prompts']} prompts (n={result['n']}, T={result['temperature']})")
    table.add_column("k", justify="right")
    for label, _ in parts:
        table.add_column(f"{label}pass@k", justify="right")
        table.add_column(f"{label}maj@k", justify="right")
    for k in ks:
        table.add_row(str(k), *[f"{m[f'{w}@{k}']:.3f}" for _, m in parts for w in ("pass", "maj")])
    Console(file=sys.stderr).print(table)
