"""The RLVR loop, top to bottom: sample prompts -> generate -> verify -> advantages ->
PPO update -> sync weights -> log -> checkpoint.

What it keeps from Tulu 3 / open-instruct PPO: a separate critic initialised from the
policy, GAE(gamma=1, lambda=0.95), whitened advantages, the verifier score as a sparse
reward on the last token, KL to a frozen reference either as k1 in the per-token reward
or as an estimator in the loss, token-level loss aggregation. `algo.baseline` swaps the
critic for a critic-free baseline (GRPO, Dr. GRPO, RLOO, REINFORCE++; no critic is built),
and the DAPO options (dynamic sampling, overlong filter and penalty, loss aggregation) and
truncated importance sampling are opt-in `algo.*` fields. What it drops (for now): several
ranks (DeepSpeed), asynchronous generation, reward models.

One run is one seed: `runs/<experiment>/seed_<k>/` holds config.yaml, TensorBoard events,
metrics.jsonl, checkpoints/step_<n>/ and summary.json.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass

import torch

from rlvr import checkpoint as ckpt
from rlvr.baselines import compute_advantages, get_baseline
from rlvr.baselines.dapo import informative_groups, overlong_penalty
from rlvr.config import Config, ConfigError, to_dict, to_yaml
from rlvr.data import DataError, PromptSampler, encode_prompts, ground_truth_text, load_rows, normalize_rows
from rlvr.learner import PPOLearner, RankMirror, follow, make_batch
from rlvr.monitors import Monitor
from rlvr.models import DTYPES, initial_model, learner_device, load_critic, load_policy, load_tokenizer, num_params
from rlvr.ppo import KL_ESTIMATORS, masked_mean, masked_whiten, tis_weights, token_rewards
from rlvr.rollouts import Rollout, Sampling, derive_seed, make_engine
from rlvr.runlog import RunLogger
from rlvr.tasks import make_task
from rlvr.verifiers import ScoredBatch, VerifierPool, load_verifier_file


class RunExistsError(RuntimeError):
    pass


@dataclass
class Prompts:
    rows: list[dict]
    ids: list[list[int]]


@dataclass
class Collected:
    """One step's training rollouts (whole groups of n), and what every generated sample scored."""

    rollouts: list[Rollout]
    rows: list[dict]
    rewards_B: torch.Tensor  # verifier score + overlong penalty, per kept rollout
    group_ids_B: torch.Tensor
    scored: ScoredBatch  # every sample generated this step, kept or not
    rounds: int  # generation rounds (more than 1 only with dynamic sampling)
    groups_seen: int
    groups_informative: int  # groups whose rewards were not all equal


