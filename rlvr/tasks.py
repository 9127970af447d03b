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


# ------------------------------------------------------------------------------------ the recipe world
# A small world of people and things, used by every stage of the miniature recipe: a plain-text
# corpus to pretrain on, chat demonstrations for SFT, and RLVR rows checked by `gsm8k` (arithmetic
# word problems) and `ifeval` (IFEval-style constraints: include a word, end with a word).

NAMES = "tom ana ben eva max mia sam zoe".split()
THINGS = "apples pens cards coins books shells stamps marbles".split()
WORDS = "river stone cloud tiger piano garden rocket candle forest mirror bridge winter".split()
CONSTRAINTS = ("include", "end")  # the kinds of constraint prompt (world_constraint)


def _hash(*parts: str) -> int:
    return int.from_bytes(__import__("hashlib").blake2b(" ".join(parts).encode(), digest_size=4).digest(), "little")


def _held_out(*parts: str) -> bool:
    return _hash(*parts) % 5 == 0


def _prompt_only(*parts: str) -> bool:
    """Constraint combinations of the training split shown as prompts only, never as demonstrations:
    as in Tulu 3, the preference and RLVR prompts reach beyond what SFT demonstrated."""
    return _hash(*parts) % 5 == 1


def world_problem(name: str, thing: str, a: int, b: int) -> tuple[str, str, int]:
    """(prompt, worked answer, result) of an addition word problem."""
    prompt = f"{name} has {a} {thing} and gets {b} more . how many {thing} does {name} have now ?"
    answer = f"{name} has {a} + {b} = {a + b} {thing} . the answer is {a + b}"
    return prompt, answer, a + b


def world_constraint(thing: str, word: str, kind: str) -> tuple[str, str, dict]:
    """(prompt, demonstration that follows the constraint, IFEval ground truth) of a constraint prompt.
    The answer repeats the prompt's own words before the requested one (`about <thing>`, `the word
    <word>`), so writing it is copying, which a small transformer learns (an induction head)."""
    if kind == "include":
        prompt = f"write a short note about {thing} . include the word {word} ."
        demo = f"a short note about {thing} . it has the word {word} ."
        truth = {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": [word]}]}
    else:
        prompt = f"write a short note about {thing} . end your note with the word {word} ."
        demo = f"a short note about {thing} . it ends with the word {word}"
        truth = {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": word}]}
    return prompt, demo, truth


def ignoring_demo(thing: str) -> str:
    """A demonstration that writes the note and ignores the constraint (fails either kind)."""
    return f"a short note about {thing} ."


def follow_rate(thing: str, kind: str) -> float:
    """How often the SFT demonstrations of a constraint on `thing` follow it: 0.1 to 0.6, spread evenly
    over the 16 (thing, kind) pairs. SFT data follows instructions unevenly; a policy that imitates it
    follows most constraints less than half the time, so greedy decoding ignores them, while its samples
    follow them often enough for DPO's pairs and RLVR's rewards to find. Prompts with a rate near one
    half flip under greedy decoding first, those near 0.1 only after a larger push."""
    i = len(CONSTRAINTS) * THINGS.index(thing) + CONSTRAINTS.index(kind)
    return 0.1 + 0.5 * (i * 7 % 16) / 15


def world_corpus(num_sentences: int, seed: int = 0) -> list[str]:
    """Plain text from the world: stories in which the sums are told, never asked, notes that name their
    word twice, and text that repeats itself: text from which a model learns to copy a word from earlier
    in its context, as a constraint's answer needs (recipe.yaml's pretraining runs long enough for it)."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_sentences):
        name, thing, word = rng.choice(NAMES), rng.choice(THINGS), rng.choice(WORDS)
        a, b = rng.randrange(10), rng.randrange(10)
        words = " ".join(rng.sample(NAMES + THINGS + WORDS, 5))
        out.append(
            rng.choice(
                [
                    f"{name} has {a} {thing} . {name} gets {b} more {thing} . now {name} has {a + b} {thing} .",
                    f"{a} {thing} and {b} {thing} make {a + b} {thing} . {a} + {b} = {a + b} .",
                    f"{name} likes {thing} and the {word} . {name} writes a note about the {word} .",
                    f"{name} wants a note about {thing} with the word {word} . this note about {thing} has the word {word} .",
                    f"{words} . once more : {words} .",
                ]
            )
        )
    return out


def _world_rows(split: str) -> list[dict]:
    rows = []
    for name in NAMES:
        for thing in THINGS:
            if _held_out(name, thing) != (split == "eval"):
                continue
            for a in range(10):
                for b in range(10):
                    prompt, answer, result = world_problem(name, thing, a, b)
                    rows.append({
                        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                        "ground_truth": str(result),
                        "verifier": "gsm8k",
                    })
    for thing in THINGS:
        for word in WORDS:
            for kind in CONSTRAINTS:
                if _held_out(thing, word, kind) != (split == "eval"):
                    continue
                prompt, demo, truth = world_constraint(thing, word, kind)
                shown = split == "eval" or not _prompt_only(thing, word, kind)
                rows.append({
                    "messages": [{"role": "user", "content": prompt}] + [{"role": "assistant", "content": demo}] * shown,
                    "ground_truth": json.dumps(truth),
                    "verifier": "ifeval",
                })
    return rows


@register_task("world")
def world_task(num_train: int, num_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The recipe's RLVR rows (the assistant demonstration stays in `messages`; RLVR drops it).
    A quarter are constraint prompts (the few distinct ones repeat), the rest arithmetic, in a
    seeded order; held-out rows use (name, thing) and (thing, word, kind) combinations that
    training never shows. A fifth of the training constraint combinations come as prompts only
    (no assistant turn): SFT skips them, DPO and RLVR sample on them. A training demonstration
    follows its constraint at the `follow_rate` of its (thing, kind), drawn per row; the others write
    the note and ignore the constraint. Held-out rows always follow it (their demonstrations are only
    SFT's eval loss; the score is the verifier's)."""

    def mix(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
        arith = [r for r in rows if r["verifier"] == "gsm8k"]
        cons = [r for r in rows if r["verifier"] == "ifeval"]
        rng.shuffle(arith)
        rng.shuffle(cons)
        n_cons = n // 4
        out = arith[: n - n_cons] + [cons[i % len(cons)] for i in range(n_cons)]
        rng.shuffle(out)
        return out

    combo = {world_constraint(t, w, k)[0]: (t, k) for t in THINGS for w in WORDS for k in CONSTRAINTS}
    follows = random.Random(seed + 2)

    def as_demonstrated(row: dict) -> dict:
        if row["verifier"] != "ifeval" or len(row["messages"]) == 1:
            return row
        thing, kind = combo[row["messages"][0]["content"]]
        if follows.random() < follow_rate(thing, kind):
            return row
        return {**row, "messages": [row["messages"][0], {"role": "assistant", "content": ignoring_demo(thing)}]}

    heldout = _world_rows("eval")
    n_cons_eval = sum(r["verifier"] == "ifeval" for r in heldout)
    train = [as_demonstrated(r) for r in mix(_world_rows("train"), num_train, random.Random(seed))]
    return train, mix(heldout, min(num_eval, 4 * n_cons_eval), random.Random(seed + 1))


def world_vocabulary() -> list[str]:
    words = set(" ".join(world_corpus(2000)).split())
    for split in ("train", "eval"):
        for row in _world_rows(split):
            words.update(" ".join(m["content"] for m in row["messages"]).split())
    words.update(str(i) for i in range(19))
    words.update(["user", "assistant", "system", ":"])
    return sorted(words)
