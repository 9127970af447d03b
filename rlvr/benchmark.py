"""The learner benchmark: one PPOLearner.update on a fixed batch of rollouts, old path beside new.

Used by scripts/bench_learner.py (CPU) and scripts/gpu_check.py (a GPU machine). A randomly
initialised Qwen2 of a given shape; rollouts of a fixed prompt length and uniformly random
response lengths; no critic, no reference (as the figures in the issue tracker were taken).

- old: fixed micro-batches over the batch's full width, logits of every position ([B, T, V]
  float32, with their log-softmax and entropy kept for the backward pass);
- new: micro-batches of length-sorted rollouts cut by a token budget, lean chunked logprobs.

Reported: seconds of the update, tokens computed (positions through the model, padding included)
and real, model-FLOPs utilisation on real tokens (6 N per token, N all parameters) when a peak is
known, and peak memory (GPU: allocated; CPU: the process's peak RSS, so run each path in its own
process).
"""

from __future__ import annotations

import random
import resource
import time

import torch

SHAPES = {
    # Qwen2.5-0.5B: 494M parameters, 64 rollouts of 128 + 224..896 tokens
    "qwen2.5-0.5b": dict(vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, tie=True, rollouts=64, prompt=128, response=(224, 896)),
    "cpu": dict(vocab=32000, hidden=256, layers=4, heads=4, kv_heads=4, ffn=1024, tie=True, rollouts=32, prompt=64, response=(1, 512)),
    "test": dict(vocab=512, hidden=64, layers=2, heads=2, kv_heads=2, ffn=128, tie=True, rollouts=8, prompt=8, response=(1, 24)),
}
PATHS = {
    "old": dict(lean_logprobs=False, max_tokens=0),
    "new": dict(lean_logprobs=True, max_tokens=-1),  # -1: the shape's budget (budget_tokens)
}
PEAK_TFLOPS = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA A100-SXM4-80GB": 312.0}


def build_model(shape: dict, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["ffn"],
        tie_word_embeddings=shape["tie"],
        max_position_embeddings=shape["prompt"] + shape["response"][1] + 8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def make_rollouts(shape: dict, seed: int = 0):
    from rlvr.rollouts import Rollout

    rng = random.Random(seed)
    lo, hi = shape["response"]
    out = []
    for _ in range(shape["rollouts"]):
        prompt = [rng.randrange(1, shape["vocab"]) for _ in range(shape["prompt"])]
        completion = [rng.randrange(1, shape["vocab"]) for _ in range(rng.randint(lo, hi))]
        out.append(Rollout(prompt, completion, "", [0.0] * len(completion), "length"))
    return out


def measure(
    shape_name: str,
    path: str,
    backend: str = "torch",
    zero_stage: int = 0,
    dtype: str = "float32",
    micro_batch_size: int = 8,
    budget_tokens: int = 4096,
    gradient_checkpointing: bool = False,
    repeats: int = 1,
) -> dict:
    """One measured PPOLearner.update (after one warm-up update on a GPU); returns the figures."""
    from rlvr.config import LearnerConfig, PPOConfig
    from rlvr.learner import PPOLearner, make_batch
    from rlvr.models import DTYPES, learner_device, num_params

    shape, opts = SHAPES[shape_name], PATHS[path]
    device = learner_device()
    cuda = device.type == "cuda"
    model = build_model(shape).to(device)
    n_params = num_params(model)
    rollouts = make_rollouts(shape)
    batch = make_batch(rollouts, pad_id=0)
    cfg = PPOConfig(
        micro_batch_size=micro_batch_size,
        max_tokens_per_micro_batch=budget_tokens if opts["max_tokens"] < 0 else opts["max_tokens"],
        kl_coef=0.0,
        lr=1e-6,
    )
    lcfg = LearnerConfig(backend=backend, zero_stage=zero_stage, lean_logprobs=opts["lean_logprobs"], gradient_checkpointing=gradient_checkpointing)
    learner = PPOLearner(model, None, None, cfg, total_steps=100, pad_id=0, learner=lcfg, compute_dtype=DTYPES[dtype])
    old_logp = learner.logprobs(learner.policy, batch)
    adv = torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(0)) * batch.mask
    if cuda:
        learner.update(batch, adv, None, old_logp, None, None)  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        learner.tokens_computed = 0
        t0 = time.perf_counter()
        learner.update(batch, adv, None, old_logp, None, None)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    tokens_real = int(batch.attention_mask.sum())
    out = {
        "shape": shape_name,
        "path": path,
        "backend": backend if backend == "torch" else f"deepspeed-zero{zero_stage}",
        "dtype": dtype,
        "params": n_params,
        "seconds": round(seconds, 3),
        "tokens_computed": learner.tokens_computed,
        "tokens_real": tokens_real,
        "computed_per_real": round(learner.tokens_computed / tokens_real, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if cuda:
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = PEAK_TFLOPS.get(torch.cuda.get_device_name())
        if peak:
            out["mfu_real"] = round(6 * n_params * tokens_real / seconds / (peak * 1e12), 4)
    return out
