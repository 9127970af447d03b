"""Best-of-N (pass@k, maj@k) and rejection-sampling fine-tuning: the pieces by hand, maj@k on
real model solutions, and the commands on a partly trained tiny-task checkpoint."""

import json
import math

import pytest
import torch

from conftest import DATA
from numerics import assert_same_gradients, grads_of
from rlvr.baselines.bestofn import answer_key, best_of_n_metrics, majority_passes, pass_at_k
from rlvr.baselines.rft import select_verified, sft_step
from rlvr.rollouts import Rollout
from rlvr.verifiers import VerifierPool, VerifierResult


def test_pass_at_k_by_hand():
    # n=4, c=1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1
    assert [pass_at_k(4, 1, k) for k in (1, 2, 4)] == pytest.approx([0.25, 0.5, 1.0])
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))


def test_majority_vote_by_hand():
    # answers 7, 5, 7, None: 7 wins (2 votes); it passes where its sample passes
    assert majority_passes(["7", "5", "7", None], [True, False, True, False])
    assert not majority_passes(["7", "5", "7", None], [False, True, False, False])
    # a tie goes to the answer seen first; no votes at all: fails
    assert majority_passes(["5", "7"], [True, False]) and not majority_passes(["7", "5"], [False, True])
    assert not majority_passes([None, None], [False, False])
    passed = [[True, False, False, False], [False, True, True, False]]
    keys = [["1", "2", "2", "3"], ["9", "4", "4", None]]
    m = best_of_n_metrics(passed, keys, (1, 2, 4))
    # pass@1 = (1/4 + 2/4) / 2; pass@2 = ((1 - 3/6) + (1 - 1/6)) / 2
    assert m["pass@1"] == pytest.approx(0.375) and m["pass@2"] == pytest.approx((0.5 + 5 / 6) / 2)
    # maj@4: prompt 0 votes "2" (wrong), prompt 1 votes "4" (right) -> 0.5
    # maj@2 over disjoint pairs: prompt 0: ("1","2") -> "1" passes, ("2","3") -> "2" fails = 0.5;
    #   prompt 1: ("9","4") -> "9" fails, ("4",None) -> "4" passes = 0.5
    assert m["maj@4"] == 0.5 and m["maj@2"] == 0.5 and m["maj@1"] == m["pass@1"]


def test_answer_key():
    assert answer_key(VerifierResult(1.0, {"status": "ok", "extracted": "18"}), "so #### 18") == "18"
    assert answer_key(VerifierResult(0.0, {"status": "wrong"}), "  a  b\nc ") == "a b c"
    assert answer_key(VerifierResult.fail("unparsable", "no number"), "words") is None


def test_pass_and_majority_on_real_model_solutions():
    """GSM8K test: the four published model solutions of each problem as 4 samples. pass@1 and
    pass@4 must match the published is_correct labels exactly; maj@4 votes on the numbers the
    gsm8k verifier extracts."""
    models = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
    examples = [json.loads(line) for line in (DATA / "gsm8k" / "example_model_solutions.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert [e["question"] for e in examples] == [t["question"] for t in test]
    rows = [{"ground_truth": t["answer"], "verifier": "gsm8k"} for t in test for _ in models]
    texts = [e[m]["solution"] for e in examples for m in models]
    with VerifierPool(2) as pool:
        results = pool.score(texts, rows).results
    n = len(models)
    passed = [[results[i * n + j].score == 1.0 for j in range(n)] for i in range(len(examples))]
    keys = [[answer_key(results[i * n + j], texts[i * n + j]) for j in range(n)] for i in range(len(examples))]
    labels = [[bool(e[m]["is_correct"]) for m in models] for e in examples]
    assert passed == labels
    got = best_of_n_metrics(passed, keys, (1, 2, 4))
    assert got["pass@1"] == pytest.approx(sum(map(sum, labels)) / (n * len(examples)))
    assert got["pass@4"] == pytest.approx(sum(any(lab) for lab in labels) / len(examples))
    assert got["maj@1"] == got["pass@1"]
    assert got["pass@1"] < got["maj@4"] < got["pass@4"]  # voting helps, but less than an oracle pick
    # where all four agree on correctness, the vote must agree too
    for p, k in zip(passed, keys):
        if all(p) or not any(p):
            assert majority_passes(k, p) == all(p)


def _rollout(prompt, completion, text):
    return Rollout(prompt, completion, text, [0.0] * len(completion), "stop")


def test_select_verified_keeps_distinct_passing_samples():
    rs = [_rollout([1], [5], t) for t in ("a", "b", "a", "c", "x", "y", "z", "w")]
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    got = select_verified(rs, scores, n=4, keep=2, threshold=1.0)
    assert [(p, r.text) for p, r in got] == [(0, "a"), (0, "c"), (1, "w")]  # "a" twice is kept once
    assert [(p, r.text) for p, r in select_verified(rs, scores, 4, 1, 1.0)] == [(0, "a"), (1, "w")]


def test_sft_step_is_the_mean_nll_of_completion_tokens(tiny_model_dir):
    from rlvr.models import load_policy

    policy = load_policy(tiny_model_dir)
    rs = [_rollout([3, 4, 5], [6, 7], "x"), _rollout([8], [9, 10, 11], "y"), _rollout([3, 3], [12], "z")]
    policy.zero_grad()
    loss, tokens = sft_step(policy, rs, pad_id=0, micro_batch_size=2, device=torch.device("cpu"))
    grads = grads_of(policy)
    # by hand: each row alone, no padding; log p of every completion token given everything before it
    nll = 0.0
    with torch.no_grad():
        for r in rs:
            ids = torch.tensor([r.prompt_ids + r.completion_ids])
            logp = torch.log_softmax(policy(input_ids=ids).logits[0].float(), -1)
            P = len(r.prompt_ids)
            nll -= sum(logp[P - 1 + t, tok].item() for t, tok in enumerate(r.completion_ids))
    # a padded batch against rows alone: float32 reordering noise (~1e-7 of the loss); 1e-5 is 100x that
    assert tokens == 6 and loss == pytest.approx(nll / 6, rel=1e-5)
    # micro-batches of 2 accumulate to the gradient of one pass over all 3 rows
    policy.zero_grad()
    sft_step(policy, rs, pad_id=0, micro_batch_size=3, device=torch.device("cpu"))
    assert_same_gradients(grads, grads_of(policy), where="micro-batches of 2 vs 3")
