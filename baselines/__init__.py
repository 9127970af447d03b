"""What PPO is compared against: advantage baselines that replace the critic (`algo.baseline`),
and the non-gradient baselines (best-of-N with a verifier, rejection-sampling fine-tuning)."""

from rlvr.baselines.advantages import BASELINES, Baseline, compute_advantages, gae, get_baseline, register_baseline

__all__ = ["BASELINES", "Baseline", "compute_advantages", "gae", "get_baseline", "register_baseline"]
