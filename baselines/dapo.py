"""DAPO's sampling and reward options (Yu et al. 2025), as pure functions.

Clip-higher is `ppo.clip_high` > `ppo.clip_low`; token-level loss aggregation is
`algo.loss_agg: token` (rlvr.ppo.loss_weights). The two here act before the advantages.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths_B: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """Soft overlong punishment (DAPO eq. 13), added to the verifier score:

        0                                   if L <= max_len - buffer
        ((max_len - buffer) - L) / buffer   if max_len - buffer < L <= max_len   (down to -1)
        -1                                  if L > max_len
    times `factor`. `buffer` = 0 turns it off.
    """
    if buffer <= 0:
        return torch.zeros(len(lengths_B))
    start = max_len - buffer
    pen = torch.clamp((start - lengths_B.float()) / buffer, min=-1.0, max=0.0)
    return factor * pen


def informative_groups(rewards_B: torch.Tensor, group_ids_B: torch.Tensor) -> torch.Tensor:
    """Per group (sorted unique id): True when its rewards are not all equal.

    A group whose samples all get the same reward has zero advantage under every group
    baseline and only dilutes the batch; dynamic sampling drops it and samples more prompts.
    """
    ids, inverse = torch.unique(group_ids_B, return_inverse=True)
    lo = torch.full((len(ids),), float("inf")).scatter_reduce(0, inverse, rewards_B.float(), "amin")
    hi = torch.full((len(ids),), float("-inf")).scatter_reduce(0, inverse, rewards_B.float(), "amax")
    return hi > lo
