"""PPO math against numbers worked out by hand (arithmetic in the comments)."""

import copy
import math

import pytest
import torch

from numerics import GRAD_RTOL, assert_same_gradients
from rlvr.baselines import gae
from rlvr.config import LearnerConfig, PPOConfig
from rlvr.learner import PPOLearner, lr_lambda, make_batch, plan_micro_batches
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


# ---------------------------------------------------------------- micro-batches vs one batch
# Accumulating a minibatch's gradient over micro-batches must give the gradient of one pass over it.
# These tests compare what that is about: the gradient of every minibatch, taken just before each
# optimizer step, and the logged statistics. The learner's AdamW is replaced by plain SGD, so that
# the weights of the next minibatch differ only by lr times the gradient difference: Adam divides by
# sqrt(v), which turns last-bit noise in a near-zero gradient into a step of size lr (at lr 1e-2,
# weights after one AdamW step differed by 6e-5 between the two paths on an AVX-512 machine).
#
# GRAD_RTOL (tests/numerics.py) is derived there from the noise measured on this learner.
SGD_LR = 1e-2


def assert_same_steps(steps_a: list[dict], steps_b: list[dict]) -> None:
    assert len(steps_a) == len(steps_b) > 0
    for i, (a, b) in enumerate(zip(steps_a, steps_b)):
        assert_same_gradients(a, b, where=f"step {i}")


def use_sgd(policy, critic) -> tuple:
    """An optimizer factory for PPOLearner (plain SGD, constant lr) and the list it fills with each
    model's gradients just before each of its steps, in step order."""
    names = {}
    for prefix, model in (("policy.", policy), ("critic.", critic)):
        if model is not None:
            names.update({id(p): prefix + n for n, p in model.named_parameters()})
    grads: list[dict] = []

    def make(params, lr):
        params = list(params)
        opt = torch.optim.SGD(params, lr=SGD_LR)
        opt.register_step_pre_hook(lambda o, args, kwargs: grads.append({names[id(p)]: p.grad.detach().clone() for p in params if p.grad is not None}))
        return opt

    return make, grads


def _off_policy(logp_BT: torch.Tensor, mask_BT: torch.Tensor, seed: int) -> torch.Tensor:
    """Old logprobs 0.5 nats off the current ones, in a random direction per token: ratios e^-0.5 and
    e^0.5 lie far outside the clip range [0.8, 1.2], so clipping takes part, and no ratio is near a
    clip boundary (where last-bit noise would flip a token between clipped and not)."""
    sign = torch.randint(0, 2, logp_BT.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return logp_BT + 0.5 * sign * mask_BT


def _ppo_update(policy, critic, ref, batch, micro, adv, ret, isw=None, agg="token", budget=0, lean=True):
    """One PPOLearner.update (2 minibatches) with SGD: (stats, gradients before each step, weights after).
    `budget`: ppo.max_tokens_per_micro_batch; `lean`: learner.lean_logprobs."""
    cfg = PPOConfig(
        num_minibatches=2, micro_batch_size=micro, max_tokens_per_micro_batch=budget, kl_penalty="loss", kl_estimator="k3", kl_coef=0.1, entropy_coef=0.01
    )
    p, c = copy.deepcopy(policy), copy.deepcopy(critic)
    make, grads = use_sgd(p, c)
    learner = PPOLearner(
        p, c, ref, cfg, total_steps=1, pad_id=0, loss_agg=agg, max_new_tokens=batch.mask.shape[1], make_optimizer=make, learner=LearnerConfig(lean_logprobs=lean)
    )
    old_logp = _off_policy(learner.logprobs(p, batch), batch.mask, seed=5)
    ref_logp = learner.logprobs(ref, batch) if ref is not None else None
    old_v = learner.values(batch) if c is not None else None
    stats = learner.update(batch, adv, ret, old_logp, old_v, ref_logp, generator=torch.Generator().manual_seed(7), is_weights_BT=isw)
    weights = {**{f"policy.{k}": v for k, v in p.state_dict().items()}, **({f"critic.{k}": v for k, v in c.state_dict().items()} if c else {})}
    return stats, grads, weights


def _ppo_fixture(model_dir, n, seed, critic=True):
    from rlvr.models import load_critic, load_policy

    policy = load_policy(model_dir)
    batch = make_batch(_random_rollouts(n, policy.config.vocab_size, seed=seed), pad_id=0)
    gen = torch.Generator().manual_seed(seed + 1)
    adv = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    ret = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    models = (policy, load_critic(model_dir, from_policy=True), load_policy(model_dir)) if critic else (policy, None, None)
    return models, batch, adv, ret


def _assert_same_update(a, b, keys):
    (sa, ga, wa), (sb, gb, wb) = a, b
    # each statistic is a sum of per-micro-batch terms: the same float32 reordering noise as the gradients;
    # those near zero (the k3 KL in the loss is ~1e-6 here, a difference of nearly equal logprobs) to 1e-7
    for key in keys:
        assert sb[key] == pytest.approx(sa[key], rel=GRAD_RTOL, abs=1e-7), key
    assert_same_steps(ga, gb)
    # SGD moved each weight by -lr * c * g per step, c the clip-norm coefficient (<= 1): over 2 steps the
    # weights differ by at most lr * 2 * 2 * GRAD_RTOL * max|g| (once for g, once for c), plus 1 ulp of w
    for name in wa:
        scale = max((g[name].abs().max().item() for g in ga if name in g), default=0.0)
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=SGD_LR * 2 * 2 * GRAD_RTOL * scale + 1e-7 * wa[name].abs().max().item())