def collect_rollouts(generate, score, take, prompts_per_step: int, n: int, algo, max_new_tokens: int) -> Collected:
    """Generate and verify `prompts_per_step` groups of n samples.

    `take(k)` gives k prompt indices, `generate(indices, round)` their rollouts (prompt-major)
    and rows, `score(rollouts, rows)` a ScoredBatch. With `algo.dynamic_sampling`, groups whose
    rewards are all equal are dropped and new prompts are generated (at most
    `algo.dynamic_sampling_rounds` rounds) until `prompts_per_step` groups remain; the batch
    then never holds a zero-variance group, and may hold fewer groups if the rounds run out.
    """
    kept: list[tuple[list[Rollout], list[dict], torch.Tensor]] = []
    results, names = [], []
    rounds = seen = informative = 0
    while True:
        idx = take(prompts_per_step)
        rollouts, rows = generate(idx, rounds)
        scored = score(rollouts, rows)
        results += scored.results
        names += scored.verifier_names
        lengths = torch.tensor([len(r.completion_ids) for r in rollouts])
        rewards = torch.tensor(scored.scores, dtype=torch.float32)
        rewards = rewards + overlong_penalty(lengths, max_new_tokens, algo.overlong_buffer, algo.overlong_penalty)
        groups = torch.arange(len(idx)).repeat_interleave(n)
        useful = informative_groups(rewards, groups) if n > 1 else torch.zeros(len(idx), dtype=torch.bool)
        seen += len(idx)
        informative += int(useful.sum())
        for g in range(len(idx)):
            if useful[g] or not algo.dynamic_sampling:
                sl = slice(g * n, (g + 1) * n)
                kept.append((rollouts[sl], rows[sl], rewards[sl]))
        rounds += 1
        if not algo.dynamic_sampling or len(kept) >= prompts_per_step or rounds >= algo.dynamic_sampling_rounds:
            break
    kept = kept[:prompts_per_step]
    return Collected(
        rollouts=[r for group, _, _ in kept for r in group],
        rows=[row for _, group_rows, _ in kept for row in group_rows],
        rewards_B=torch.cat([rw for _, _, rw in kept]) if kept else torch.zeros(0),
        group_ids_B=torch.arange(len(kept)).repeat_interleave(n),
        scored=ScoredBatch(results, names),
        rounds=rounds,
        groups_seen=seen,
        groups_informative=informative,
    )


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_data(cfg: Config) -> tuple[list[dict], list[dict], list[str]]:
    """(train rows, held-out rows, tokenizer text) from the synthetic task or from files."""
    for path in cfg.verifier_files:
        load_verifier_file(path)
    d = cfg.data
    if bool(d.task) == bool(d.train):
        raise DataError("set one of data.task (a synthetic task) and data.train (rows from files or the hub)")
    if d.task:
        try:
            train, heldout = make_task(d.task, d.num_train, d.num_eval, seed=0)
        except KeyError as e:
            raise DataError(f"data.task: {e.args[0]}") from None
        # task rows may carry a demonstration for SFT; RLVR prompts drop it
        train, heldout = normalize_rows(train, d.task), normalize_rows(heldout, f"{d.task} held-out")
    else:
        train = normalize_rows(load_rows(d.train, d.train_split), d.train)
        heldout = normalize_rows(load_rows(d.eval, d.eval_split), d.eval)[: d.num_eval] if d.eval else []
    text = [r.get("prompt") or " ".join(m["content"] for m in r["messages"]) for r in train + heldout]
    text += [ground_truth_text(r["ground_truth"]) for r in train + heldout]
    if d.task == "kinds":
        from rlvr.tasks import kinds_vocabulary

        text.append(" ".join(kinds_vocabulary()))
    return train, heldout, text


