"""Advantage baselines and DAPO options against hand-computed values, the identities between
the baselines, and dynamic sampling on random reward patterns."""

import pytest
import torch

from rlvr.baselines import BASELINES, compute_advantages
from rlvr.baselines.dapo import overlong_penalty
from rlvr.baselines.group import GROUP_ADVANTAGES
from rlvr.config import AlgoConfig
from rlvr.trainer import collect_rollouts

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])  # two groups of four
G = torch.tensor([0, 0, 0, 0, 7, 7, 7, 7])
M = torch.ones(8, 3)


def first(adv):
    return adv[:, 0].tolist()


def test_by_hand():
    # group 0: rewards 1, 0, 0, 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350
    # group 7: rewards 1, 1, 0, 0.5: mean 0.625, deviations .375 .375 -.625 -.125, std sqrt(0.6875 / 3) = 0.478714
    assert first(GROUP_ADVANTAGES["dr_grpo"](R, G, M)) == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.375, 0.375, -0.625, -0.125])
    assert first(GROUP_ADVANTAGES["grpo"](R, G, M, eps=0.0)) == pytest.approx(
        [0.866025, -0.866025, -0.866025, 0.866025, 0.783349, 0.783349, -1.305582, -0.261116], abs=1e-5
    )
    # RLOO, first sample of group 0: 1 - mean(0, 0, 1) = 2/3
    assert first(GROUP_ADVANTAGES["rloo"](R, G, M))[0] == pytest.approx(2 / 3)
    assert first(GROUP_ADVANTAGES["none"](R, G, M)) == pytest.approx(R.tolist())


def test_identities():
    centred = GROUP_ADVANTAGES["dr_grpo"](R, G, M)
    # RLOO = k / (k - 1) * the mean-centred reward (k = 4)
    assert GROUP_ADVANTAGES["rloo"](R, G, M) == pytest.approx(centred * 4 / 3)
    # GRPO and Dr. GRPO differ exactly by the per-group std
    std = torch.tensor([0.577350] * 4 + [0.478714] * 4)[:, None]
    assert GROUP_ADVANTAGES["grpo"](R, G, M, eps=0.0) == pytest.approx(centred / std, abs=1e-5)


def test_padding_and_constant_groups():
    mask = torch.tensor([[1.0, 1.0, 0.0]] * 8)
    adv = GROUP_ADVANTAGES["grpo"](R, G, mask)
    assert adv[:, 2].abs().sum() == 0  # padding gets nothing
    same = torch.ones(4)
    assert GROUP_ADVANTAGES["grpo"](same, torch.zeros(4), torch.ones(4, 2)).abs().max() == 0  # zero variance: zero advantage


def test_reinforce_pp_by_hand():
    # per-token rewards (k1 KL on every token, score on the last); row 1 is padded after 2 tokens
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.2, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # returns-to-go: row 0: 0.9 0.9 1.0, row 1: 0.2 0.0; token mean 0.6, deviations .3 .3 .4 -.4 -.6,
    # unbiased variance 0.86 / 4 = 0.215, std 0.463681
    adv, returns = compute_advantages("reinforce_pp", rewards, torch.tensor([0, 1]), None, mask)
    assert returns is None
    assert adv.tolist() == [
        pytest.approx([0.646997, 0.646997, 0.862662], abs=1e-5),
        pytest.approx([-0.862662, -1.293993, 0.0], abs=1e-5),
    ]


def test_registry_and_critic():
    assert {n for n, b in BASELINES.items() if b.needs_critic} == {"gae"}
    assert {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "none"} <= set(BASELINES)
    # a sequence baseline sees each row's summed reward: score on the last token minus the KL terms
    rewards = torch.zeros(8, 3)
    rewards[:, 2] = R
    rewards[:, 0] = -0.25  # the same KL on every row shifts every reward, not the group advantages
    adv, returns = compute_advantages("grpo", rewards, G, None, M)
    assert returns is None
    assert adv == pytest.approx(GROUP_ADVANTAGES["grpo"](R, G, M), abs=1e-5)
    with pytest.raises(ValueError, match="needs the critic"):
        compute_advantages("gae", rewards, G, None, M)
    with pytest.raises(KeyError, match="available: dr_grpo, gae, grpo"):
        compute_advantages("ppo2", rewards, G, None, M)


def test_overlong_penalty_by_hand():
    # max 8, buffer 2: lengths up to 6 free, 7 -> -0.5, 8 -> -1; factor 0.5 halves it
    lengths = torch.tensor([3, 6, 7, 8])
    assert overlong_penalty(lengths, 8, 2).tolist() == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(lengths, 8, 2, factor=0.5).tolist() == [0.0, 0.0, -0.25, -0.5]
    assert overlong_penalty(lengths, 8, 0).tolist() == [0.0] * 4


