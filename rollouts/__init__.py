"""Rollout engines: prompts in, sampled completions with their sampler logprobs out."""

from rlvr.rollouts.base import Rollout, RolloutEngine, Sampling, derive_seed

__all__ = ["Rollout", "RolloutEngine", "Sampling", "derive_seed", "make_engine"]


def make_engine(kind: str, model_path: str, **kwargs) -> RolloutEngine:
    """`kind`: "vllm" (in-process vllm.LLM) or "hf" (transformers generate)."""
    if kind == "vllm":
        from rlvr.rollouts.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **kwargs)
    if kind == "hf":
        from rlvr.rollouts.hf_engine import HFEngine

        return HFEngine(model_path, **kwargs)
    raise ValueError(f"unknown rollout engine {kind!r}; available: vllm, hf")
