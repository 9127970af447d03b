"""PPO math against numbers worked out by hand (arithmetic in the comments)."""

import copy
import math

import pytest
import torch

from rlvr.baselines import gae
from rlvr.config import PPOConfig
from rlvr.learner import PPOLearner, lr_lambda, make_batch
from rlvr.ppo import (
    KL_ESTIMATORS,
    clipped_policy_loss,
    clipped_value_loss,
    loss_weights,
    masked_whiten,
    tis_weights,
    token_rewards,
)
from rlvr.rollouts import Rollout

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731


def test_gae_by_hand():
    # gamma 0.9, lambda 0.5, so gamma * lambda = 0.45.
    # row 0: r = [0, 0, 1], V = [0.5, 0.6, 0.7]
    #   t2: delta = 1 - 0.7 = 0.3                    A2 = 0.3
    #   t1: delta = 0.9 * 0.7 - 0.6 = 0.03           A1 = 0.03 + 0.45 * 0.3 = 0.165
    #   t0: delta = 0.9 * 0.6 - 0.5 = 0.04           A0 = 0.04 + 0.45 * 0.165 = 0.11425
    # row 1: r = [0, 2, pad], V = [1.0, 0.5, 9.9 (pad, ignored)]
    #   t1: delta = 2 - 0.5 = 1.5                    A1 = 1.5
    #   t0: delta = 0.9 * 0.5 - 1.0 = -0.55          A0 = -0.55 + 0.45 * 1.5 = 0.125
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 9.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert adv.tolist() == [approx([0.11425, 0.165, 0.3]), approx([0.125, 1.5, 0.0])]
    assert ret.tolist() == [approx([0.61425, 0.765, 1.0]), approx([1.125, 2.0, 0.0])]


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.3, 0.2, 0.1]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # returns = reward-to-go: [0.9, 0.8, 1.0]
    assert ret[0].tolist() == approx([0.9, 0.8, 1.0])
    assert adv[0].tolist() == approx([0.6, 0.6, 0.9])


def test_clipped_policy_loss_by_hand():
    # ratios 1.5, 0.5, 1.1, 0.7 (+ one padded token); clip range [0.8, 1.28]
    #   r=1.5, A=1 : max(-1.5, -1.28) = -1.28   (clipped)
    #   r=0.5, A=1 : max(-0.5, -0.8)  = -0.5
    #   r=1.1, A=-2: max(2.2, 2.2)    = 2.2
    #   r=0.7, A=-1: max(0.7, 0.8)    = 0.8     (clipped)
    # loss = (-1.28 - 0.5 + 2.2 + 0.8) / 4 = 0.305; clip fraction 2/4
    old = torch.zeros(1, 5)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7, 3.0]]))
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, weights_BT=mask / 4)
    assert loss.item() == approx(0.305)
    assert stats["clip_frac"].item() == approx(0.5)
    # approx_kl is k3 of (old vs new): mean over tokens of (1/r - 1) + log r
    k3 = [(1 / r - 1) + math.log(r) for r in (1.5, 0.5, 1.1, 0.7)]
    assert stats["approx_kl"].item() == approx(sum(k3) / 4)


def test_policy_loss_gradient_is_minus_advantage_inside_the_clip_range():
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), 0.2, 0.2, torch.full((1, 2), 0.5))
    loss.backward()
    assert logp.grad.tolist() == [approx([-1.0, 0.5])]  # d/dlogp of -A * exp(logp - old) / 2 at ratio 1


def test_clipped_value_loss_by_hand():
    # clip 0.2:
    #   V=1.0, V_old=0.5, R=0.8 : clipped V = 0.7; max((0.2)^2, (0.1)^2) = 0.04
    #   V=0.0, V_old=0.1, R=-0.5: clipped V = 0.0; 0.25 both              = 0.25
    #   V=0.5, V_old=0.0, R=1.0 : clipped V = 0.2; max(0.25, 0.64)        = 0.64 (clipped)
    # loss = 0.5 * (0.04 + 0.25 + 0.64) / 3 = 0.155
    v = torch.tensor([[1.0, 0.0, 0.5]])
    old = torch.tensor([[0.5, 0.1, 0.0]])
    ret = torch.tensor([[0.8, -0.5, 1.0]])
    loss, stats = clipped_value_loss(v, old, ret, torch.ones(1, 3), clip=0.2, num_tokens=3)
    assert loss.item() == approx(0.155)
    assert stats["value_clip_frac"].item() == approx(1 / 3)


