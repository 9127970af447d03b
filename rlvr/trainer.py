"""The RLVR loop, as the data flows: the actors produce scored rollout groups (generate ->
verify), the learner turns them into an update (advantages -> PPO), the weights go back to the
actors; then log, evaluate, checkpoint.

What it keeps from Tulu 3 / open-instruct PPO: a separate critic initialised from the
policy, GAE(gamma=1, lambda=0.95), whitened advantages, the verifier score as a sparse
reward on the last token, KL to a frozen reference either as k1 in the per-token reward
or as an estimator in the loss, token-level loss aggregation. `algo.baseline` swaps the
critic for a critic-free baseline (GRPO, Dr. GRPO, RLOO, REINFORCE++; no critic is built),
and the DAPO options (dynamic sampling, overlong filter and penalty, loss aggregation) and
truncated importance sampling are opt-in `algo.*` fields.

Where rollouts come from: the engine in this process (`rollout.num_engines: 0`), or N engine
actors on Ray (`rlvr.rollouts.actors`); with `rollout.max_staleness: k > 0` they generate and
verify the next steps while the learner updates (`rlvr.producer`). The learner is one process
or several ranks (`learner.world_size`); rank 0 runs this loop.

One run is one seed: `runs/<experiment>/seed_<k>/` holds config.yaml, TensorBoard events,
metrics.jsonl, checkpoints/step_<n>/ and summary.json.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from rlvr import checkpoint as ckpt
from rlvr.baselines import compute_advantages, get_baseline
from rlvr.baselines.dapo import informative_groups, overlong_penalty
from rlvr.config import Config, ConfigError, check_resume, engine_gpu_memory, to_dict, to_yaml
from rlvr.data import DataError, PromptSampler, encode_prompts, ground_truth_text, load_rows, normalize_rows
from rlvr.learner import PPOLearner, RankMirror, follow, make_batch
from rlvr.backends import NonFiniteError
from rlvr.monitors import Monitor, VerifierHealth
from rlvr.producer import RolloutProducer
from rlvr.models import DTYPES, check_model, initial_model, learner_device, load_critic, load_policy, load_tokenizer, num_params, require_gpus
from rlvr.ppo import KL_ESTIMATORS, masked_mean, masked_whiten, tis_weights, token_rewards
from rlvr.rollouts import Rollout, Sampling, derive_seed, make_engine
from rlvr.runlock import RunLock
from rlvr.runlog import RunLogger
from rlvr.tasks import make_task
from rlvr.verifiers import ScoredBatch, VerifierPool, load_verifier_file
from rlvr.verifiers.base import STATUSES


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
    timing: dict = field(default_factory=dict)  # generate_s, verify_s, tokens


def collect_rollouts(produce, take, prompts_per_step: int, n: int, algo, max_new_tokens: int) -> Collected:
    """Generate and verify `prompts_per_step` groups of n samples.

    `take(k)` gives k prompt indices, `produce(indices, round)` their rollouts (prompt-major), rows
    and ScoredBatch. With `algo.dynamic_sampling`, groups whose rewards are all equal are dropped
    and new prompts are generated (at most `algo.dynamic_sampling_rounds` rounds) until
    `prompts_per_step` groups remain; the batch then never holds a zero-variance group, and may
    hold fewer groups if the rounds run out.
    """
    kept: list[tuple[list[Rollout], list[dict], torch.Tensor]] = []
    results, names = [], []
    rounds = seen = informative = 0
    while True:
        idx = take(prompts_per_step)
        rollouts, rows, scored = produce(idx, rounds)
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


@dataclass
class Run:
    """What one seed's loop holds, built by `setup`."""

    cfg: Config
    tokenizer: object
    policy: torch.nn.Module
    critic: torch.nn.Module | None
    ref: torch.nn.Module | None
    learner: RankMirror
    train: Prompts
    heldout: Prompts
    sampler: PromptSampler
    shuffle: torch.Generator
    monitor: Monitor
    history: dict
    start_step: int
    end: int
    policy_path: str
    scorer: object = None
    engine: object = None  # a RolloutEngine in this process, or EngineActors
    log: RunLogger | None = None
    version: int = 0  # the weights version the engines hold (the step of the last update pushed)
    nonfinite_in_a_row: int = 0  # consecutive updates that met a NaN or inf
    health: VerifierHealth | None = None
    lock: RunLock | None = None
    t_run: float = 0.0  # perf_counter at the run's start (resumed runs: moved back by the time already spent)


