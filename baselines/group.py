"""Critic-free advantage baselines: pure functions of the sequence rewards of each prompt's group.

Signature: `(rewards_B, group_ids_B, mask_BT) -> advantages_BT`; rollouts with the same group id
are the n samples of one prompt, and each sequence's advantage is broadcast over its tokens.
`rlvr.baselines.advantages` registers them (with `gae` and `reinforce_pp`) for `algo.baseline`.
"""

from __future__ import annotations

from typing import Callable

import torch

GROUP_ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}


def _register(name: str):
    def deco(fn):
        GROUP_ADVANTAGES[name] = fn
        return fn

    return deco


def _group_stats(rewards_B: torch.Tensor, group_ids_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence (group mean, group unbiased std, group size)."""
    _, inverse, counts = torch.unique(group_ids_B, return_inverse=True, return_counts=True)
    r = rewards_B.float()
    sums = torch.zeros(len(counts)).index_add_(0, inverse, r)
    mean = (sums / counts)[inverse]
    sq = torch.zeros(len(counts)).index_add_(0, inverse, (r - mean) ** 2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))[inverse]
    return mean, std, counts[inverse].float()


def _per_token(adv_B: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return adv_B[:, None] * mask_BT


@_register("grpo")
def grpo(rewards_B, group_ids_B, mask_BT, eps: float = 1e-6):
    """GRPO (Shao et al. 2024, eq. 4 outcome supervision): (r - mean_group) / (std_group + eps)."""
    mean, std, _ = _group_stats(rewards_B, group_ids_B)
    return _per_token((rewards_B - mean) / (std + eps), mask_BT)


@_register("dr_grpo")
def dr_grpo(rewards_B, group_ids_B, mask_BT, eps: float = 0.0):
    """Dr. GRPO (Liu et al. 2025): r - mean_group, no std division (its constant loss normaliser
    belongs to the loss aggregation, not here)."""
    mean, _, _ = _group_stats(rewards_B, group_ids_B)
    return _per_token(rewards_B - mean, mask_BT)


@_register("rloo")
def rloo(rewards_B, group_ids_B, mask_BT, eps: float = 0.0):
    """RLOO (Ahmadian et al. 2024): r_i - mean of the other k-1 rewards of the group = k/(k-1) (r_i - mean)."""
    mean, _, k = _group_stats(rewards_B, group_ids_B)
    loo = (mean * k - rewards_B) / (k - 1).clamp(min=1)
    return _per_token(torch.where(k > 1, rewards_B - loo, torch.zeros_like(rewards_B)), mask_BT)


@_register("none")
def no_baseline(rewards_B, group_ids_B, mask_BT, eps: float = 0.0):
    """Plain REINFORCE: the reward itself."""
    return _per_token(rewards_B.float(), mask_BT)
