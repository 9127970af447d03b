"""One PPOLearner.update on a fixed batch, for tests/test_learner_ranks.py.

Run under torchrun with 1 or 2 ranks: `torchrun --nproc_per_node 2 tests/learner_ranks.py MODEL OUT
[zero stages...]` (3o: ZeRO 3 with offloading); for each ZeRO stage it runs the same update under DeepSpeed (SGD, float32,
gloo) and rank 0 writes the statistics and the updated full weights to OUT/zero<stage>.pt. With
`torch` in place of the stages it runs the plain torch backend in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def run(model_dir: str, backend: str, zero: int, offload: bool = False, dtype: torch.dtype = torch.float32) -> dict:
    from test_ppo_math import SGD_LR, _off_policy, _random_rollouts

    from rlvr.config import LearnerConfig, PPOConfig
    from rlvr.learner import PPOLearner, make_batch
    from rlvr.models import load_critic, load_policy

    policy, critic, ref = load_policy(model_dir), load_critic(model_dir, from_policy=True), load_policy(model_dir)
    batch = make_batch(_random_rollouts(12, policy.config.vocab_size, seed=4), pad_id=0)
    gen = torch.Generator().manual_seed(5)
    adv = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    ret = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    cfg = PPOConfig(num_minibatches=2, micro_batch_size=2, kl_penalty="loss", kl_estimator="k3", kl_coef=0.1, entropy_coef=0.01)
    learner = PPOLearner(
        policy, critic, ref, cfg, total_steps=1, pad_id=0, max_new_tokens=batch.mask.shape[1],
        learner=LearnerConfig(backend=backend, zero_stage=zero, offload_optimizer=offload, offload_params=offload, zero3_persistence_threshold=0), compute_dtype=dtype, make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=SGD_LR),
    )
    old_logp = _off_policy(learner.logprobs(learner.policy, batch), batch.mask, seed=6)
    ref_logp = learner.logprobs(ref, batch)
    old_values = learner.values(batch)
    stats = learner.update(batch, adv, ret, old_logp, old_values, ref_logp, generator=torch.Generator().manual_seed(7))
    weights = {f"policy.{k}": v for k, v in learner.policy_weights(torch.float32)}
    weights.update({f"critic.{k}": v for k, v in learner.critic_trainer.full_weights(torch.float32)})
    return {"stats": stats, "old_logp": old_logp, "ref_logp": ref_logp, "values": old_values, "weights": weights}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    model_dir, out, stages = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    for stage in stages:
        # "torch": the torch backend; "0".."3": that ZeRO stage (under ZeRO 3 every parameter is partitioned,
        # persistence threshold 0, so every forward gathers); "3o": ZeRO 3 with optimizer and parameters offloaded
        # "...bf16": computed in bfloat16 over float32 master weights
        dtype = torch.bfloat16 if stage.endswith("bf16") else torch.float32
        if stage.startswith("torch"):
            result = run(model_dir, "torch", 0, dtype=dtype)
        else:
            result = run(model_dir, "deepspeed", int(stage[0]), stage[1:2] == "o", dtype)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            torch.save(result, out / f"{stage if stage.startswith('torch') else 'zero' + stage}.pt")