def train(cfg: Config, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one seed of an experiment; returns the summary also written to summary.json.

    Actors produce scored rollout groups, the learner turns them into an update, the weights go
    back to the actors; then log, evaluate, checkpoint."""
    run = setup(cfg, resume)
    if run is None:  # a learner rank other than 0 has followed rank 0 to the end
        return {}
    if run.start_step >= run.end:  # e.g. the first command run again after `rlvr seeds extend` took this seed further
        _say(None, f"[{cfg.name} seed {cfg.seed}] the run is at step {run.start_step}, at or past step {run.end}: nothing to train")
        close(run)
        return summarize(run)
    producer = None
    try:
        start_actors(run)
        if run.start_step == 0:
            first_evaluation(run)
        steps = range(run.start_step + 1, run.end + 1)
        producer = RolloutProducer(lambda step: collect_step(run, step), steps, cfg.rollout.max_staleness, run.sampler, run.version)
        bar = _progress(steps, progress, cfg)
        for step in bar:
            t0 = time.perf_counter()
            col = producer.get(step)
            m = {"time/wait_rollouts_s": time.perf_counter() - t0, **rollout_metrics(run, col, step)}
            run.health.check(col.scored, step)  # a verifier failing too often stops the run
            if col.rollouts:
                m.update(learn(run, col, step))
                guard_nonfinite(run, step, m, bar)
                m.update(push_weights(run, step))
            else:
                _say(bar, f"[{cfg.name} seed {cfg.seed}] step {step}: every group's rewards were equal; no update")
                if hasattr(run.engine, "set_version"):
                    run.engine.set_version(step)  # unchanged weights, now version `step`
            run.version = step
            producer.publish(step)
            m["time/step_s"] = time.perf_counter() - t0
            end_of_step(run, step, m, bar)
            if step % cfg.train.checkpoint_every == 0 or step == run.end:
                save(run, step, producer.sampler_state(step + 1))
    finally:
        if producer is not None:
            producer.stop()
        close(run)  # a step the producer is still making fails now, and its thread ends
        if producer is not None:
            producer.join()
    return summarize(run)


def setup(cfg: Config, resume: bool) -> Run | None:
    """Data, models and the learner, restored from the newest checkpoint when resuming. Learner
    ranks other than 0 follow rank 0's updates inside this call and get None."""
    run_dir = cfg.run_dir
    rank = start_ranks(cfg)
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    lock = None
    if rank == 0:
        if not resume and (run_dir / "config.yaml").exists():
            raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or change name/seed")
        if resume:
            check_resume(run_dir, cfg)  # never two configs in one run
        require_gpus(cfg.resources.gpus)
        train_rows, heldout_rows, tokenizer_text = prepare_data(cfg)  # data errors name the row, before any write
        if cfg.model.name_or_path:
            check_model(cfg.model.name_or_path)
        lock = RunLock(run_dir)  # one writer per run folder
        init_path = initial_model(cfg, run_dir, tokenizer_text)
    if cfg.learner.world_size > 1:
        torch.distributed.barrier()  # rank 0 has checked the run and built the initial model
        init_path = initial_model(cfg, run_dir, [])
    seed_everything(cfg.seed)

    # policy (and the engine) from the newest checkpoint, else the initial model; policy and critic
    # as float32 master weights (the learner computes in model.dtype), the frozen reference in model.dtype
    policy_path = str(last / "policy") if last else init_path
    tokenizer = load_tokenizer(policy_path)
    device = learner_device()
    if device.type == "cuda" and 0 < cfg.resources.gpus < 1:  # k seeds on one GPU: this one keeps to its share
        torch.cuda.set_per_process_memory_fraction(cfg.resources.gpus, device)
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
        return None
    if resume and not last:
        _say(None, f"[{cfg.name} seed {cfg.seed}] --resume: no readable checkpoint in {run_dir}; starting from step 0")
    run = Run(
        cfg,
        tokenizer,
        policy,
        critic,
        ref,
        RankMirror(learner),
        Prompts(train_rows, encode_prompts(train_rows, tokenizer, cfg.data.max_prompt_tokens, "train")),
        Prompts(heldout_rows, encode_prompts(heldout_rows, tokenizer, cfg.data.max_prompt_tokens, "eval")),
        PromptSampler(len(train_rows), cfg.seed),
        torch.Generator().manual_seed(cfg.seed),
        Monitor(cfg.monitor),
        {"first_eval": None, "last_eval": None, "wall_s": 0.0, "nonfinite_updates": 0},
        0,
        min(cfg.train.steps, cfg.train.stop_at) if cfg.train.stop_at > 0 else cfg.train.steps,
        policy_path,
        health=VerifierHealth(cfg.verify),
        lock=lock,
    )
    if last:
        state = ckpt.load_trainer_state(last)
        run.learner.load_state_dict(state["learner"])
        run.learner.load_from(last)
        run.sampler.load_state_dict(state["sampler"])
        run.shuffle.set_state(state["shuffle"])
        run.history = state["history"]
        run.monitor.load_state_dict(state["monitor"])
        run.start_step = run.version = state["step"]
        ckpt.set_rng_state(state["rng"])
    return run


def start_actors(run: Run) -> None:
    """The verifier pool, the rollout engine(s) and the run's log."""
    cfg, r = run.cfg, run.cfg.rollout
    run.scorer = _Serial(VerifierPool(cfg.verify.workers, cfg.verify.timeout_s, cfg.verifier_files, cfg.verify.max_memory_mb))
    kwargs = dict(
        dtype=cfg.model.dtype,
        max_model_len=cfg.data.max_prompt_tokens + r.max_new_tokens,
        kv_cache_mb=r.kv_cache_mb,
        gpu_memory_utilization=engine_gpu_memory(cfg),
        seed=cfg.seed,
    )
    if r.num_engines == 0:
        run.engine = make_engine(r.engine, run.policy_path, **kwargs)
    else:
        from rlvr.rollouts.actors import EngineActors

        run.engine = EngineActors(
            r.num_engines, r.engine, run.policy_path, kwargs, cpus=r.engine_cpus, gpus=r.engine_gpus,
            transport=r.sync_transport, timeout_s=r.sync_timeout_s, label=f"{cfg.name}/seed_{cfg.seed}", version=run.version,
        )
    run.log = RunLogger(cfg.run_dir, resume_step=run.start_step)
    # the run has started (data, models, verifiers and engines all up): from now on the folder holds a run
    (cfg.run_dir / "config.yaml").write_text(to_yaml(cfg))
    run.t_run = time.perf_counter() - run.history["wall_s"]


def first_evaluation(run: Run) -> None:
    cfg = run.cfg
    run.log.text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)
    run.log.hparams(_flat(to_dict(cfg)), ["eval/heldout/greedy_pass_rate", "eval/heldout/sampled_pass_rate", "reward/mean"])
    metrics, samples = evaluate(run.engine, run.scorer, run.heldout, EvalSpec.of(cfg), 0)
    run.history["first_eval"] = run.history["last_eval"] = metrics
    run.log.scalars(0, {"model/params": num_params(run.policy), **metrics})
    run.log.text("eval/samples", "\n\n".join(samples), 0)


