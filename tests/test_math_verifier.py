"""`math` and `gsm8k`: tables of (completion, ground truth, expected), adversarial rows, real data."""

import json
import time

import pytest

from conftest import DATA, REPO
from rlvr.verifiers import VerifierPool, get_verifier
from rlvr.verifiers.math_answers import extract_answer, normalize, parse_number

math_v = get_verifier("math")


@pytest.mark.parametrize(
    "completion, gold, score",
    [
        # integers, decimals, separators
        (r"so the total is \boxed{1,000}.", "1000", 1),
        (r"\boxed{1000}", "1,000", 1),
        (r"\boxed{0.5}", ".5", 1),
        (r"\boxed{-3}", "-3", 1),
        (r"\boxed{3.0}", "3", 1),
        (r"\boxed{3.01}", "3", 0),
        # fractions
        (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", 1),
        (r"\boxed{3/4}", r"\frac34", 1),
        (r"\boxed{0.75}", r"\frac{3}{4}", 1),
        (r"\boxed{-\frac{1}{2}}", "-0.5", 1),
        (r"\boxed{2\frac{1}{2}}", r"\frac{5}{2}", 1),
        (r"\boxed{\frac{2}{3}}", r"\frac{3}{4}", 0),
        # percentages, scientific notation
        (r"\boxed{50\%}", "50", 1),
        (r"\boxed{0.5}", r"50\%", 1),
        (r"\boxed{1.5 \times 10^{3}}", "1500", 1),
        (r"\boxed{2e3}", "2000", 1),
        # roots, pi, symbolic
        (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1),
        (r"\boxed{\sqrt2}", r"\sqrt{2}", 1),
        (r"\boxed{2\pi}", r"2 \pi", 1),
        (r"\boxed{\pi}", "3.14", 0),
        (r"\boxed{x^2+2x+1}", "(x+1)^2", 1),
        (r"\boxed{p-q}", "-q+p", 1),
        (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{1}{\sqrt{3}}", 1),
        # degrees, units
        (r"\boxed{30^\circ}", "30", 1),
        (r"\boxed{30}", r"30^{\circ}", 1),
        (r"\boxed{12 \text{ inches}}", "12", 1),
        (r"\boxed{5\mbox{ cm}^2}", "5", 1),
        (r"\boxed{\$18.90}", "18.90", 1),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", 1),
        (r"\boxed{Evelyn}", r"\text{Evelyn}", 1),
        # intervals: brackets matter
        (r"\boxed{(1, 2]}", "(1,2]", 1),
        (r"\boxed{(1,2)}", "(1,2]", 0),
        (r"\boxed{[-\sqrt{3}, \sqrt{3}]}", r"[-\sqrt3,\sqrt3]", 1),
        (r"\boxed{(-\infty, 0) \cup (1, \infty)}", r"(-\infty,0)\cup(1,\infty)", 1),
        (r"\boxed{(-\infty, 0] \cup (1, \infty)}", r"(-\infty,0)\cup(1,\infty)", 0),
        # tuples (ordered), sets and solution lists (unordered)
        (r"\boxed{(6,31,-1)}", "(6, 31, -1)", 1),
        (r"\boxed{(31,6,-1)}", "(6, 31, -1)", 0),
        (r"\boxed{\{1,2,3\}}", r"\{3,2,1\}", 1),
        (r"\boxed{-2, 1}", "1, -2", 1),
        (r"\boxed{1, 2}", "1, -2", 0),
        (r"\boxed{1}", "1, -2", 0),
        # equations
        (r"\boxed{x=3}", "3", 1),
        (r"\boxed{3}", "x = 3", 1),
        (r"\boxed{y = 2x + 1}", "y=2x+1", 1),
        (r"\boxed{x=4}", "3", 0),
        # matrices
        (r"\boxed{\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", 1),
        (r"\boxed{\begin{pmatrix} 1/2 & 2 \\ 3 & 4 \end{pmatrix}}", r"\begin{pmatrix}\frac12&2\\3&4\end{pmatrix}", 1),
        (r"\boxed{\begin{pmatrix} 1 & 2 \\ 4 & 3 \end{pmatrix}}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", 0),
        # multiple choice
        (r"\boxed{C}", r"\text{(C)}", 1),
        (r"\boxed{(C)}", "C", 1),
        (r"\boxed{B}", "(C)", 0),
        # extraction: last box, "the answer is", ####, last number
        (r"first \boxed{1} then \boxed{2}", "2", 1),
        (r"\fbox{7}", "7", 1),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", 1),
        ("so the answer is 12.", "12", 1),
        ("work...\n#### 15", "15", 1),
        ("I think it is 3 or maybe 4", "4", 0),  # a hedge between two values is no answer
        ("I think it is 3 or maybe 4", "3", 0),
        # where the answer is: the last statement wins; alternatives vs guesses; checks and corrections
        (r"\boxed{64}" "\n\nActually the question asks for the cube root, so the answer is 4.", "4", 1),
        (r"x = \boxed{3} or x = \boxed{-3}", r"\pm 3", 1),
        (r"\boxed{4} \boxed{5} \boxed{6}", "5", 0),
        ("So $x = 6$.\n\nCheck: $2(6) + 7 = 19$.", "6", 1),
        ("So the answer is 2/3... no wait, I mixed up the colours. It is 1/3.", r"\frac{2}{3}", 0),
        (r"The side length is \sqrt{3}.", r"\sqrt{3}", 1),
        ("Therefore, there are 24 ways to arrange the letters.", "24", 1),
        # solution sets, intervals, inequalities
        (r"$x = \pm 4$", "-4, 4", 1),
        (r"\boxed{1 \pm \sqrt{7}}", r"1+\sqrt{7}, 1-\sqrt{7}", 1),
        (r"$x \ge 2$", r"[2,\infty)", 1),
        (r"$x > 2$", r"[2,\infty)", 0),
        (r"\boxed{\{-3, 3\}}", "[-3, 3]", 0),
        (r"$-1 < x \le 4$", "(-1,4]", 1),
        (r"$5 \ge x > 2$", "(2,5]", 1),
        (r"\boxed{(2,\infty)\cup(-\infty,1)}", r"(-\infty,1)\cup(2,\infty)", 1),
        # numbers: repeating and rounded decimals, separators, money, units
        (r"\boxed{0.\overline{3}}", r"\frac{1}{3}", 1),
        (r"\boxed{0.6667}", r"\frac{2}{3}", 1),
        (r"\boxed{0.67}", r"\frac{2}{3}", 0),
        ("There are 1,000,000,000 of them.", "10^{9}", 1),
        (r"\boxed{40 \text{ km/h}}", "40", 1),
        (r"\boxed{\frac{1}{3^{41}}}", r"\frac{1}{3^{40}}", 0),  # exact: no float tolerance on tiny values
        # structures
        (r"\boxed{(3,-1,2)}", r"\begin{pmatrix} 3 \\ -1 \\ 2 \end{pmatrix}", 1),
        (r"\boxed{\sqrt{-1}}", "i", 1),
        ("**Answer: (B)**", r"\text{(B)}", 1),
        ("So the answer is (B) or (D).", r"\text{(B)}", 0),
        # the ground truth may be a whole solution with a box
        (r"\boxed{6}", r"so we get \boxed{6}.", 1),
    ],
)
def test_math_table(completion, gold, score):
    r = math_v(completion, gold)
    assert r.score == score, r.info
    assert r.status == ("ok" if score else "wrong")


def test_math_strict_has_no_last_number_fallback():
    assert get_verifier("math_strict")("I think it is 4", "4").status == "unparsable"
    assert get_verifier("math_strict")(r"\boxed{4}", "4").score == 1.0
    assert math_v("I think it is 4", "4", last_number=False).status == "unparsable"


def test_helpers():
    got = extract_answer(r"a \boxed{\frac{1}{2}} b")
    assert (got.answer, got.how) == (r"\frac{1}{2}", "boxed")
    assert extract_answer(r"unclosed \boxed{12", last_number=False).answer is None
    assert normalize(r"\left( 1, \dfrac{1}{2} \right)") == r"(1,\frac{1}{2})"
    assert parse_number("1,234.5") == parse_number("2469/2")
    assert parse_number("12%") * 100 == 12
    assert parse_number("1,2") is None


# Adversarial rows: each comes back within the time limit, scores 0 with a status, executes nothing.
ADVERSARIAL = [
    ("", "5", "unparsable"),
    ("   \n\t  ", "5", "unparsable"),
    ("1" * 2_000_000, "5", "unparsable"),  # megabyte-long output
    (r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "2", None),  # deeply nested braces
    (r"the result is \boxed{12", "12", None),  # unclosed box: falls back to the last number (12) -> scored
    (r"\boxed{10^{10^{10}}}", "5", "unparsable"),
    (r"\boxed{1000000!}", "5", "unparsable"),
    (r"\boxed{2^{999999999}}", "5", "unparsable"),
    (r"\boxed{__import__('os').system('touch /tmp/rlvr_pwned')}", "5", None),
    ("the answer is __import__('os').system('touch /tmp/rlvr_pwned')", "5", None),
    (r"\boxed{\frac{1}{0}}", "5", None),
    # at the size the pool's parent process decides without a worker (20,000 characters)
    ("the answer" + " " * 19_000 + "x", "5", "unparsable"),
    (r"\boxed{" * 2_800, "5", "unparsable"),
    ("$1 aa " * 3_000, "5", None),
    (r"\boxed{" + r"\pm 1" * 300 + "}", "5", None),
]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout_s=5.0) as p:
        yield p


@pytest.mark.parametrize("verifier", ["math", "math_strict", "gsm8k"])
def test_adversarial_rows_fail_closed_in_time(pool, verifier, tmp_path):
    import os

    marker = "/tmp/rlvr_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    completions = [c for c, _, _ in ADVERSARIAL]
    rows = [{"ground_truth": g, "verifier": verifier} for _, g, _ in ADVERSARIAL]
    t = time.monotonic()
    batch = pool.score(completions, rows)
    elapsed = time.monotonic() - t
    assert elapsed < 5.0 * len(rows) / 2 + 5
    for (completion, _, status), r in zip(ADVERSARIAL, batch.results):
        if completion.startswith(r"the result is \boxed{12"):
            continue
        assert r.score == 0.0, (completion[:60], r)
        if status and verifier != "gsm8k":
            assert r.status == status, (completion[:60], r)
        assert r.status in ("wrong", "unparsable", "timeout", "error")
    assert not os.path.exists(marker), "model output was executed"


def test_math500_reference_solutions(pool):
    """Every MATH-500 reference solution against its own answer, and against the next problem's."""
    rows = [json.loads(line) for line in (DATA / "math" / "math500_test.jsonl").read_text().splitlines()]
    own = pool.score([r["solution"] for r in rows], [{"ground_truth": r["answer"], "verifier": "math"} for r in rows])
    assert sum(own.scores) / len(rows) >= 0.99
    other = [{"ground_truth": rows[(i + 1) % len(rows)]["answer"], "verifier": "math"} for i in range(len(rows))]
    cross = pool.score([r["solution"] for r in rows], other)
    assert sum(cross.scores) / len(rows) <= 0.01


def test_gsm8k_reference_and_real_model_solutions(pool):
    test = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    full = [{"ground_truth": r["answer"], "verifier": "gsm8k"} for r in test]
    bare = [{"ground_truth": r["answer"].split("####")[1].strip(), "verifier": "gsm8k"} for r in test]
    assert pool.score([r["answer"] for r in test], full).scores == [1.0] * len(test)
    assert pool.score([r["answer"] for r in test], bare).scores == [1.0] * len(test)
    # real model outputs with published correctness labels: the verifier agrees with every label
    examples = [json.loads(line) for line in (DATA / "gsm8k" / "example_model_solutions.jsonl").read_text().splitlines()]
    assert pool.score([e["ground_truth"] for e in examples], full).scores == [1.0] * len(test)  # "A: <n>" style
    for key in ("6b_finetuning", "175b_verification"):
        got = pool.score([e[key]["solution"] for e in examples], full).scores
        assert [s == 1.0 for s in got] == [bool(e[key]["is_correct"]) for e in examples]


@pytest.mark.parametrize(
    "completion, gold, score",
    [
        ("She pays $1,200 in total.\n#### 1,200", "#### 1200", 1),
        ("#### $18.", "18", 1),
        ("The answer is 18 dollars.", "18", 1),
        ("so 3 + 4 = 7 apples", "7", 1),
        ("A: 42", "Janet ... <<6*7=42>>42\n#### 42", 1),
        ("#### 18.00", "18", 1),
        ("#### 17", "18", 0),
        ("the answer is -5", "-5", 1),
        ("no digits at all", "5", 0),
    ],
)
def test_gsm8k_table(completion, gold, score):
    assert get_verifier("gsm8k")(completion, gold).score == score


# ------------------------------------------------------------------------------------ model output, as it comes

MODEL_OUTPUTS = REPO / "tests" / "data" / "math_model_outputs.jsonl"


def test_math_on_rows_shaped_like_real_model_output():
    """Hand-written completions in the shapes real models give (no box, answers in the last sentence,
    alternatives vs guesses, \\pm, inequalities, repeating and rounded decimals, units, choices, traps),
    each with a verdict and a reason. The families are in the file; math-verify's verdicts on the same
    rows are in `make bench`."""
    rows = [json.loads(line) for line in MODEL_OUTPUTS.read_text().splitlines()]
    assert len(rows) >= 300
    verdicts = [(r, math_v(r["completion"], r["ground_truth"]).score >= 1.0) for r in rows]
    false_positives = [(r["reason"], r["ground_truth"]) for r, got in verdicts if got and not r["expected"]]
    misses = [(r["family"], r["reason"], r["ground_truth"]) for r, got in verdicts if got != r["expected"]]
    assert not false_positives, false_positives
    assert 1 - len(misses) / len(rows) >= 0.98, misses


def test_the_fast_path_agrees_with_the_full_check():
    """What `fast` decides without sympy (in the pool's parent process) is what the full check says;
    it decides nearly all of MATH-500's reference solutions."""
    rows = [json.loads(line) for line in MODEL_OUTPUTS.read_text().splitlines()]
    math500 = [json.loads(line) for line in (DATA / "math" / "math500_test.jsonl").read_text().splitlines()]
    pairs = [(r["completion"], r["ground_truth"]) for r in rows] + [(r["solution"], r["answer"]) for r in math500]
    decided = 0
    for completion, gold in pairs:
        quick = math_v.fast(completion, gold)
        if quick is not None:
            decided += 1
            full = math_v(completion, gold)
            assert (quick.score, quick.status) == (full.score, full.status), (gold, completion[-80:])
    assert sum(math_v.fast(r["solution"], r["answer"]) is not None for r in math500) >= 0.95 * len(math500)
