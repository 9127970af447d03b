"""Rejection-sampling fine-tuning (expert iteration): sample, keep what the verifier passes,
fine-tune on it, repeat.

    rlvr rft --config experiments/tiny/rft.yaml --model.name_or_path runs/.../policy

Each round: `prompts_per_round` training prompts, `samples_per_prompt` completions each at the
sampling temperature, scored by the verifiers; up to `keep_per_prompt` distinct passing
completions per prompt are kept (round_<r>/kept.jsonl) and the model is fine-tuned on them for
`optim.steps` steps (next-token loss on the completion tokens only, the prompt exactly as the
sampler saw it), continuing from the previous round's weights with a fresh optimizer. The
held-out set is evaluated before round 1 and after every round, logged at step = round, as
`eval/heldout/*` (the tags `rlvr train` uses), so `rlvr compare` sets RFT beside the RL runs.

Run folder: config.yaml, TensorBoard events, metrics.jsonl, round_<r>/{kept.jsonl, policy/}
(written whole, then renamed), summary.json. Running the command again with --resume skips
finished rounds. A round in which nothing passes leaves the model unchanged (and says so).
"""

from __future__ import annotations


import json
import shutil
import sys
import time

import torch

from rlvr.config import RFTConfig, check_resume, to_yaml
from rlvr.learner import make_batch, response_logits
from rlvr.ppo import token_logprobs
from rlvr.rollouts import Rollout