def collect_step(run: Run, step: int) -> Collected:
    """Step `step`'s rollout groups, generated and verified (by the producer, maybe ahead of the learner)."""
    cfg, n = run.cfg, run.cfg.rollout.samples_per_prompt
    timed = {"verify": 0.0, "tokens": 0}
    t = time.perf_counter()

    def score(rollouts, rows):
        t0 = time.perf_counter()
        out = run.scorer.score([r.text for r in rollouts], rows)
        timed["verify"] += time.perf_counter() - t0
        return out

    def produce(idx: list[int], round_: int):
        seed = derive_seed(cfg.seed, step) if round_ == 0 else derive_seed(cfg.seed, step, 1, round_)
        sampling = Sampling(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, seed)
        prompts = [run.train.ids[i] for i in idx]
        rows = [run.train.rows[i] for i in idx for _ in range(n)]
        if hasattr(run.engine, "submit"):  # engine actors: score each engine's groups as they arrive
            parts = {}
            for sl, out in run.engine.as_completed(run.engine.submit(prompts, sampling, n), f"step {step}"):
                parts[sl.start] = (out, score(out, rows[sl.start * n : sl.stop * n]))
            done = [parts[key] for key in sorted(parts)]
            rollouts = [r for out, _ in done for r in out]
            scored = ScoredBatch([x for _, sc in done for x in sc.results], [x for _, sc in done for x in sc.verifier_names])
        else:
            rollouts = run.engine.generate(prompts, sampling, n)
            for r in rollouts:
                r.policy_version = run.version
            scored = score(rollouts, rows)
        timed["tokens"] += sum(len(r.completion_ids) for r in rollouts)
        return rollouts, rows, scored

    col = collect_rollouts(produce, run.sampler.take, cfg.rollout.prompts_per_step, n, cfg.algo, cfg.rollout.max_new_tokens)
    col.timing = {"verify_s": timed["verify"], "generate_s": time.perf_counter() - t - timed["verify"], "tokens": timed["tokens"]}
    return col


