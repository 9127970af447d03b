"""Advantage baselines, registered by name and chosen with `algo.baseline`.

Every baseline is a pure function over padded tensors with one signature:

    fn(rewards_BT, group_ids_B, values_BT, mask_BT, gamma, lam) -> (advantages_BT, returns_BT | None)

`rewards_BT` holds the per-token reward (the verifier score, plus any length penalty, on the last
real token; minus beta * KL on every token when the KL is in the reward). Rollouts with the same
group id are the n samples of one prompt. `values_BT` is the critic's estimate, or None when the
baseline needs no critic; `returns_BT` is the critic's regression target, None without a critic.
Padding positions are 0 in everything returned.

    gae           PPO's learned critic, GAE(gamma, lambda)               needs a critic
    grpo          (R - group mean) / (group std + eps)                    Shao et al. 2024
    dr_grpo       R - group mean (no std; pair with algo.loss_agg: constant) Liu et al. 2025
    rloo          R - mean of the group's other k-1 rewards               Ahmadian et al. 2024
    reinforce_pp  returns-to-go, whitened over the batch's tokens         Hu 2025 (REINFORCE++)
    none          R itself (plain REINFORCE)

R is a sequence's total reward, the sum of its row of `rewards_BT`.

The rewards come in per token, not per sequence: GAE and REINFORCE++ need the per-token KL
shaping (Tulu 3 puts k1 in every token's reward), and a sequence baseline only has to sum them.
`gamma` and `lam` are passed instead of the whole config so each function stays a pure map of
tensors and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlvr.baselines.group import GROUP_ADVANTAGES


@dataclass(frozen=True)
class Baseline:
    name: str
    needs_critic: bool
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


BASELINES: dict[str, Baseline] = {}


def register_baseline(name: str, needs_critic: bool = False):
    def deco(fn):
        if name in BASELINES:
            raise ValueError(f"advantage baseline {name!r} already registered")
        BASELINES[name] = Baseline(name, needs_critic, fn)
        return fn

    return deco


def get_baseline(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown advantage baseline {name!r}; available: {', '.join(sorted(BASELINES))}") from None


def compute_advantages(
    name: str,
    rewards_BT: torch.Tensor,
    group_ids_B: torch.Tensor,
    values_BT: torch.Tensor | None,
    mask_BT: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    baseline = get_baseline(name)
    if baseline.needs_critic and values_BT is None:
        raise ValueError(f"advantage baseline {name!r} needs the critic's values")
    return baseline.fn(rewards_BT, group_ids_B, values_BT, mask_BT, gamma, lam)


# ------------------------------------------------------------------------------------ PPO's critic


def gae(
    rewards_BT: torch.Tensor,
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), over right-padded rows.

    delta_t = r_t + gamma * V_{t+1} - V_t   (V past the last real token is 0)
    A_t     = delta_t + gamma * lam * A_{t+1}
    returns = A + V (the critic's regression target). Padding positions are 0.
    """
    B, T = rewards_BT.shape
    mask = mask_BT.float()
    values = values_BT * mask
    advantages = torch.zeros_like(rewards_BT, dtype=torch.float32)
    next_adv = torch.zeros(B, dtype=torch.float32)
    next_value = torch.zeros(B, dtype=torch.float32)
    for t in reversed(range(T)):
        delta = rewards_BT[:, t] + gamma * next_value - values[:, t]
        adv_t = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = adv_t
        # a padded position passes nothing back to the real token before it
        next_adv = adv_t
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


@register_baseline("gae", needs_critic=True)
def _gae(rewards_BT, group_ids_B, values_BT, mask_BT, gamma, lam):
    return gae(rewards_BT, values_BT, mask_BT, gamma, lam)


# ------------------------------------------------------------------------------------ critic-free


def returns_to_go(rewards_BT: torch.Tensor, mask_BT: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s over each row's real tokens."""
    out = torch.zeros_like(rewards_BT, dtype=torch.float32)
    running = torch.zeros(rewards_BT.shape[0])
    for t in reversed(range(rewards_BT.shape[1])):
        running = (rewards_BT[:, t] + gamma * running) * mask_BT[:, t]
        out[:, t] = running
    return out


@register_baseline("reinforce_pp")
def reinforce_pp(rewards_BT, group_ids_B, values_BT, mask_BT, gamma=1.0, lam=1.0, eps: float = 1e-8):
    """REINFORCE++ (Hu 2025): token returns-to-go normalised by the batch's token mean and std;
    no per-prompt baseline (the group ids are not used)."""
    g = returns_to_go(rewards_BT, mask_BT, gamma)
    n = mask_BT.sum().clamp(min=1)
    mean = (g * mask_BT).sum() / n
    var = (((g - mean) ** 2) * mask_BT).sum() / (n - 1).clamp(min=1)
    return (g - mean) * torch.rsqrt(var + eps) * mask_BT, None


def _sequence_baseline(name: str):
    group_fn = GROUP_ADVANTAGES[name]

    def fn(rewards_BT, group_ids_B, values_BT, mask_BT, gamma=1.0, lam=1.0):
        return group_fn(rewards_BT.sum(1), group_ids_B, mask_BT), None

    fn.__doc__ = group_fn.__doc__
    return fn


for _name in ("grpo", "dr_grpo", "rloo", "none"):
    register_baseline(_name)(_sequence_baseline(_name))