@pytest.mark.parametrize(
    "p, ref, expected",
    [
        # p = 0.5, ref = 0.25: log r = log(ref/p) = -log 2
        #   k1 = log 2 = 0.693147; k2 = (log 2)^2 / 2 = 0.240227; k3 = (0.5 - 1) + log 2 = 0.193147
        (0.5, 0.25, {"k1": 0.693147, "k2": 0.240227, "k3": 0.193147}),
        # p = 0.25, ref = 0.5: r = 2
        #   k1 = -0.693147; k2 = 0.240227; k3 = (2 - 1) - log 2 = 0.306853
        (0.25, 0.5, {"k1": -0.693147, "k2": 0.240227, "k3": 0.306853}),
        (0.3, 0.3, {"k1": 0.0, "k2": 0.0, "k3": 0.0}),
    ],
)
def test_kl_estimators_by_hand(p, ref, expected):
    logp, ref_logp = torch.tensor([math.log(p)]), torch.tensor([math.log(ref)])
    for name, value in expected.items():
        assert KL_ESTIMATORS[name](logp, ref_logp).item() == pytest.approx(value, abs=1e-5)


def test_kl_estimators_are_unbiased_where_they_should_be():
    # Sampling from pi: E[k1] = E[k3] = KL(pi || ref) exactly; k2 is biased.
    pi = torch.tensor([0.7, 0.2, 0.1])
    ref = torch.tensor([0.2, 0.5, 0.3])
    kl = (pi * (pi / ref).log()).sum()
    lp, lr = pi.log(), ref.log()
    for name in ("k1", "k3"):
        assert (pi * KL_ESTIMATORS[name](lp, lr)).sum().item() == pytest.approx(kl.item(), abs=1e-6)


def test_token_rewards_by_hand():
    # kl_coef 0.1; row 0: -0.1 * [0.1, 0.2, 0.3] + [0, 0, 1.0]; row 1: -0.1 * [0.4, 0.5] + [0, 0.5], pad 0
    scores = torch.tensor([1.0, 0.5])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    r = token_rewards(scores, mask, kl, kl_coef=0.1)
    assert r.tolist() == [approx([-0.01, -0.02, 0.97]), approx([-0.04, 0.45, 0.0])]
    assert token_rewards(scores, mask).tolist() == [[0, 0, 1.0], [0, 0.5, 0]]


def test_masked_whiten_by_hand():
    # real tokens [1, 2, 3]: mean 2, unbiased variance (1 + 0 + 1) / 2 = 1 -> [-1, 0, 1]; padding stays 0
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert masked_whiten(x, m).tolist() == [approx([-1.0, 0.0]), approx([1.0, 0.0])]


def test_lr_schedule_warmup_then_linear_decay():
    f = lr_lambda("linear", warmup=2, total=6)
    assert [f(s) for s in range(7)] == approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    g = lr_lambda("cosine", warmup=0, total=4)
    assert [g(s) for s in (0, 2, 4)] == approx([1.0, 0.5, 0.0])