def rollout_metrics(run: Run, col: Collected, step: int) -> dict[str, float]:
    cfg, n = run.cfg, run.cfg.rollout.samples_per_prompt
    scores_B = torch.tensor(col.scored.scores, dtype=torch.float32)  # every sample generated this step
    m = {
        "time/verify_s": col.timing["verify_s"],
        "time/generate_s": col.timing["generate_s"],
        "rollout/tokens_per_s": col.timing["tokens"] / max(col.timing["generate_s"], 1e-9),  # every round's samples
        "rollout/groups": len(col.rollouts) // n,
        "rollout/informative_frac": col.groups_informative / max(col.groups_seen, 1),
        **col.scored.metrics(cfg.train.pass_threshold),
        "reward/mean": scores_B.mean().item(),
        "reward/std": scores_B.std().item() if len(scores_B) > 1 else 0.0,
        "reward/pass_rate": (scores_B >= cfg.train.pass_threshold).float().mean().item(),
    }
    statuses = Counter(r.status for r in col.scored.results)
    for status in STATUSES:
        m[f"verify/{status}_rate"] = statuses[status] / max(len(col.scored.results), 1)
    m["verify/restarts"] = float(run.scorer.restarts)  # this process's, cumulative
    m["verify/start_failures"] = float(run.scorer.start_failures)
    if cfg.algo.dynamic_sampling:
        m["rollout/dynamic_rounds"] = col.rounds
    if col.rollouts:
        staleness = torch.tensor([step - 1 - r.policy_version for r in col.rollouts], dtype=torch.float32)
        m["rollout/staleness_mean"] = staleness.mean().item()
        m["rollout/staleness_max"] = staleness.max().item()
        m["rollout/stop_frac"] = sum(r.finish_reason == "stop" for r in col.rollouts) / len(col.rollouts)
    return m