def test_micro_batches_equal_one_big_batch(tiny_model_dir):
    """Gradient accumulation over 8 micro-batches of 1 gives the gradients of one micro-batch of 8
    (policy with clipped loss, entropy bonus and k3 KL in the loss; critic with clipped value loss)."""
    (policy, critic, ref), batch, adv, ret = _ppo_fixture(tiny_model_dir, 16, seed=0)
    big = _ppo_update(policy, critic, ref, batch, 8, adv, ret)
    small = _ppo_update(policy, critic, ref, batch, 1, adv, ret)
    _assert_same_update(big, small, STATS)
    assert big[0]["policy/clip_frac"] > 0.2  # clipping took part
    assert len(big[1]) == 4  # policy and critic, 2 minibatches each
    assert not torch.equal(big[2]["policy.model.embed_tokens.weight"], policy.state_dict()["model.embed_tokens.weight"])


@pytest.mark.parametrize("agg", ["sequence", "constant"])
def test_micro_batches_equal_one_big_batch_without_critic(tiny_model_dir, agg):
    """The same equivalence for a critic-free learner under each non-default loss aggregation,
    with truncated importance weights."""
    (policy, _, _), batch, adv, _ = _ppo_fixture(tiny_model_dir, 12, seed=3, critic=False)
    isw = torch.rand(batch.mask.shape, generator=torch.Generator().manual_seed(2)) * 2 * batch.mask
    big = _ppo_update(policy, None, None, batch, 6, adv, None, isw, agg)
    small = _ppo_update(policy, None, None, batch, 1, adv, None, isw, agg)
    assert "loss/value" not in big[0]
    _assert_same_update(big, small, ("loss/policy", "policy/clip_frac", "policy/grad_norm"))


STATS = ("loss/policy", "loss/value", "loss/kl", "policy/entropy", "policy/clip_frac", "policy/grad_norm", "value/grad_norm")


def test_token_budget_micro_batches_equal_fixed_ones(tiny_model_dir):
    """Length-sorted micro-batches cut by a token budget and trimmed to their own widths give the
    update of fixed micro-batches over the batch's full width (the loss weights are the minibatch's)."""
    (policy, critic, ref), batch, adv, ret = _ppo_fixture(tiny_model_dir, 16, seed=1)
    fixed = _ppo_update(policy, critic, ref, batch, 4, adv, ret)
    budget = _ppo_update(policy, critic, ref, batch, 4, adv, ret, budget=24)
    _assert_same_update(fixed, budget, STATS)
    groups = plan_micro_batches(batch, list(range(16)), 4, 24)
    assert sorted(r for g in groups for r in g) == list(range(16)) and len(groups) > 4  # not the 4 fixed ones


def test_lean_logprobs_give_the_full_update(tiny_model_dir):
    """The update with chunked head logprobs (recomputed in the backward pass) equals the one through
    the model's full logits: gradients with the entropy bonus and the KL in the loss, and statistics."""
    (policy, critic, ref), batch, adv, ret = _ppo_fixture(tiny_model_dir, 16, seed=2)
    full = _ppo_update(policy, critic, ref, batch, 8, adv, ret, lean=False)
    lean = _ppo_update(policy, critic, ref, batch, 8, adv, ret, lean=True)
    _assert_same_update(full, lean, STATS)


def test_wrong_accumulation_is_caught(tiny_model_dir, monkeypatch):
    """The comparison has teeth: one micro-batch's policy loss scaled by 1.01 fails it."""
    import rlvr.learner

    (policy, critic, ref), batch, adv, ret = _ppo_fixture(tiny_model_dir, 16, seed=0)
    big = _ppo_update(policy, critic, ref, batch, 8, adv, ret)
    calls = []
    real = rlvr.learner.clipped_policy_loss

    def scaled_once(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        return (loss * 1.01 if len(calls) == 1 else loss), stats

    monkeypatch.setattr(rlvr.learner, "clipped_policy_loss", scaled_once)
    small = _ppo_update(policy, critic, ref, batch, 1, adv, ret)
    with pytest.raises(AssertionError, match="step 0 policy"):
        assert_same_steps(big[1], small[1])


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
