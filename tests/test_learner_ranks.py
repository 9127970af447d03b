"""The DeepSpeed backend against the torch one: 1 rank and 2 gloo ranks under ZeRO 2 and 3.

tests/learner_ranks.py runs one PPOLearner.update (policy with entropy bonus and k3 KL in the loss,
critic, 2 minibatches of 3 micro-batches, SGD) under torchrun. Every path must give the torch
backend's scores, statistics and updated weights within 1e-5 (measured: at most 8e-7): the sums
are the same up to float32 reordering across ranks and shards, and SGD does not amplify it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _torchrun(nproc: int, model_dir: Path, out: Path, *stages: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    proc = subprocess.run([*cmd, str(HERE / "learner_ranks.py"), str(model_dir), str(out), *stages], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory):
    one, two = tmp_path_factory.mktemp("rank1"), tmp_path_factory.mktemp("rank2")
    _torchrun(1, tiny_model_dir, one, "torch", "torchbf16", "0", "2", "3")
    _torchrun(2, tiny_model_dir, two, "1", "2", "3", "3o", "1bf16", "3bf16")
    load = lambda p: torch.load(p, weights_only=False)  # noqa: E731
    return load(one / "torch.pt"), load(one / "torchbf16.pt"), load(two / "zero1bf16.pt"), load(two / "zero3bf16.pt"), {
        "1 rank, ZeRO 0": load(one / "zero0.pt"),
        "2 ranks, ZeRO 1": load(two / "zero1.pt"),
        "1 rank, ZeRO 2": load(one / "zero2.pt"),
        "1 rank, ZeRO 3": load(one / "zero3.pt"),
        "2 ranks, ZeRO 2": load(two / "zero2.pt"),
        "2 ranks, ZeRO 3": load(two / "zero3.pt"),
        "2 ranks, ZeRO 3, optimizer and parameters offloaded": load(two / "zero3o.pt"),
    }


@pytest.mark.parametrize(
    "path", ["1 rank, ZeRO 0", "2 ranks, ZeRO 1", "1 rank, ZeRO 2", "1 rank, ZeRO 3", "2 ranks, ZeRO 2", "2 ranks, ZeRO 3", "2 ranks, ZeRO 3, optimizer and parameters offloaded"]
)
def test_deepspeed_ranks_give_the_torch_update(results, path, tiny_model_dir):
    ref, *_, runs = results
    got = runs[path]
    for key in ("old_logp", "ref_logp", "values"):
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-5, msg=lambda m: f"{path} {key}: {m}")
    assert sorted(got["stats"]) == sorted(ref["stats"])
    for key, value in ref["stats"].items():
        assert got["stats"][key] == pytest.approx(value, rel=0, abs=1e-5), f"{path} {key}"
    # under ZeRO-3 a tied LM head is one parameter with the embedding (the engine ties it on load)
    missing = set(ref["weights"]) - set(got["weights"])
    assert missing <= {"policy.lm_head.weight"}
    for name in got["weights"]:
        torch.testing.assert_close(got["weights"][name], ref["weights"][name], rtol=0, atol=1e-5, msg=lambda m: f"{path} {name}: {m}")
    # the update did something: the weights moved well beyond the tolerance
    from rlvr.models import load_policy

    init = load_policy(tiny_model_dir).state_dict()
    assert max((ref["weights"][f"policy.{k}"] - v).abs().max().item() for k, v in init.items()) > 1e-3


def test_bf16_on_two_deepspeed_ranks_gives_the_torch_backends_bf16_update(results):
    """bf16 compute over float32 master weights: DeepSpeed's bf16 mode on 2 ranks (ZeRO 1 and 3) against
    the torch backend's autocast on one. The forward passes round differently (DeepSpeed holds every
    weight in bf16, norms included; autocast casts only matmul inputs), so they agree to bf16's
    precision (unit roundoff 2^-8 = 3.9e-3): statistics within 1e-2 relative (measured up to 1.1e-3;
    a lost or doubled micro-batch moves the gradient norm by 10-40%); weights within 2 bf16 ulps (the
    engine gets bf16 copies, the torch backend's are float32) plus 2e-5 for the two SGD steps' bf16
    gradient noise near zero (measured 4.6e-6; a lost micro-batch's update is lr x g ~ 1e-3)."""
    _, ref, *bf16, _ = results
    for got in bf16:
        for key, value in ref["stats"].items():
            assert got["stats"][key] == pytest.approx(value, rel=1e-2, abs=1e-5), key
        for name, w in got["weights"].items():
            torch.testing.assert_close(w, ref["weights"][name], rtol=2 * 2**-8, atol=2e-5, msg=lambda m: f"{name}: {m}")


def test_rlvr_train_on_two_zero3_ranks_equals_one_rank_and_resumes(tmp_path):
    """`rlvr train` with learner.world_size 2 under ZeRO-3 (it launches its two ranks; rank 0 runs the
    loop, the transformers engine and the verifiers): stopped at step 2 and resumed from the
    checkpoint (full gathered weights plus each rank's DeepSpeed shard), it logs the rewards of the
    same seed run on one rank and its losses within 1e-5; after every update the engine's logprobs
    equal the learner's, so the weights gathered from the two ranks' shards reached it."""
    import json

    from numerics import LOGPROB_ATOL

    repo = HERE.parent
    args = [sys.executable, "-m", "rlvr.cli", "train", "--config", str(repo / "experiments/tiny/kinds.yaml"), "--no-progress",
            "--output_dir", str(tmp_path), "--learner.backend", "deepspeed", "--learner.zero_stage", "3",
            "--rollout.engine", "hf", "--train.steps", "4", "--train.eval_every", "2", "--train.checkpoint_every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--name", "one"], ["--name", "two", "--learner.world_size", "2", "--train.stop_at", "2"],
                  ["--name", "two", "--learner.world_size", "2", "--resume"]):
        proc = subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=600, cwd=repo)
        assert proc.returncode == 0, proc.stderr[-4000:]

    def steps(name):
        rows = [json.loads(line) for line in (tmp_path / name / "seed_0" / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if "loss/policy" in r}

    one, two = steps("one"), steps("two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step]["reward/mean"] == pytest.approx(one[step]["reward/mean"], abs=1e-6), step
        for key in ("loss/policy", "loss/value", "policy/grad_norm"):
            assert two[step][key] == pytest.approx(one[step][key], abs=1e-5), (step, key)
        assert two[step]["rollout/sampler_logprob_diff"] <= LOGPROB_ATOL
    ckpt = tmp_path / "two" / "seed_0" / "checkpoints" / "step_4"
    shards = sorted(p.name for p in (ckpt / "learner_policy" / "state").glob("*optim_states.pt"))
    assert len(shards) == 2 and (ckpt / "learner_critic" / "state").is_dir()
    from safetensors.torch import load_file

    weights = load_file(ckpt / "policy" / "model.safetensors")
    assert weights["model.embed_tokens.weight"].numel() > 0 and weights["model.embed_tokens.weight"].dtype == torch.float32
    assert json.loads((tmp_path / "two" / "seed_0" / "summary.json").read_text())["steps"] == 4
