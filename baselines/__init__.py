"""Advantage baselines (and, later, the non-gradient baselines PPO is compared against)."""

from rlvr.baselines.advantages import ADVANTAGES, gae, get_advantage_fn

__all__ = ["ADVANTAGES", "gae", "get_advantage_fn"]