def learn(run: Run, col: Collected, step: int) -> dict[str, float]:
    """Advantages (old/ref logprobs and values, KL-shaped rewards, the baseline), then the PPO update."""
    cfg, ref, critic, learner = run.cfg, run.ref, run.critic, run.learner
    t = time.perf_counter()
    m: dict[str, float] = {}
    rollouts = col.rollouts
    batch = make_batch(rollouts, run.tokenizer.pad_token_id)
    old_logp, ref_logp, old_values = learner.scores(batch)
    kl_BT = KL_ESTIMATORS[cfg.ppo.kl_estimator](old_logp, ref_logp) * batch.mask if ref is not None else torch.zeros_like(batch.mask)
    in_reward = cfg.ppo.kl_penalty == "reward" and ref is not None
    rewards_BT = token_rewards(col.rewards_B, batch.mask, kl_BT if in_reward else None, cfg.ppo.kl_coef)
    advantages, returns = compute_advantages(
        cfg.algo.baseline, rewards_BT, col.group_ids_B, old_values, batch.mask, cfg.ppo.gamma, cfg.ppo.lam
    )
    if cfg.ppo.whiten_advantages and critic is not None:
        advantages = masked_whiten(advantages, batch.mask)
    real = batch.mask.bool()
    if not (torch.isfinite(advantages[real]).all() and (returns is None or torch.isfinite(returns[real]).all())):
        # a NaN/inf in the rewards, values or KL: nothing of this step is trained on
        return {"learner/update_skipped": 1.0, "time/learn_s": time.perf_counter() - t}
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
    if cfg.algo.tis_cap > 0:  # the off-policy correction against the sampler (stale weights, engine numerics)
        is_weights = tis_weights(old_logp, sampler_lp, batch.mask, cfg.algo.tis_cap)
        m["policy/tis_weight_mean"] = masked_mean(is_weights, batch.mask).item()
        m["policy/tis_capped_frac"] = masked_mean((old_logp - sampler_lp).exp().ge(cfg.algo.tis_cap).float(), batch.mask).item()
    if cfg.algo.overlong_filter:
        # after the advantages: truncated samples still count in their group's statistics
        truncated = torch.tensor([r.finish_reason == "length" for r in rollouts])
        m["rollout/overlong_filtered_frac"] = truncated.float().mean().item()
        batch.mask = batch.mask * (~truncated).float()[:, None]
    stats = learner.update(
        batch,
        advantages,
        returns,
        old_logp,
        old_values,
        ref_logp,
        train_policy=step > cfg.ppo.critic_warmup_steps,
        generator=run.shuffle,
        is_weights_BT=is_weights,
    )
    m["time/learn_s"] = time.perf_counter() - t
    return {**m, **stats, "learner/update_skipped": 0.0}


def guard_nonfinite(run: Run, step: int, m: dict[str, float], bar) -> None:
    """Count an update that met a NaN or inf (skipped, whole or in part: `alerts/nonfinite`); stop
    the run after `train.max_nonfinite_updates` such updates in a row."""
    bad = m["learner/update_skipped"] > 0 or m.get("learner/nonfinite_steps", 0) > 0
    m["alerts/nonfinite"] = float(bad)
    run.nonfinite_in_a_row = run.nonfinite_in_a_row + 1 if bad else 0
    run.history["nonfinite_updates"] = run.history.get("nonfinite_updates", 0) + bad
    m["learner/nonfinite_updates_total"] = float(run.history["nonfinite_updates"])
    if bad:
        what = "advantages or returns" if m["learner/update_skipped"] else f"{m['learner/nonfinite_steps']:.0f} optimizer step(s)"
        _say(bar, f"[{run.cfg.name} seed {run.cfg.seed}] step {step}: a NaN or inf in the {what}; skipped")
    if run.nonfinite_in_a_row >= run.cfg.train.max_nonfinite_updates:
        last = ckpt.latest_checkpoint(run.cfg.run_dir)
        raise NonFiniteError(
            f"step {step}: {run.nonfinite_in_a_row} updates in a row met a NaN or inf (train.max_nonfinite_updates="
            f"{run.cfg.train.max_nonfinite_updates}); the run stops. The newest checkpoint ({last.name if last else 'none'}) "
            "holds good weights: resume from it once the cause is fixed (a lower ppo.lr, a verifier's rewards, the data)"
        )