def _random_rollouts(n, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(4, vocab, (int(torch.randint(2, 6, (1,), generator=gen)),), generator=gen).tolist()
        c = torch.randint(4, vocab, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
        out.append(Rollout(p, c, "", [0.0] * len(c), "length"))
    return out


def test_micro_batches_equal_one_big_batch(tiny_model_dir):
    """Gradient accumulation over 8 micro-batches of 1 gives the update of one micro-batch of 8."""
    from rlvr.models import load_critic, load_policy

    policy = load_policy(tiny_model_dir)
    critic = load_critic(tiny_model_dir, from_policy=True)
    ref = load_policy(tiny_model_dir)
    batch = make_batch(_random_rollouts(16, policy.config.vocab_size, seed=0), pad_id=0)
    gen = torch.Generator().manual_seed(1)
    adv = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    ret = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    results = []
    for micro in (8, 1):
        cfg = PPOConfig(num_minibatches=2, micro_batch_size=micro, lr=1e-2, critic_lr=1e-2, kl_penalty="loss", kl_estimator="k3", kl_coef=0.1, entropy_coef=0.01)
        p, c = copy.deepcopy(policy), copy.deepcopy(critic)
        learner = PPOLearner(p, c, ref, cfg, total_steps=1, pad_id=0)
        old_logp = learner.logprobs(p, batch) + 0.05 * batch.mask  # off-policy, so clipping takes part
        ref_logp = learner.logprobs(ref, batch)
        old_v = learner.values(batch)
        stats = learner.update(batch, adv, ret, old_logp, old_v, ref_logp, generator=torch.Generator().manual_seed(7))
        results.append((stats, p.state_dict(), c.state_dict()))
    (s8, p8, c8), (s1, p1, c1) = results
    for key in ("loss/policy", "loss/value", "loss/kl", "policy/entropy", "policy/clip_frac", "policy/grad_norm"):
        assert s8[key] == pytest.approx(s1[key], rel=1e-5, abs=1e-6), key
    for a, b in ((p8, p1), (c8, c1)):
        for name in a:
            # Adam divides by sqrt(v): float noise in near-zero gradients shows up at ~1e-6 (lr is 1e-2)
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert not torch.equal(p8["model.embed_tokens.weight"], policy.state_dict()["model.embed_tokens.weight"])


@pytest.mark.parametrize("agg", ["sequence", "constant"])
def test_micro_batches_equal_one_big_batch_without_critic(tiny_model_dir, agg):
    """The same equivalence for a critic-free learner under each non-default loss aggregation,
    with truncated importance weights."""
    from rlvr.models import load_policy

    policy = load_policy(tiny_model_dir)
    batch = make_batch(_random_rollouts(12, policy.config.vocab_size, seed=3), pad_id=0)
    gen = torch.Generator().manual_seed(2)
    adv = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    isw = torch.rand(batch.mask.shape, generator=gen) * 2 * batch.mask
    results = []
    for micro in (6, 1):
        cfg = PPOConfig(num_minibatches=2, micro_batch_size=micro, lr=1e-2)
        p = copy.deepcopy(policy)
        learner = PPOLearner(p, None, None, cfg, total_steps=1, pad_id=0, loss_agg=agg, max_new_tokens=batch.mask.shape[1])
        old_logp = learner.logprobs(p, batch) + 0.05 * batch.mask
        stats = learner.update(batch, adv, None, old_logp, None, None, generator=torch.Generator().manual_seed(7), is_weights_BT=isw)
        results.append((stats, p.state_dict()))
    (s6, p6), (s1, p1) = results
    assert "loss/value" not in s6
    for key in ("loss/policy", "policy/clip_frac", "policy/grad_norm"):
        assert s6[key] == pytest.approx(s1[key], rel=1e-5, abs=1e-6), key
    for name in p6:
        # Adam moves every weight by about lr = 1e-2; float noise in near-zero gradients stays below 1e-4
        torch.testing.assert_close(p6[name], p1[name], rtol=1e-4, atol=1e-4)


def test_loss_weights_by_hand():
    # two rows of 3 and 1 real tokens, max_len 4
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # token: every real token weighs 1/4
    assert loss_weights(mask, "token", 4).tolist() == [approx([0.25, 0.25, 0.25, 0]), approx([0.25, 0, 0, 0])]
    # sequence: 1/(3 * 2) per token of row 0, 1/(1 * 2) for row 1
    assert loss_weights(mask, "sequence", 4).tolist() == [approx([1 / 6, 1 / 6, 1 / 6, 0]), approx([0.5, 0, 0, 0])]
    # constant: 1 / (2 rows * 4)
    assert loss_weights(mask, "constant", 4).tolist() == [approx([0.125, 0.125, 0.125, 0]), approx([0.125, 0, 0, 0])]
    # a per-token loss of 1 on row 0 and 3 on row 1: token 6/4, sequence (1 + 3)/2, constant 6/8
    per_token = torch.tensor([[1.0] * 4, [3.0] * 4])
    got = {agg: (per_token * loss_weights(mask, agg, 4)).sum().item() for agg in ("token", "sequence", "constant")}
    assert got == {"token": approx(1.5), "sequence": approx(2.0), "constant": approx(0.75)}
    # a row the overlong filter emptied is not a sequence of the mean
    emptied = torch.cat([mask, torch.zeros(1, 4)])
    assert loss_weights(emptied, "sequence", 4)[:2].tolist() == loss_weights(mask, "sequence", 4).tolist()


def test_truncated_importance_weights_by_hand():
    # learner/sampler ratios e^0.5 = 1.6487, e^-1 = 0.3679, e^2 = 7.389 (capped at 2), padding 0
    old = torch.tensor([[0.5, -1.0, 2.0, 9.0]])
    sampler = torch.zeros(1, 4)
    w = tis_weights(old, sampler, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), cap=2.0)
    assert w.tolist() == [approx([math.exp(0.5), math.exp(-1.0), 2.0, 0.0])]
