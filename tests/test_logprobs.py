"""Lean logprobs (rlvr.logprobs) against the full logits, and the precision policy (rlvr.backends)."""

from __future__ import annotations

import copy

import pytest
import torch

from numerics import assert_same_gradients, grads_of
from rlvr.backends import ModelTrainer
from rlvr.learner import PPOLearner, make_batch
from rlvr.config import LearnerConfig, PPOConfig
from rlvr.logprobs import check_lean_model, checkpointed_head_logprobs, head_logprobs
from rlvr.ppo import entropy_from_logits, token_logprobs


def _full(h, w, t, temperature):
    z = (h @ w.T) / temperature
    return token_logprobs(z, t), entropy_from_logits(z)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_head_equals_full_logits_with_gradients(temperature, entropy_grad):
    """37 rows in chunks of 8 (the last one short): values and both gradients within 1e-5 of autograd
    through full logits, for a loss mixing logprobs and (when asked) entropies with random weights."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=gen).requires_grad_()
    w = torch.randn(50, 16, generator=gen).requires_grad_()
    t = torch.randint(0, 50, (37,), generator=gen)
    a, b = torch.randn(37, generator=gen), torch.randn(37, generator=gen)
    results = []
    for fn in (lambda: head_logprobs(h, w, t, temperature, 8, entropy_grad), lambda: _full(h, w, t, temperature)):
        logp, ent = fn()
        loss = (logp * a).sum() + ((ent * b).sum() if entropy_grad else 0.0)
        results.append((logp, ent, *torch.autograd.grad(loss, (h, w))))
    for got, want in zip(results[0], results[1]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert results[0][1].requires_grad == entropy_grad


def test_checkpointed_module_path_equals_the_fused_one():
    head = torch.nn.Linear(16, 50, bias=False)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(21, 16, generator=gen).requires_grad_()
    t = torch.randint(0, 50, (21,), generator=gen)
    outs = []
    for fn in (lambda: head_logprobs(h, head.weight, t, 0.7, 4, True), lambda: checkpointed_head_logprobs(head, h, t, 0.7, 4, True)):
        logp, ent = fn()
        outs.append((logp, ent, *torch.autograd.grad(logp.sum() + 0.3 * ent.sum(), (h, head.weight))))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("hub_model_dir", ["chatml"], indirect=True)
def test_learner_logprobs_lean_vs_full_on_a_hub_like_model(hub_model_dir):
    """A byte-level BPE Qwen2 (untied head), batch with left-padded prompts: the learner's lean and full
    logprobs at temperature 0.7 agree within 1e-5, and so do the parameter gradients of the policy loss."""
    from test_ppo_math import _random_rollouts

    from rlvr.models import load_policy

    policy = load_policy(hub_model_dir)
    batch = make_batch(_random_rollouts(10, policy.config.vocab_size, seed=3), pad_id=0)
    adv = torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(4)) * batch.mask
    out = {}
    for lean in (False, True):
        model = copy.deepcopy(policy)
        learner = PPOLearner(model, None, None, PPOConfig(micro_batch_size=4, entropy_coef=0.01), 1, 0, temperature=0.7, learner=LearnerConfig(lean_logprobs=lean, logprob_chunk_tokens=7))
        logp = learner.logprobs(model, batch)
        model.train()
        lp, ent = learner.token_logprobs(model, batch, entropy_grad=True)
        ((lp * adv).sum() + 0.01 * (ent * batch.mask).sum()).backward()
        out[lean] = (logp, ent * batch.mask, grads_of(model))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=0, atol=1e-5)
    assert_same_gradients(out[False][2], out[True][2], where="lean vs full")


def test_lean_logprobs_refuse_transformed_logits(tiny_model_dir):
    from rlvr.models import load_policy

    model = load_policy(tiny_model_dir)
    check_lean_model(model)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping.*lean_logprobs: false"):
        check_lean_model(model)


def test_fp32_master_weights_keep_updates_that_bf16_rounds_away(tiny_model_dir):
    """20 AdamW steps at lr 1e-6 (each ~1e-6 per weight, far below bf16's spacing of ~1e-4 at the
    weights' size 0.02): the float32 master weights of the torch backend (bf16 autocast) all move and
    their bf16 copy, what the rollout engine loads, follows them; the same steps on bf16 weights are
    rounded away almost everywhere."""
    from rlvr.models import load_policy

    model = load_policy(tiny_model_dir)
    ids = torch.randint(4, model.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    total = sum(v.numel() for v in init.values())

    master = copy.deepcopy(model)
    trainer = ModelTrainer(master, lambda params: torch.optim.AdamW(params, lr=1e-6), lambda step: 1.0, 1.0, torch.bfloat16)
    for _ in range(20):
        trainer.zero_grad()
        with trainer.autocast():
            loss = master(input_ids=ids, labels=ids).loss
        assert loss.dtype == torch.float32 and master.model.embed_tokens.weight.dtype == torch.float32
        trainer.backward(loss)
        trainer.step()
    now = master.state_dict()
    assert sum((now[k] != init[k]).sum().item() for k in init) == total
    copy_bf16 = dict(trainer.full_weights(torch.bfloat16))
    assert all(torch.equal(copy_bf16[k], now[k].to(torch.bfloat16)) for k in init)
    assert sum((copy_bf16[k] != init[k].to(torch.bfloat16)).sum().item() for k in init) > 0.2 * total

    pure = copy.deepcopy(model).to(torch.bfloat16)
    opt = torch.optim.AdamW(pure.parameters(), lr=1e-6)
    for _ in range(20):
        opt.zero_grad()
        pure(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    changed = sum((pure.state_dict()[k] != init[k].to(torch.bfloat16)).sum().item() for k in init)
    assert changed < 0.05 * total


def test_gpu_check_script_runs_on_the_cpu_at_small_shapes(tmp_path):
    """scripts/gpu_check.py is run once on a GPU machine; here every section runs at small shapes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(repo / "scripts/gpu_check.py"), "--small", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all("error" not in v for v in (result["env"], result["tiny_task"], result["stages"], *result["learner"])), json.dumps(result)[:3000]
    assert result["tiny_task"]["greedy_after"] > result["tiny_task"]["greedy_before"]
    runs = {(r["path"], r["backend"]): r for r in result["learner"]}
    assert len(result["learner"]) == 7 and {"deepspeed-zero0", "deepspeed-zero3"} <= {b for _, b in runs}
    old, new = runs[("old", "torch")], runs[("new", "torch")]
    assert new["tokens_real"] == old["tokens_real"] and new["tokens_computed"] < old["tokens_computed"]
    assert result["stages"]["sft_eval_loss"][1] < result["stages"]["sft_eval_loss"][0]