def select_verified(rollouts: list[Rollout], scores: list[float], n: int, keep: int, threshold: float) -> list[tuple[int, Rollout]]:
    """(prompt position, rollout) of up to `keep` distinct passing completions per prompt, in sample order."""
    out = []
    for p in range(len(rollouts) // n):
        seen: set[str] = set()
        for j in range(n):
            r = rollouts[p * n + j]
            if scores[p * n + j] >= threshold and r.text not in seen and len(seen) < keep:
                seen.add(r.text)
                out.append((p, r))
    return out


def _completion_logprobs(policy, mb, lean: bool) -> torch.Tensor:
    from rlvr.logprobs import lean_logprobs

    return lean_logprobs(policy, mb, 1.0, 1024, False)[0] if lean else token_logprobs(response_logits(policy, mb), mb.response_ids)


def sft_step(policy, rollouts: list[Rollout], pad_id: int, micro_batch_size: int, device, trainer=None, lean: bool = False) -> tuple[float, int]:
    """Accumulate the gradient of the mean NLL over every completion token of `rollouts`
    (micro-batches add up to one pass); returns (loss, tokens). `trainer` (rlvr.backends): its
    precision and backward; `lean`: lean logprobs (rlvr.logprobs)."""
    total = sum(len(r.completion_ids) for r in rollouts)
    loss_sum = 0.0
    for start in range(0, len(rollouts), micro_batch_size):
        mb = make_batch(rollouts[start : start + micro_batch_size], pad_id).to(device)
        logp = trainer.call(_completion_logprobs, mb, lean) if trainer is not None else _completion_logprobs(policy, mb, lean)
        loss = -(logp * mb.mask).sum() / total
        if trainer is None:
            loss.backward()
        else:
            trainer.backward(loss, last=start + micro_batch_size >= len(rollouts))
        loss_sum += loss.item()
    return loss_sum, total


def run_rft(cfg: RFTConfig, resume: bool = False, progress: bool = True) -> dict:
    from rlvr.models import DTYPES, check_model, initial_model, learner_device, load_policy, load_tokenizer
    from rlvr.rollouts import Sampling, derive_seed, make_engine
    from rlvr.runlog import RunLogger
    from rlvr.stages.lm import make_trainer_for
    from rlvr.trainer import EvalSpec, Prompts, RunExistsError, evaluate, prepare_data, seed_everything
    from rlvr.data import PromptSampler, encode_prompts
    from rlvr.verifiers import VerifierPool

    run_dir = cfg.run_dir
    if not resume and (run_dir / "config.yaml").exists():
        raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or change name/seed")
    if resume:
        check_resume(run_dir, cfg)
    train_rows, heldout_rows, text = prepare_data(cfg)
    if cfg.model.name_or_path:
        check_model(cfg.model.name_or_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    done = 0
    while (run_dir / f"round_{done + 1}" / "policy" / "config.json").exists() and done < cfg.rounds:
        done += 1
    init = initial_model(cfg, run_dir, text)
    path = str(run_dir / f"round_{done}" / "policy") if done else init
    seed_everything(derive_seed(cfg.seed, done))
    tokenizer = load_tokenizer(path)
    device = learner_device()
    policy = load_policy(path, "float32").to(device)  # float32 master weights; the engine gets model.dtype
    s, d = cfg.sampling, cfg.data
    train = Prompts(train_rows, encode_prompts(train_rows, tokenizer, d.max_prompt_tokens, "train"))
    heldout = Prompts(heldout_rows, encode_prompts(heldout_rows, tokenizer, d.max_prompt_tokens, "eval"))
    sampler = PromptSampler(len(train_rows), cfg.seed)
    for _ in range(done):  # the prompts earlier rounds used
        sampler.take(cfg.prompts_per_round)
    spec = EvalSpec(s.max_new_tokens, s.temperature, s.top_p, cfg.eval_samples, cfg.pass_threshold, 2, cfg.seed)
    engine = make_engine(
        s.engine, path, dtype=cfg.model.dtype, max_model_len=d.max_prompt_tokens + s.max_new_tokens,
        kv_cache_mb=s.kv_cache_mb, gpu_memory_utilization=s.gpu_memory_utilization, seed=cfg.seed,
    )
    scorer = VerifierPool(cfg.verify.workers, cfg.verify.timeout_s, cfg.verifier_files, cfg.verify.max_memory_mb)
    log = RunLogger(run_dir, resume_step=done)
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if done and history_path.exists() else {"evals": {}}
    t0 = time.perf_counter()
    try:
        if done == 0:
            metrics, samples = evaluate(engine, scorer, heldout, spec, 0)
            history["evals"]["0"] = metrics
            log.scalars(0, metrics)
            log.text("eval/samples", "\n\n".join(samples), 0)
        for r in range(done + 1, cfg.rounds + 1):
            m: dict[str, float] = {}
            # 1. sample and verify
            t = time.perf_counter()
            idx = sampler.take(cfg.prompts_per_round)
            n = cfg.samples_per_prompt
            rollouts = engine.generate([train.ids[i] for i in idx], Sampling(s.max_new_tokens, s.temperature, s.top_p, derive_seed(cfg.seed, r, 7)), n)
            scored = scorer.score([x.text for x in rollouts], [train_rows[i] for i in idx for _ in range(n)])
            kept = select_verified(rollouts, scored.scores, n, cfg.keep_per_prompt, cfg.pass_threshold)
            m["time/sample_s"] = time.perf_counter() - t
            m["rft/sample_pass_rate"] = sum(x >= cfg.pass_threshold for x in scored.scores) / len(rollouts)
            m["rft/kept"] = len(kept)
            m["rft/prompts_with_kept"] = len({p for p, _ in kept}) / len(idx)
            m.update(scored.metrics(cfg.pass_threshold))
            out = run_dir / f"round_{r}"
            tmp = run_dir / f".tmp_round_{r}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with (tmp / "kept.jsonl").open("w") as f:
                for p, x in kept:
                    row = train_rows[idx[p]]
                    f.write(json.dumps({"prompt": row.get("prompt") or row.get("messages"), "completion": x.text,
                                        "prompt_ids": x.prompt_ids, "completion_ids": x.completion_ids}) + "\n")

            # 2. fine-tune on what passed
            t = time.perf_counter()
            if kept:
                data = [x for _, x in kept]
                o = cfg.optim
                trainer = make_trainer_for(policy, o, o.steps, cfg.model.dtype, cfg.learner)  # a fresh optimizer each round
                gen = torch.Generator().manual_seed(derive_seed(cfg.seed, r, 8))
                order: list[int] = []
                losses = []
                policy.train()
                for _ in range(o.steps):
                    if len(order) < o.batch_size:
                        order += torch.randperm(len(data), generator=gen).tolist() * max(1, -(-o.batch_size // len(data)))
                    batch, order = [data[i] for i in order[: o.batch_size]], order[o.batch_size :]
                    trainer.zero_grad()
                    loss, _ = sft_step(policy, batch, tokenizer.pad_token_id, o.micro_batch_size, device, trainer, cfg.learner.lean_logprobs)
                    trainer.step()
                    losses.append(loss)
                policy.eval()
                m["loss/sft_first"], m["loss/sft_last"] = losses[0], losses[-1]
                engine.load_weights(trainer.full_weights(DTYPES[cfg.model.dtype]))
            else:
                print(f"[{cfg.name} seed {cfg.seed}] round {r}: no sample passed; the model is unchanged", file=sys.stderr)
            m["time/finetune_s"] = time.perf_counter() - t
            policy.save_pretrained(tmp / "policy")
            tokenizer.save_pretrained(tmp / "policy")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)

            # 3. held-out evaluation
            metrics, samples = evaluate(engine, scorer, heldout, spec, r)
            m.update(metrics)
            history["evals"][str(r)] = metrics
            history_path.write_text(json.dumps(history))
            log.scalars(r, m)
            log.text("eval/samples", "\n\n".join(samples), r)
            print(f"[{cfg.name} seed {cfg.seed}] round {r}/{cfg.rounds}: kept {len(kept)} of {len(rollouts)} samples, "
                  f"held-out greedy {metrics['eval/heldout/greedy_pass_rate']:.3f}, sampled {metrics['eval/heldout/sampled_pass_rate']:.3f}",
                  file=sys.stderr, flush=True)
    finally:
        log.close()
        engine.close()
        scorer.close()
    summary = {
        "experiment": cfg.name,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "initial": history["evals"].get("0"),
        "final": history["evals"].get(str(cfg.rounds)),
        "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
        "final_model": str(run_dir / f"round_{cfg.rounds}" / "policy"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
