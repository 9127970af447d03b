"""Held-out evaluation of checkpoints with the verifiers: greedy pass@1, and pass@k at temperature 1.

All checkpoints of a recipe share one architecture and tokenizer, so one vLLM engine serves them
all: each checkpoint's weights are pushed in with `load_weights` (prefix cache reset) in turn.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlvr.baselines.bestofn import pass_at_k
from rlvr.config import VerifyConfig
from rlvr.data import encode_prompts
from rlvr.models import load_policy, load_tokenizer
from rlvr.rollouts import Sampling, make_engine
from rlvr.verifiers import VerifierPool


def evaluate_checkpoints(
    checkpoints: dict[str, str],
    rows: list[dict],
    k: int = 4,
    max_new_tokens: int = 24,
    seed: int = 0,
    engine_kind: str = "vllm",
    verify: VerifyConfig = VerifyConfig(),
    verifier_files: tuple[str, ...] = (),
    max_prompt_tokens: int = 64,
    pass_threshold: float = 1.0,
) -> dict[str, dict[str, float]]:
    """{label: {"pass@1": greedy pass rate, f"pass@{k}": ..., "score": mean greedy score, per verifier ...}}.
    The checkpoints share one engine, so they must share one tokenizer: one that does not is an error."""
    labels = list(checkpoints)
    first = checkpoints[labels[0]]
    tokenizer = load_tokenizer(first)
    for label in labels[1:]:
        if load_tokenizer(checkpoints[label]).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{checkpoints[label]} has another tokenizer than {first}: they cannot be evaluated in one engine")
    prompt_ids = encode_prompts(rows, tokenizer, max_prompt_tokens, "eval")
    engine = make_engine(engine_kind, first, max_model_len=max_prompt_tokens + max_new_tokens, seed=seed)
    results: dict[str, dict[str, float]] = {}
    try:
        with VerifierPool(verify.workers, verify.timeout_s, verifier_files, verify.max_memory_mb) as pool:
            for i, label in enumerate(labels):
                if i:
                    engine.load_weights(load_policy(checkpoints[label]).state_dict().items())
                greedy = engine.generate(prompt_ids, Sampling(max_new_tokens, temperature=0.0), 1)
                g = pool.score([r.text for r in greedy], rows)
                sampled = engine.generate(prompt_ids, Sampling(max_new_tokens, 1.0, seed=seed), k)
                s = pool.score([r.text for r in sampled], [row for row in rows for _ in range(k)])
                passes = torch.tensor(s.scores).view(len(rows), k) >= pass_threshold
                m = {
                    "pass@1": sum(x >= pass_threshold for x in g.scores) / len(rows),
                    f"pass@{k}": sum(pass_at_k(k, int(c), k) for c in passes.sum(1)) / len(rows),
                    "score": sum(g.scores) / len(rows),
                }
                for key, v in g.metrics(pass_threshold, prefix="greedy").items():
                    if key.endswith("pass_rate"):
                        m[key.removeprefix("greedy/").replace("/pass_rate", "/pass@1")] = v
                m["sample"] = f"{rows[0].get('prompt') or rows[0]['messages'][-1]['content']} -> {greedy[0].text.strip()}"
                results[label] = m
    finally:
        engine.close()
    return results


def plot_stages(results: dict[str, dict[str, float]], rl_seeds: dict[str, float], path: Path, k: int) -> None:
    """Bars of pass@1 and pass@k per stage; RLVR's bar is the mean over seeds, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], [results[s]["pass@1"] for s in labels], width=0.4, label="greedy pass@1")
    ax.bar([i + 0.2 for i in x], [results[s][f"pass@{k}"] for s in labels], width=0.4, label=f"pass@{k} (T=1)")
    if rl_seeds:
        i = labels.index("rlvr")
        ax.scatter([i - 0.2] * len(rl_seeds), list(rl_seeds.values()), color="black", s=14, zorder=3, label="RLVR seeds")
    ax.set_xticks(list(x), labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out pass rate")
    ax.set_title("held-out verifier score by stage")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
