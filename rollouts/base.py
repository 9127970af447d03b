from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0  # base seed; each prompt's sampling seed is derived from it by hashing
    first_index: int = 0  # the first prompt's index in the step's list (engines given a slice of it seed by the whole list's index)


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the EOS token when generation stopped on it
    text: str  # the completion decoded without special tokens
    sampler_logprobs: list[float]  # log pi_sampler(token) of each completion token, of the distribution sampled from (logits / temperature, after top-p)
    finish_reason: str  # "stop" or "length"
    policy_version: int = 0  # updates the weights that produced it had seen (set by the trainer or the engine actors)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a hash of `parts`.

    Per-request seeds must not be consecutive integers: vLLM's n samples of seed s are
    seeds s, s+1, ..., so consecutive base seeds would share samples across prompts or runs.
    """
    h = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


class RolloutEngine(Protocol):
    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling, n: int = 1) -> list[Rollout]:
        """`n` completions per prompt, prompt-major: rollouts[i * n + j] is sample j of prompt i."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push the learner's current weights into the engine (and drop any cached prefixes)."""
        ...

    def close(self) -> None: ...
