"""Synthetic tasks, deterministic in their seed, in the RLVR row format.

Each task returns `(train_rows, heldout_rows)`; a row is `{"prompt", "ground_truth", "verifier"}`.
Held-out prompts are combinations never seen in training, so passing them needs the policy
to read the instruction, not to memorise prompts.
"""

from __future__ import annotations

import json
import random
from typing import Callable

TASKS: dict[str, Callable[..., tuple[list[dict], list[dict]]]] = {}


def register_task(name: str):
    def deco(fn):
        if name in TASKS:
            raise ValueError(f"task {name!r} already registered")
        TASKS[name] = fn
        return fn

    return deco


def make_task(name: str, num_train: int, num_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name](num_train=num_train, num_eval=num_eval, seed=seed)


KINDS = {
    "digits": [str(d) for d in range(10)],
    "letters": list("abcdefghij"),
    "symbols": list("+-*/=<>#@%"),
}
TOPICS = (
    "apple river stone cloud tiger piano garden rocket candle forest mirror bridge "
    "winter castle pencil ocean"
).split()
MIN_WORDS = 4


def kinds_vocabulary() -> list[str]:
    """Every word the `kinds` task can show or expect (the tiny tokenizer's training text)."""
    words = [w for ws in KINDS.values() for w in ws] + list(KINDS) + TOPICS + ["write", "only", ":"]
    return words


@register_task("kinds")
def kinds_task(num_train: int, num_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """`<topic> <topic> : write only <kind>`; the completion must be >= 4 words, all of that kind.

    Scored by `allowed_words`: the fraction of words of the right kind, so a policy that
    starts from random weights (about 1 word in 6 right) has a signal to climb. A completion
    passes when every word is of the kind. Every fifth (topic, topic) pair is held out.
    """
    combos = [(a, b, k) for a in TOPICS for b in TOPICS for k in KINDS]
    heldout_pairs = {(a, b) for i, a in enumerate(TOPICS) for j, b in enumerate(TOPICS) if (i * 7 + j * 3) % 5 == 0}
    train_combos = [c for c in combos if (c[0], c[1]) not in heldout_pairs]
    eval_combos = [c for c in combos if (c[0], c[1]) in heldout_pairs]

    def row(a: str, b: str, kind: str) -> dict:
        return {
            "prompt": f"{a} {b} : write only {kind}",
            "ground_truth": json.dumps({"allowed": KINDS[kind], "min_words": MIN_WORDS}),
            "verifier": "allowed_words",
        }

    rng = random.Random(seed)
    train = [row(*rng.choice(train_combos)) for _ in range(num_train)]
    eval_rng = random.Random(seed + 1)
    eval_combos = eval_rng.sample(eval_combos, min(num_eval, len(eval_combos)))
    return train, [row(*c) for c in eval_combos]
