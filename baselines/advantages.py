"""Advantage estimators, registered by name; pure functions over padded tensors."""

from __future__ import annotations

from typing import Callable

import torch

ADVANTAGES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


def register_advantage(name: str):
    def deco(fn):
        if name in ADVANTAGES:
            raise ValueError(f"advantage baseline {name!r} already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def get_advantage_fn(name: str):
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise KeyError(f"unknown advantage baseline {name!r}; available: {', '.join(sorted(ADVANTAGES))}") from None


@register_advantage("gae")
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
