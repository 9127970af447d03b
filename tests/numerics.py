"""How the tests compare floats (README "How the tests treat floats").

- Exactly (`==`, `torch.equal`): only what is computed twice on this machine by the same code path
  at the same thread count (a resumed run against an uninterrupted one, a seed launched by
  `rlvr seeds` against the same seed run alone). Kernels are deterministic there, so any
  difference is a bug (a restored state, a data position, a seed), never rounding.
- With a tolerance: what is computed by two code paths (micro-batches vs one batch, vLLM vs the
  learner, a padded batch vs rows alone), or by kernels that differ between CPUs (AVX2 vs AVX-512
  machines round differently in the last bits). The tolerance is derived from the arithmetic and
  said in a comment; never compare weights after Adam (it divides by sqrt(v), turning last-bit
  noise in a near-zero gradient into a step of size lr).
"""

from __future__ import annotations

import torch

# Gradients accumulated over micro-batches vs one pass: float32 sums taken in another order differ by
# a few units of roundoff (2^-24 = 6e-8) of their largest summands. Measured on the PPO learner over 6
# batches, micro-batches of 3 and 1 against 8, kernels (default, avx2) and 1 or 2 threads: at most
# 1.4e-6 of each gradient tensor's largest entry. Wrong accumulation moves them by far more: one
# micro-batch's policy loss scaled by 1.01 changes them by 5e-4 to 7e-3 of that entry
# (tests/test_ppo_math.py::test_wrong_accumulation_is_caught). GRAD_RTOL lies ~20x above the noise
# and ~20x below the smallest such error. The scale is the tensor's largest entry, not each entry:
# an entry near zero is a sum that cancelled, and its error is that of the summands.
GRAD_RTOL = 3e-5


def grads_of(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], where: str = "") -> None:
    """Every tensor of `b` equals that of `a` within GRAD_RTOL of the tensor's largest entry."""
    assert a.keys() == b.keys() and a, f"{where}: different or no gradients"
    for name in a:
        scale = a[name].abs().max().item()
        torch.testing.assert_close(
            b[name], a[name], rtol=GRAD_RTOL, atol=GRAD_RTOL * scale, msg=lambda m: f"{where} {name}: {m}".strip()
        )

# A sampler's logprobs (vLLM, or transformers' generate) vs the learner's forward pass, float32, the
# same weights: two implementations of one computation (other attention and matmul kernels), whose
# last-bit differences grow through the layers. Measured: up to 5e-7 on the tiny models, 2e-5 at 24M
# parameters. Stale weights (a prefix cached before a sync), or a distribution the learner does not
# reproduce (a temperature it ignores), differ by > 1e-2; LOGPROB_ATOL sits 5x above the largest noise.
LOGPROB_ATOL = 1e-4
