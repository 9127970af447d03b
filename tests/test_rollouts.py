"""Rollout engines: vLLM's sampler logprobs equal the learner's; weight sync really changes the engine."""

import copy

import pytest
import torch

from numerics import LOGPROB_ATOL
from rlvr.learner import PPOLearner, make_batch
from rlvr.config import PPOConfig
from rlvr.models import load_policy, load_tokenizer
from rlvr.rollouts import Sampling, derive_seed
from rlvr.tasks import TOPICS


def learner_logprobs(model, rollouts, temperature=1.0):
    learner = PPOLearner(model, None, None, PPOConfig(micro_batch_size=16), total_steps=1, pad_id=0, temperature=temperature)
    batch = make_batch(rollouts, pad_id=0)
    return learner.logprobs(model, batch), batch.mask


def sampler_logprobs(rollouts, mask):
    out = torch.zeros_like(mask)
    for i, r in enumerate(rollouts):
        out[i, : len(r.sampler_logprobs)] = torch.tensor(r.sampler_logprobs)
    return out


def prompts(tokenizer, k, words=6, offset=0):
    return [tokenizer(" ".join(TOPICS[(i + j + offset) % len(TOPICS)] for j in range(words)) + " : write only digits")["input_ids"] for i in range(k)]


def test_vllm_rollout_fields_and_seeding(vllm_engine, tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    ids = prompts(tok, 3)
    s = Sampling(max_new_tokens=6, seed=11)
    a = vllm_engine.generate(ids, s, n=4)
    assert len(a) == 12
    for i, r in enumerate(a):
        assert r.prompt_ids == ids[i // 4]
        assert 1 <= len(r.completion_ids) <= 6 and len(r.sampler_logprobs) == len(r.completion_ids)
        assert r.finish_reason in ("stop", "length")
        # (word-level tokens: vLLM's incremental detokenizer keeps the joining space in front)
        assert r.text.strip() == tok.decode(r.completion_ids, skip_special_tokens=True).strip()
    # same seed, same samples; another seed, other samples
    assert [r.completion_ids for r in vllm_engine.generate(ids, s, n=4)] == [r.completion_ids for r in a]
    b = vllm_engine.generate(ids, Sampling(max_new_tokens=6, seed=12), n=4)
    assert [r.completion_ids for r in b] != [r.completion_ids for r in a]
    # the n samples of one prompt differ from each other
    assert len({tuple(r.completion_ids) for r in a[:4]}) > 1


def test_derive_seed_is_not_consecutive():
    seeds = [derive_seed(0, step) for step in range(100)]
    assert len(set(seeds)) == 100
    assert all(abs(a - b) > 1000 for a, b in zip(seeds, seeds[1:]))


def test_vllm_logprobs_equal_learner_logprobs_before_any_update(vllm_engine, tiny_model_dir):
    policy = load_policy(tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))
    rollouts = vllm_engine.generate(prompts(tok, 8) + prompts(tok, 8, words=3), Sampling(max_new_tokens=12, seed=3), n=2)
    ours, mask = learner_logprobs(policy, rollouts)
    diff = ((ours - sampler_logprobs(rollouts, mask)).abs() * mask).max().item()
    assert diff <= LOGPROB_ATOL, diff
    assert mask.sum() > 100


@pytest.mark.parametrize("engine_kind", ["vllm", "hf"])
def test_weight_sync_serves_new_weights_even_for_cached_prefixes(engine_kind, vllm_engine, tiny_model_dir):
    """After load_weights, logprobs match the new weights, not the old, for a prompt whose
    long prefix was in the engine's prefix cache before the sync."""
    from rlvr.rollouts import make_engine

    engine = vllm_engine if engine_kind == "vllm" else make_engine("hf", str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    old = load_policy(tiny_model_dir)
    new = copy.deepcopy(old)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    long_prefix = prompts(tok, 1, words=300)[0]  # > 2 KV-cache blocks, so the prefix cache holds it
    assert len(long_prefix) > 300
    sampling = Sampling(max_new_tokens=8, seed=5)
    try:
        engine.generate([long_prefix], sampling, n=2)  # fills the prefix cache with the old weights
        engine.load_weights(new.state_dict().items())
        after = engine.generate([long_prefix], sampling, n=2)
        new_lp, mask = learner_logprobs(new, after)
        old_lp, _ = learner_logprobs(old, after)
        got = sampler_logprobs(after, mask)
        assert ((got - new_lp).abs() * mask).max().item() <= LOGPROB_ATOL
        assert ((got - old_lp).abs() * mask).max().item() > 0.05
    finally:
        engine.load_weights(old.state_dict().items())  # the session engine goes back to the fixture's weights
    back = engine.generate([long_prefix], sampling, n=2)
    lp, mask = learner_logprobs(old, back)
    assert ((sampler_logprobs(back, mask) - lp).abs() * mask).max().item() <= LOGPROB_ATOL


def test_prefix_cache_reset_is_what_makes_the_sync_correct(vllm_engine, tiny_model_dir, monkeypatch):
    """Without resetting the prefix cache, the cached prompt is served with stale KV entries:
    this shows the previous test can fail."""
    tok = load_tokenizer(str(tiny_model_dir))
    old = load_policy(tiny_model_dir)
    new = copy.deepcopy(old)
    with torch.no_grad():
        for p in new.parameters():
            p.mul_(1.3)
    long_prefix = prompts(tok, 1, words=300, offset=3)[0]
    sampling = Sampling(max_new_tokens=4, seed=9)
    llm = vllm_engine.llm
    monkeypatch.setattr(llm, "reset_prefix_cache", lambda *a, **k: True)
    try:
        vllm_engine.generate([long_prefix], sampling, n=1)
        vllm_engine.load_weights(new.state_dict().items())
        stale = vllm_engine.generate([long_prefix], sampling, n=1)
        new_lp, mask = learner_logprobs(new, stale)
        assert ((sampler_logprobs(stale, mask) - new_lp).abs() * mask).max().item() > 1e-3
    finally:
        monkeypatch.undo()
        vllm_engine.load_weights(old.state_dict().items())


def test_hf_engine_has_the_same_interface_and_logprobs(tiny_model_dir):
    from rlvr.rollouts import make_engine

    engine = make_engine("hf", str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    ids = prompts(tok, 4) + prompts(tok, 2, words=2)
    rollouts = engine.generate(ids, Sampling(max_new_tokens=10, seed=1), n=3)
    assert len(rollouts) == 18 and all(r.prompt_ids == ids[i // 3] for i, r in enumerate(rollouts))
    lp, mask = learner_logprobs(load_policy(tiny_model_dir), rollouts)
    assert ((sampler_logprobs(rollouts, mask) - lp).abs() * mask).max().item() <= LOGPROB_ATOL
    greedy = engine.generate(ids[:2], Sampling(max_new_tokens=5, temperature=0.0), n=1)
    assert [r.completion_ids for r in greedy] == [r.completion_ids for r in engine.generate(ids[:2], Sampling(5, 0.0), 1)]



def test_seeds_draw_independent_rollouts(vllm_engine, tiny_model_dir):
    """Runs k and k+1 share no more identical completions than chance (here: none, among 8-token
    samples from a ~60-word vocabulary). With raw consecutive vLLM seeds they would: sample j of
    seed s is sample 0 of seed s + j."""
    from vllm import SamplingParams

    tok = load_tokenizer(str(tiny_model_dir))
    ids = prompts(tok, 8)
    for step in (1, 2):
        a = vllm_engine.generate(ids, Sampling(8, seed=derive_seed(0, step)), n=4)
        b = vllm_engine.generate(ids, Sampling(8, seed=derive_seed(1, step)), n=4)
        shared = {tuple(r.completion_ids) for r in a} & {tuple(r.completion_ids) for r in b}
        assert not shared
    # the trap our derived seeds avoid
    raw = lambda s: vllm_engine.llm.generate([{"prompt_token_ids": ids[0]}], SamplingParams(n=2, max_tokens=8, seed=s), use_tqdm=False)  # noqa: E731
    s0, s1 = raw(100)[0].outputs, raw(101)[0].outputs
    assert {tuple(o.token_ids) for o in s0} & {tuple(o.token_ids) for o in s1}


@pytest.mark.parametrize("engine_kind", ["vllm", "hf"])
def test_sampler_logprobs_are_of_the_distribution_sampled_from(engine_kind, vllm_engine, tiny_model_dir):
    """At temperature 0.7 the engine reports log softmax(logits / 0.7) of each sampled token, and the
    learner divides its logits by the same temperature: they agree. A learner that ignores the
    temperature does not (the check that `rollout/sampler_logprob_diff` makes every step)."""
    from rlvr.rollouts import make_engine

    engine = vllm_engine if engine_kind == "vllm" else make_engine("hf", str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    rollouts = engine.generate(prompts(tok, 8) + prompts(tok, 8, words=3), Sampling(max_new_tokens=12, temperature=0.7, seed=4), n=2)
    policy = load_policy(tiny_model_dir)
    tempered, mask = learner_logprobs(policy, rollouts, temperature=0.7)
    raw, _ = learner_logprobs(policy, rollouts, temperature=1.0)
    got = sampler_logprobs(rollouts, mask)
    assert ((got - tempered).abs() * mask).max().item() <= LOGPROB_ATOL
    assert ((got - raw).abs() * mask).max().item() > 1e-2
