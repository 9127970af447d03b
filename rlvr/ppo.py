"""PPO math as small pure functions over padded tensors.

Shapes: B rollouts, T response tokens (right-padded); `mask_BT` is 1 on real response
tokens. A loss is a weighted sum over the real tokens of a minibatch, with weights from
`loss_weights` computed once for the whole minibatch (token-level: 1 / its token count), so
that gradient accumulation over micro-batches equals one pass over the whole minibatch.
"""

from __future__ import annotations

from typing import Callable

import torch

# ------------------------------------------------------------------------------ helpers


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x_BT: torch.Tensor, mask_BT: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the real tokens (unbiased variance); padding stays 0."""
    mean = masked_mean(x_BT, mask_BT)
    n = mask_BT.sum()
    var = (((x_BT - mean) ** 2) * mask_BT).sum() / (n - 1).clamp(min=1)
    return (x_BT - mean) * torch.rsqrt(var + eps) * mask_BT


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position, computed in float32."""
    logp = torch.log_softmax(logits_BTV.float(), dim=-1)
    return logp.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits_BTV: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v per position, float32."""
    logp = torch.log_softmax(logits_BTV.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------ KL estimators
# Schulman, "Approximating KL Divergence" (2020): with r = pi_ref / pi = exp(ref - logp),
# k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r; all estimate KL(pi || pi_ref) on
# samples from pi. k1 is unbiased but can be negative; k3 is unbiased and >= 0.

KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def _kl(name):
    def deco(fn):
        KL_ESTIMATORS[name] = fn
        return fn

    return deco


@_kl("k1")
def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    return logp_BT - ref_logp_BT


@_kl("k2")
def kl_k2(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


@_kl("k3")
def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    log_r = ref_logp_BT - logp_BT
    return torch.expm1(log_r) - log_r


# ------------------------------------------------------------------------------ rewards


def token_rewards(
    scores_B: torch.Tensor,
    mask_BT: torch.Tensor,
    kl_BT: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Per-token reward: -kl_coef * KL_t on every token, plus the verifier score on the last one.

    Tulu 3 / open-instruct put the k1 estimate in the reward this way; with `kl_BT=None`
    the KL stays out of the reward (e.g. when it is a loss term instead).
    """
    rewards_BT = torch.zeros_like(mask_BT, dtype=torch.float32)
    if kl_BT is not None:
        rewards_BT = rewards_BT - kl_coef * kl_BT * mask_BT
    last_B = (mask_BT.sum(1) - 1).clamp(min=0).long()
    rewards_BT[torch.arange(len(scores_B)), last_B] += scores_B.float() * (mask_BT.sum(1) > 0)
    return rewards_BT


# ------------------------------------------------------------------------------ loss aggregation


def loss_weights(mask_BT: torch.Tensor, agg: str, max_len: int) -> torch.Tensor:
    """Per-token weights whose weighted sum of a per-token loss is the minibatch's loss.

    token     sum over all tokens / number of tokens (DAPO's token-level loss; long answers
              weigh in proportion to their length)
    sequence  mean over each sequence's tokens, then mean over sequences (GRPO as published)
    constant  sum over all tokens / (sequences * max_len) (Dr. GRPO: no length normalisation)
    """
    mask = mask_BT.float()
    if agg == "token":
        return mask / mask.sum().clamp(min=1)
    if agg == "sequence":  # sequences with no real token (e.g. removed by the overlong filter) do not count
        num_seqs = (mask.sum(1) > 0).sum().clamp(min=1)
        return mask / (mask.sum(1, keepdim=True).clamp(min=1) * num_seqs)
    if agg == "constant":
        return mask / (len(mask) * max_len)
    raise ValueError(f"unknown loss aggregation {agg!r}: token, sequence or constant")


def tis_weights(
    old_logp_BT: torch.Tensor, sampler_logp_BT: torch.Tensor, mask_BT: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025): min(pi_learner / pi_sampler, cap) per token.

    The sampler (vLLM, other kernels or precision, possibly older weights) is not exactly the
    learner's policy; weighting each token's loss by this capped ratio corrects the gradient
    for the mismatch without letting a rare token's ratio blow it up.
    """
    return torch.clamp(torch.exp(old_logp_BT - sampler_logp_BT), max=cap) * mask_BT


# ------------------------------------------------------------------------------ losses


def clipped_policy_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_low: float,
    clip_high: float,
    weights_BT: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), with separate lower/upper clip (DAPO).

    L = sum_t w_t * max(-A_t * rho_t, -A_t * clip(rho_t, 1 - clip_low, 1 + clip_high)),
    rho_t = exp(logp_t - old_logp_t), w_t from `loss_weights` (times any IS weight).
    """
    log_ratio = logp_BT - old_logp_BT
    ratio = torch.exp(log_ratio)
    unclipped = -advantages_BT * ratio
    clipped = -advantages_BT * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = (per_token * weights_BT * mask_BT).sum()
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask_BT),
            "approx_kl": masked_mean(kl_k3(logp_BT, old_logp_BT), mask_BT),  # KL(pi_old || pi) by k3
            "ratio_mean": masked_mean(ratio, mask_BT),
        }
    return loss, stats


def clipped_value_loss(
    values_BT: torch.Tensor,
    old_values_BT: torch.Tensor,
    returns_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip: float,
    num_tokens: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines / open-instruct).

    L = 0.5 * sum_t max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2) / num_tokens.
    """
    v_clipped = old_values_BT + torch.clamp(values_BT - old_values_BT, -clip, clip)
    err = (values_BT - returns_BT) ** 2
    err_clipped = (v_clipped - returns_BT) ** 2
    loss = 0.5 * (torch.maximum(err, err_clipped) * mask_BT).sum() / num_tokens
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((err_clipped > err).float(), mask_BT)}
    return loss, stats