@dataclass(frozen=True)
class EvalSpec:
    """How held-out prompts are evaluated (RL runs and the non-gradient baselines alike)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    samples: int = 4  # sampled completions per prompt
    pass_threshold: float = 1.0
    log_samples: int = 2
    seed: int = 0

    @classmethod
    def of(cls, cfg: Config) -> "EvalSpec":
        r, t = cfg.rollout, cfg.train
        return cls(r.max_new_tokens, r.temperature, r.top_p, t.eval_samples, t.pass_threshold, t.log_samples, cfg.seed)


def evaluate(engine, scorer: VerifierPool, prompts: Prompts, spec: EvalSpec, step: int) -> tuple[dict[str, float], list[str]]:
    """Held-out pass rate and mean score, greedy (n=1) and sampled (n=spec.samples)."""
    metrics: dict[str, float] = {}
    samples: list[str] = []
    modes = {
        "greedy": (Sampling(spec.max_new_tokens, temperature=0.0), 1),
        "sampled": (Sampling(spec.max_new_tokens, spec.temperature, spec.top_p, seed=derive_seed(spec.seed, step, 1)), spec.samples),
    }
    for mode, (sampling, n) in modes.items():
        rollouts = engine.generate(prompts.ids, sampling, n)
        rows = [r for r in prompts.rows for _ in range(n)]
        scored = scorer.score([r.text for r in rollouts], rows)
        scores = torch.tensor(scored.scores)
        metrics[f"eval/heldout/{mode}_pass_rate"] = (scores >= spec.pass_threshold).float().mean().item()
        metrics[f"eval/heldout/{mode}_score"] = scores.mean().item()
        for k, v in scored.metrics(spec.pass_threshold, prefix=f"eval/heldout_{mode}").items():
            if k.endswith("pass_rate"):
                metrics[k] = v
        if mode == "greedy":
            for row, r, s in list(zip(prompts.rows, rollouts, scored.results))[: spec.log_samples]:
                prompt = row.get("prompt") or row["messages"][-1]["content"]
                samples.append(f"**prompt** `{prompt}`  \n**completion** `{r.text}`  \n**score** {s.score:.3f} ({s.status})")
    return metrics, samples


def start_ranks(cfg: Config) -> int:
    """This process's learner rank (0 without several). `learner.world_size` N > 1 needs N processes
    launched by `rlvr train` itself or by torchrun/deepspeed (`-m rlvr.cli train ...`)."""
    n = cfg.learner.world_size
    if n == 1:
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != n:
        raise ConfigError(
            f"learner.world_size is {n} but this process was launched as one of {world}: start it with `rlvr train` "
            f"(which launches the ranks) or `torchrun --nproc_per_node {n} -m rlvr.cli train ...`"
        )
    from rlvr.backends import init_distributed

    init_distributed()
    return torch.distributed.get_rank()


def train(cfg: Config, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one seed of an experiment; returns the summary also written to summary.json."""
    run_dir = cfg.run_dir
    rank = start_ranks(cfg)
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    if rank == 0:
        if not resume and (run_dir / "config.yaml").exists():
            raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or change name/seed")
        train_rows, heldout_rows, tokenizer_text = prepare_data(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        init_path = initial_model(cfg, run_dir, tokenizer_text)
    if cfg.learner.world_size > 1:
        torch.distributed.barrier()  # rank 0 has checked the run and built the initial model
        init_path = initial_model(cfg, run_dir, [])
    seed_everything(cfg.seed)

    # --- models: policy (and the engine) from the newest checkpoint, else the initial model
    policy_path = str(last / "policy") if last else init_path
    tokenizer = load_tokenizer(policy_path)
    device = learner_device()
    # policy and critic as float32 master weights (the learner computes in model.dtype); the frozen reference in model.dtype
    policy = load_policy(policy_path, "float32").to(device)
    ref = load_policy(init_path, cfg.model.dtype).to(device) if cfg.ppo.kl_coef > 0 else None
    critic = None
    if get_baseline(cfg.algo.baseline).needs_critic:
        critic = load_critic(last / "critic", "float32") if last else load_critic(init_path, "float32", from_policy=True)
        critic = critic.to(device)
    learner = PPOLearner(
        policy,
        critic,
        ref,
        cfg.ppo,
        total_steps=cfg.train.steps,
        pad_id=tokenizer.pad_token_id,
        loss_agg=cfg.algo.loss_agg,
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        learner=cfg.learner,
        compute_dtype=DTYPES[cfg.model.dtype],
    )
    if rank > 0:
        follow(learner)  # until rank 0 stops
        return {}
    learner = RankMirror(learner)

    train_prompts = Prompts(train_rows, encode_prompts(train_rows, tokenizer, cfg.data.max_prompt_tokens, "train"))
    heldout = Prompts(heldout_rows, encode_prompts(heldout_rows, tokenizer, cfg.data.max_prompt_tokens, "eval"))
    sampler = PromptSampler(len(train_rows), cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)

    start_step = 0
    history: dict = {"first_eval": None, "last_eval": None, "wall_s": 0.0}
    monitor = Monitor(cfg.monitor)
    if last:
        state = ckpt.load_trainer_state(last)
        learner.load_state_dict(state["learner"])
        learner.load_from(last)
        sampler.load_state_dict(state["sampler"])
        shuffle.set_state(state["shuffle"])
        history = state["history"]
        monitor.load_state_dict(state["monitor"])
        start_step = state["step"]
        ckpt.set_rng_state(state["rng"])

    scorer = VerifierPool(cfg.verify.workers, cfg.verify.timeout_s, cfg.verifier_files, cfg.verify.max_memory_mb)
    engine = make_engine(
        cfg.rollout.engine,
        policy_path,
        dtype=cfg.model.dtype,
        max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        kv_cache_mb=cfg.rollout.kv_cache_mb,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        seed=cfg.seed,
    )
    log = RunLogger(run_dir, resume_step=start_step)
    if start_step == 0:
        log.text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)
        log.hparams(_flat(to_dict(cfg)), ["eval/heldout/greedy_pass_rate", "eval/heldout/sampled_pass_rate", "reward/mean"])
    kl_fn = KL_ESTIMATORS[cfg.ppo.kl_estimator]
    t_run = time.perf_counter() - history["wall_s"]

    try:
        if start_step == 0:
            metrics, samples = evaluate(engine, scorer, heldout, EvalSpec.of(cfg), 0)
            history["first_eval"] = history["last_eval"] = metrics
            log.scalars(0, {"model/params": num_params(policy), **metrics})
            log.text("eval/samples", "\n\n".join(samples), 0)
        end = min(cfg.train.steps, cfg.train.stop_at) if cfg.train.stop_at > 0 else cfg.train.steps
        bar = _progress(range(start_step + 1, end + 1), progress, cfg)
        for step in bar:
            m: dict[str, float] = {}
            # 1-2. sample prompts, generate n completions each, verify (dynamic sampling: refill)
            t = time.perf_counter()
            n = cfg.rollout.samples_per_prompt

            timed = {"verify": 0.0, "tokens": 0}

            def generate(idx: list[int], round_: int):
                seed = derive_seed(cfg.seed, step) if round_ == 0 else derive_seed(cfg.seed, step, 1, round_)
                sampling = Sampling(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, seed)
                out = engine.generate([train_prompts.ids[i] for i in idx], sampling, n)
                timed["tokens"] += sum(len(r.completion_ids) for r in out)
                return out, [train_rows[i] for i in idx for _ in range(n)]

            def score(rollouts, rows):
                t0 = time.perf_counter()
                out = scorer.score([r.text for r in rollouts], rows)
                timed["verify"] += time.perf_counter() - t0
                return out

            col = collect_rollouts(generate, score, sampler.take, cfg.rollout.prompts_per_step, n, cfg.algo, cfg.rollout.max_new_tokens)
            rollouts, scored = col.rollouts, col.scored
            scores_B = torch.tensor(scored.scores, dtype=torch.float32)  # every sample generated this step
            m["time/verify_s"] = timed["verify"]
            m["time/generate_s"] = time.perf_counter() - t - timed["verify"]
            m["rollout/tokens_per_s"] = timed["tokens"] / max(m["time/generate_s"], 1e-9)  # every round's samples
            m["rollout/groups"] = len(rollouts) // n
            m["rollout/informative_frac"] = col.groups_informative / max(col.groups_seen, 1)
            if cfg.algo.dynamic_sampling:
                m["rollout/dynamic_rounds"] = col.rounds

            stats: dict[str, float] = {}
            if rollouts:
                # 3. advantages: old/ref logprobs (and values), KL-shaped rewards, the baseline
                t = time.perf_counter()
                batch = make_batch(rollouts, tokenizer.pad_token_id)
                old_logp, ref_logp, old_values = learner.scores(batch)
                kl_BT = kl_fn(old_logp, ref_logp) * batch.mask if ref is not None else torch.zeros_like(batch.mask)
                in_reward = cfg.ppo.kl_penalty == "reward" and ref is not None
                rewards_BT = token_rewards(col.rewards_B, batch.mask, kl_BT if in_reward else None, cfg.ppo.kl_coef)
                advantages, returns = compute_advantages(
                    cfg.algo.baseline, rewards_BT, col.group_ids_B, old_values, batch.mask, cfg.ppo.gamma, cfg.ppo.lam
                )
                if cfg.ppo.whiten_advantages and critic is not None:
                    advantages = masked_whiten(advantages, batch.mask)
                sampler_lp = torch.zeros_like(batch.mask)
                for i, r in enumerate(rollouts):
                    sampler_lp[i, : len(r.sampler_logprobs)] = torch.tensor(r.sampler_logprobs)
                m["rollout/sampler_logprob_diff"] = ((sampler_lp - old_logp).abs() * batch.mask).max().item()
                m["policy/kl"] = masked_mean(kl_BT, batch.mask).item()
                m["policy/kl_seq"] = kl_BT.sum(1).mean().item()
                m["rollout/len_mean"] = batch.mask.sum(1).mean().item()
                if critic is not None:
                    m["value/mean"] = masked_mean(old_values, batch.mask).item()
                    m["value/returns_mean"] = masked_mean(returns, batch.mask).item()
                m["advantage/mean"] = masked_mean(advantages, batch.mask).item()
                m["advantage/abs_mean"] = masked_mean(advantages.abs(), batch.mask).item()
                is_weights = None
                if cfg.algo.tis_cap > 0:
                    is_weights = tis_weights(old_logp, sampler_lp, batch.mask, cfg.algo.tis_cap)
                    m["policy/tis_weight_mean"] = masked_mean(is_weights, batch.mask).item()
                    m["policy/tis_capped_frac"] = masked_mean((old_logp - sampler_lp).exp().ge(cfg.algo.tis_cap).float(), batch.mask).item()
                if cfg.algo.overlong_filter:
                    # after the advantages: truncated samples still count in their group's statistics
                    truncated = torch.tensor([r.finish_reason == "length" for r in rollouts])
                    m["rollout/overlong_filtered_frac"] = truncated.float().mean().item()
                    batch.mask = batch.mask * (~truncated).float()[:, None]

                # 4. PPO update
                stats = learner.update(
                    batch,
                    advantages,
                    returns,
                    old_logp,
                    old_values,
                    ref_logp,
                    train_policy=step > cfg.ppo.critic_warmup_steps,
                    generator=shuffle,
                    is_weights_BT=is_weights,
                )
                m["time/learn_s"] = time.perf_counter() - t

                # 5. sync the new weights into the engine
                t = time.perf_counter()
                engine.load_weights(learner.policy_weights(DTYPES[cfg.model.dtype]))
                m["time/sync_s"] = time.perf_counter() - t
            else:
                _say(bar, f"[{cfg.name} seed {cfg.seed}] step {step}: every group's rewards were equal; no update")

            # 6. log
            m.update(stats)
            m.update(scored.metrics(cfg.train.pass_threshold))
            m["reward/mean"] = scores_B.mean().item()
            m["reward/std"] = scores_B.std().item() if len(scores_B) > 1 else 0.0
            m["reward/pass_rate"] = (scores_B >= cfg.train.pass_threshold).float().mean().item()
            if rollouts:
                m["rollout/stop_frac"] = sum(r.finish_reason == "stop" for r in rollouts) / len(rollouts)
            if step % cfg.train.eval_every == 0 or step == end:
                t = time.perf_counter()
                metrics, samples = evaluate(engine, scorer, heldout, EvalSpec.of(cfg), step)
                m["time/eval_s"] = time.perf_counter() - t
                m.update(metrics)
                history["last_eval"] = metrics
                log.text("eval/samples", "\n\n".join(samples), step)
            alerts, messages = monitor.check(m)
            m.update(alerts)
            for msg in messages:
                _say(bar, f"[{cfg.name} seed {cfg.seed}] step {step}: {msg}")
            history["wall_s"] = time.perf_counter() - t_run
            m["time/elapsed_s"] = history["wall_s"]
            log.scalars(step, m)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(
                    reward=f"{m['reward/mean']:.3f}",
                    pass_rate=f"{m['reward/pass_rate']:.2f}",
                    eval=f"{history['last_eval']['eval/heldout/greedy_pass_rate']:.2f}",
                )

            # 7. checkpoint
            if step % cfg.train.checkpoint_every == 0 or step == end:
                ckpt.save_checkpoint(
                    run_dir,
                    step,
                    policy,
                    critic,
                    tokenizer,
                    {
                        "learner": learner.state_dict(),
                        "sampler": sampler.state_dict(),
                        "shuffle": shuffle.get_state(),
                        "history": history,
                        "monitor": monitor.state_dict(),
                    },
                    keep=cfg.train.keep_checkpoints,
                    policy_weights=learner.full_weights("policy"),
                    critic_weights=learner.full_weights("critic") if critic is not None else None,
                    save_extra=learner.save_to,
                )
    finally:
        learner.stop()
        log.close()
        engine.close()
        scorer.close()

    summary = {
        "experiment": cfg.name,
        "seed": cfg.seed,
        "steps": cfg.train.steps,
        "stopped_at": None if end == cfg.train.steps else end,
        "wall_s": round(history["wall_s"], 2),
        "initial": history["first_eval"],
        "final": history["last_eval"],
        "params": num_params(policy),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if end == cfg.train.steps:  # a run stopped early (train.stop_at) is not finished: no summary.json
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _progress(steps: range, enabled: bool, cfg: Config):
    if not enabled:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=f"{cfg.name} seed {cfg.seed}", unit="step", initial=steps.start - 1, total=cfg.train.steps)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['experiment']} seed {summary['seed']}: {summary['steps']} steps in {summary['wall_s']:.0f} s")
    table.add_column("held-out metric")
    table.add_column("start", justify="right")
    table.add_column("end", justify="right")
    first, final = summary["initial"] or {}, summary["final"] or {}
    for key in sorted(final):
        if key.startswith("eval/heldout/"):
            table.add_row(key.removeprefix("eval/heldout/"), f"{first.get(key, float('nan')):.3f}", f"{final[key]:.3f}")
    Console(stderr=True).print(table)
    Console(stderr=True).print(f"peak memory {summary['peak_rss_mib']:.0f} MiB, {summary['params']:,} parameters")



def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _say(bar, message: str) -> None:
    """A console line that does not break the progress bar."""
    import sys

    (bar.write if hasattr(bar, "write") else lambda m: print(m, file=sys.stderr))(message)