def _fake_step(pattern_gen, n, lengths=None):
    """produce/take callables for collect_rollouts: each prompt's n rewards drawn at random."""
    from rlvr.rollouts import Rollout
    from rlvr.verifiers import ScoredBatch, VerifierResult

    calls = {"take": 0, "next": 0}

    def take(k):
        calls["take"] += 1
        start = calls["next"]
        calls["next"] += k
        return list(range(start, start + k))

    def generate(idx, round_):
        rollouts = []
        for i in idx:
            for j in range(n):
                score = float(pattern_gen(i, j))
                L = lengths(i, j) if lengths else 3
                rollouts.append(Rollout([i], [1] * L, f"{score}", [0.0] * L, "stop"))
        return rollouts, [{"prompt": str(i)} for i in idx for _ in range(n)]

    def score(rollouts, rows):
        return ScoredBatch([VerifierResult(float(r.text), {"status": "ok"}) for r in rollouts], ["fake"] * len(rollouts))

    def produce(idx, round_):
        rollouts, rows = generate(idx, round_)
        return rollouts, rows, score(rollouts, rows)

    return produce, take, calls


@pytest.mark.parametrize("p_pass", [0.05, 0.3, 0.5, 0.9])
def test_dynamic_sampling_never_yields_a_zero_variance_group(p_pass):
    n, P = 4, 8
    rng = torch.Generator().manual_seed(int(p_pass * 100))
    draws = {}

    def pattern(i, j):
        if i not in draws:
            draws[i] = (torch.rand(n, generator=rng) < p_pass).float().tolist()
        return draws[i][j]

    produce, take, calls = _fake_step(pattern, n)
    algo = AlgoConfig(baseline="grpo", dynamic_sampling=True, dynamic_sampling_rounds=50)
    col = collect_rollouts(produce, take, P, n, algo, max_new_tokens=8)
    assert len(col.rollouts) == P * n and col.group_ids_B.tolist() == [g for g in range(P) for _ in range(n)]
    for g in range(P):
        group = col.rewards_B[col.group_ids_B == g]
        assert group.std() > 0, group
        # the kept group is exactly what the verifier said for that prompt
        prompt = int(col.rows[g * n]["prompt"])
        assert group.tolist() == draws[prompt]
    # every sample generated is counted in the step's reward statistics, kept or not
    assert len(col.scored.results) == calls["take"] * P * n == col.rounds * P * n
    assert col.groups_informative >= P
    # and GRPO gives no row a zero advantage where every group varies
    adv = GROUP_ADVANTAGES["grpo"](col.rewards_B, col.group_ids_B, torch.ones(len(col.rewards_B), 1))
    assert (adv.abs() > 0).any()


def test_dynamic_sampling_stops_after_its_rounds_and_is_off_by_default():
    n, P = 4, 8
    produce, take, calls = _fake_step(lambda i, j: 1.0 if i % 4 == 0 and j == 0 else 0.0, n)
    col = collect_rollouts(produce, take, P, n, AlgoConfig(dynamic_sampling=True, dynamic_sampling_rounds=3), 8)
    # one prompt in four varies: 3 rounds of 8 prompts give 6 groups, fewer than 8; the step trains on those
    assert col.rounds == 3 and calls["take"] == 3
    assert len(col.rollouts) == 6 * n and col.groups_seen == 24 and col.groups_informative == 6
    produce, take, calls = _fake_step(lambda i, j: 0.0, n)
    col = collect_rollouts(produce, take, P, n, AlgoConfig(dynamic_sampling=True, dynamic_sampling_rounds=2), 8)
    assert col.rollouts == [] and col.rewards_B.numel() == 0
    produce, take, calls = _fake_step(lambda i, j: 0.0, n)
    col = collect_rollouts(produce, take, P, n, AlgoConfig(), 8)
    assert col.rounds == 1 and len(col.rollouts) == P * n  # off: every group kept


def test_overlong_penalty_enters_the_rewards_and_makes_groups_informative():
    # all four samples pass, but one is 8 tokens long (the limit): with a 2-token buffer it gets -1
    n = 4
    produce, take, _ = _fake_step(lambda i, j: 1.0, n, lengths=lambda i, j: 8 if j == 0 else 3)
    algo = AlgoConfig(dynamic_sampling=True, overlong_buffer=2)
    col = collect_rollouts(produce, take, 2, n, algo, max_new_tokens=8)
    assert col.rewards_B.tolist() == [0.0, 1.0, 1.0, 1.0] * 2
    assert col.scored.scores == [1.0] * 8  # the verifier's own scores are logged unchanged