def push_weights(run: Run, step: int) -> dict[str, float]:
    """The updated policy into the rollout engine(s), as version `step`."""
    t = time.perf_counter()
    weights = _finite(run.learner.policy_weights(DTYPES[run.cfg.model.dtype]), step)
    if hasattr(run.engine, "push"):
        sent = run.engine.push(weights, step)
        return {"time/sync_s": sent["seconds"], "sync/bytes_per_s": sent["bytes"] / max(sent["seconds"], 1e-9)}
    run.engine.load_weights(weights)
    return {"time/sync_s": time.perf_counter() - t}


def end_of_step(run: Run, step: int, m: dict[str, float], bar) -> None:
    """Held-out evaluation when due, monitors, the step's log line and the progress bar."""
    cfg, history = run.cfg, run.history
    if step % cfg.train.eval_every == 0 or step == run.end:
        t = time.perf_counter()
        metrics, samples = evaluate(run.engine, run.scorer, run.heldout, EvalSpec.of(cfg), step)
        m["time/eval_s"] = time.perf_counter() - t
        m.update(metrics)
        history["last_eval"] = metrics
        run.log.text("eval/samples", "\n\n".join(samples), step)
    alerts, messages = run.monitor.check(m)
    m.update(alerts)
    for msg in messages:
        _say(bar, f"[{cfg.name} seed {cfg.seed}] step {step}: {msg}")
    history["wall_s"] = time.perf_counter() - run.t_run
    m["time/elapsed_s"] = history["wall_s"]
    run.log.scalars(step, m)
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(
            reward=f"{m['reward/mean']:.3f}",
            pass_rate=f"{m['reward/pass_rate']:.2f}",
            eval=f"{history['last_eval']['eval/heldout/greedy_pass_rate']:.2f}",
        )


def save(run: Run, step: int, sampler_state: dict) -> None:
    learner = run.learner
    ckpt.save_checkpoint(
        run.cfg.run_dir,
        step,
        run.policy,
        run.critic,
        run.tokenizer,
        {
            "learner": learner.state_dict(),
            "sampler": sampler_state,
            "shuffle": run.shuffle.get_state(),
            "history": run.history,
            "monitor": run.monitor.state_dict(),
        },
        keep=run.cfg.train.keep_checkpoints,
        policy_weights=learner.full_weights("policy"),
        critic_weights=learner.full_weights("critic") if run.critic is not None else None,
        save_extra=learner.save_to,
    )


def close(run: Run) -> None:
    run.learner.stop()
    for part in (run.log, run.engine, run.scorer):
        if part is not None:
            part.close()
    if run.lock is not None:
        run.lock.release()


def summarize(run: Run) -> dict:
    cfg, history = run.cfg, run.history
    summary = {
        "experiment": cfg.name,
        "seed": cfg.seed,
        "steps": max(run.start_step, run.end),  # the run's last step
        "stopped_at": None if run.end == cfg.train.steps else run.end,
        "wall_s": round(history["wall_s"], 2),
        "initial": history["first_eval"],
        "final": history["last_eval"],
        "params": num_params(run.policy),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    # a run stopped early (train.stop_at) is not finished: no summary.json; nor is a run asked to stop short of
    # where it already is (its summary.json stands, with its real last step)
    if run.end == cfg.train.steps and run.start_step <= run.end:
        (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _finite(named, step: int):
    """The weights, each checked on the way out: a NaN or inf never reaches the engines."""
    for name, t in named:
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"step {step}: the policy's {name} holds a NaN or inf after the update; it is not pushed to the engines")
        yield name, t


class _Serial:
    """The verifier pool for two threads (the rollout producer and evaluation): one call at a time."""

    def __init__(self, pool: VerifierPool):
        self.pool, self.lock = pool, threading.Lock()

    def score(self, *args, **kwargs) -> ScoredBatch:
        with self.lock:
            return self.pool.score(*args, **kwargs)

    def close(self) -> None:
        self.pool.close()

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    @property
    def start_failures(self) -> int:
        return self.pool.start_failures


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
