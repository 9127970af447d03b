"""The PPO learner: policy, critic and frozen reference.

It turns rollouts into padded tensors, scores them (old logprobs, reference logprobs,
values) and runs epochs x minibatches of clipped PPO updates with gradient accumulation
over micro-batches. The math lives in `rlvr.ppo` and `rlvr.baselines`; how each trained model
steps (torch or DeepSpeed ZeRO, precision, ranks) in `rlvr.backends`; lean logprobs in
`rlvr.logprobs`.

Micro-batches hold a fixed number of rows (`ppo.micro_batch_size`) or, with
`ppo.max_tokens_per_micro_batch`, length-sorted rows cut by a budget of padded tokens and
trimmed to their own widest prompt and response. Either way the loss weights are those of the
whole minibatch, so any split gives the same gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from rlvr.backends import make_trainer
from rlvr.config import LearnerConfig, PPOConfig
from rlvr.logprobs import check_lean_model, lean_logprobs
from rlvr.ppo import (
    KL_ESTIMATORS,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    loss_weights,
    masked_mean,
    token_logprobs,
)
from rlvr.rollouts import Rollout


@dataclass
class Batch:
    """Prompts left-padded to width P, responses right-padded to width T: [pad.. prompt | response ..pad]."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T], counting real tokens only (as the engine sees them)
    response_ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] float, 1 on real response tokens
    prompt_width: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.response_ids.to(device),
            self.mask.to(device),
            self.prompt_width,
        )

    def trimmed(self) -> "Batch":
        """The same rows without the columns that are padding in every row."""
        P = self.prompt_width
        p = int(self.attention_mask[:, :P].sum(1).max())
        t = max(1, int(self.attention_mask[:, P:].sum(1).max()))
        cols = slice(P - p, P + t)
        return Batch(self.input_ids[:, cols], self.attention_mask[:, cols], self.position_ids[:, cols], self.response_ids[:, :t], self.mask[:, :t], p)

    def rows(self, idx: torch.Tensor | slice) -> "Batch":
        return Batch(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.position_ids[idx],
            self.response_ids[idx],
            self.mask[idx],
            self.prompt_width,
        )


def make_batch(rollouts: list[Rollout], pad_id: int) -> Batch:
    P = max(len(r.prompt_ids) for r in rollouts)
    T = max(1, max(len(r.completion_ids) for r in rollouts))
    ids, attn, resp, mask = [], [], [], []
    for r in rollouts:
        lp, lc = len(r.prompt_ids), len(r.completion_ids)
        ids.append([pad_id] * (P - lp) + r.prompt_ids + r.completion_ids + [pad_id] * (T - lc))
        attn.append([0] * (P - lp) + [1] * (lp + lc) + [0] * (T - lc))
        resp.append(r.completion_ids + [pad_id] * (T - lc))
        mask.append([1.0] * lc + [0.0] * (T - lc))
    attention_mask = torch.tensor(attn)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return Batch(torch.tensor(ids), attention_mask, position_ids, torch.tensor(resp), torch.tensor(mask), P)


def response_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits (or critic outputs) at the positions that predict each response token: [B, T, ...]."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    P, T = batch.prompt_width, batch.response_ids.shape[1]
    return out.logits[:, P - 1 : P + T - 1]


def plan_micro_batches(batch: Batch, rows: list[int], micro_batch_size: int, max_tokens: int) -> list[list[int]]:
    """`rows` of `batch` grouped into micro-batches: `micro_batch_size` at a time in order, or (with
    `max_tokens` > 0) longest first, each group as large as fits `max_tokens` padded tokens (its
    rows x (widest prompt + widest response)); a row longer than the budget goes alone."""
    if max_tokens <= 0:
        return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
    P = batch.prompt_width
    plen = batch.attention_mask[:, :P].sum(1).tolist()
    rlen = batch.attention_mask[:, P:].sum(1).tolist()
    order = sorted(rows, key=lambda r: (-(plen[r] + rlen[r]), r))
    groups: list[list[int]] = []
    cur, wp, wr = [], 0, 0
    for r in order:
        np_, nr = max(wp, plen[r]), max(wr, rlen[r], 1)
        if cur and (len(cur) + 1) * (np_ + nr) > max_tokens:
            groups.append(cur)
            cur, np_, nr = [], plen[r], max(rlen[r], 1)
        cur.append(r)
        wp, wr = np_, nr
    if cur:
        groups.append(cur)
    return groups


def _values(critic: torch.nn.Module, mb: Batch) -> torch.Tensor:
    """The critic's value at each position that predicts a response token, [b, t] float32."""
    return response_logits(critic, mb)[..., 0].float()


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class PPOLearner:
    def __init__(
        self,
        policy: torch.nn.Module,
        critic: torch.nn.Module | None,
        ref: torch.nn.Module | None,
        cfg: PPOConfig,
        total_steps: int,
        pad_id: int,
        loss_agg: str = "token",
        max_new_tokens: int = 0,
        temperature: float = 1.0,
        learner: LearnerConfig | None = None,
        compute_dtype: torch.dtype = torch.float32,
        make_optimizer: Callable[[list, float], torch.optim.Optimizer] | None = None,
    ):
        """`critic` None: a critic-free baseline (no value loss); `loss_agg`/`max_new_tokens`:
        how the policy loss aggregates over tokens (rlvr.ppo.loss_weights); `temperature`: the
        engine's sampling temperature (every logprob, entropy and KL is of logits / temperature,
        the distribution the rollouts were sampled from); `learner`: backend, ranks and lean
        computation; `compute_dtype`: bfloat16 computes in bf16 over fp32 master weights;
        `make_optimizer(params, lr)`: AdamW with `cfg`'s betas and weight decay unless given."""
        if temperature <= 0:
            raise ValueError(f"the learner needs a sampling temperature > 0, got {temperature}")
        self.cfg, self.pad_id, self.lcfg = cfg, pad_id, learner or LearnerConfig()
        self.loss_agg, self.max_new_tokens, self.temperature = loss_agg, max_new_tokens, temperature
        if self.lcfg.lean_logprobs:
            for model in (policy, ref):
                if model is not None:
                    check_lean_model(model)
        if self.lcfg.gradient_checkpointing:
            for model in (policy, critic):
                if model is not None:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        updates = total_steps * cfg.epochs * cfg.num_minibatches
        schedule = lr_lambda(cfg.lr_schedule, cfg.warmup_steps, updates)
        make = make_optimizer or (lambda params, lr: torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay))

        def trainer(model: torch.nn.Module, lr: float):
            return make_trainer(model, lambda params: make(params, lr), schedule, cfg.max_grad_norm, compute_dtype, self.lcfg)

        self.policy_trainer = trainer(policy, cfg.lr)
        self.critic_trainer = trainer(critic, cfg.critic_lr) if critic is not None else None
        self.policy = self.policy_trainer.module
        self.critic = self.critic_trainer.module if critic is not None else None
        # The learner computes on its models' device; what it returns (logprobs, values) is on the CPU.
        self.device = self.policy_trainer.device
        self.rank, self.world_size = self.policy_trainer.rank, self.policy_trainer.world_size
        self.tokens_computed = 0  # positions passed through a model so far (padding included)
        self.ref = ref
        if ref is not None:
            ref.eval().requires_grad_(False).to(self.device)
            if self.lcfg.backend == "deepspeed":
                ref.to(compute_dtype)  # no autocast there: the reference computes as the policy does

    # ---------------------------------------------------------------- micro-batches

    def _groups(self, batch: Batch, rows: list[int]) -> list[list[int]]:
        """This rank's share of `rows` in micro-batches; under several ranks every rank gets the same
        number of micro-batches (ZeRO-3 gathers weights collectively in each forward pass), the
        missing ones empty (run on a stand-in row with weight 0)."""
        mine = rows[self.rank :: self.world_size]
        groups = plan_micro_batches(batch, mine, self.cfg.micro_batch_size, self.cfg.max_tokens_per_micro_batch)
        if self.world_size > 1:
            n = torch.tensor([len(groups)], device=self._comm_device())
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX)
            groups += [[] for _ in range(int(n) - len(groups))]
        return groups

    def _micro_batch(self, batch: Batch, rows: list[int]) -> Batch:
        mb = batch.rows(torch.tensor(rows))
        mb = mb.trimmed() if self.cfg.max_tokens_per_micro_batch > 0 else mb
        self.tokens_computed += mb.input_ids.numel()
        return mb.to(self.device)

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        t = t.to(self._comm_device())
        torch.distributed.all_reduce(t)
        return t.cpu()

    # ---------------------------------------------------------------- scoring

    def sampling_logits(self, model: torch.nn.Module, mb: Batch) -> torch.Tensor:
        """Logits of the distribution the engine samples from: the model's, divided by the temperature."""
        logits = response_logits(model, mb)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def token_logprobs(self, model: torch.nn.Module, mb: Batch, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(response token) and the entropy per position at the sampling temperature, [b, t] float32."""
        if self.lcfg.lean_logprobs:
            logp, entropy = lean_logprobs(model, mb, self.temperature, self.lcfg.logprob_chunk_tokens, entropy_grad)
            return logp, entropy
        logits = self.sampling_logits(model, mb)
        return token_logprobs(logits, mb.response_ids), entropy_from_logits(logits)

    @torch.no_grad()
    def _score(self, batch: Batch, fn) -> torch.Tensor:
        out = torch.zeros(batch.mask.shape)
        for rows in self._groups(batch, list(range(len(batch)))):
            mb = self._micro_batch(batch, rows or [0])
            res = fn(mb).float().cpu()
            if rows:
                out[rows, : res.shape[1]] = res
        return self._all_reduce(out)

    def logprobs(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """log pi(response token) under `model` at the sampling temperature: [B, T] float32 (0 on padding)."""
        model.eval()
        if model is self.policy:
            run = self.policy_trainer.call
        else:  # the frozen reference: a plain module, in the policy's precision

            def run(fn, *args):
                with self.policy_trainer.autocast():
                    return fn(model, *args)

        return self._score(batch, lambda mb: run(self.token_logprobs, mb, False)[0] * mb.mask)

    def scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The rollouts' old logprobs, reference logprobs (None without a reference) and values (None
        without a critic), [B, T] each."""
        old = self.logprobs(self.policy, batch)
        ref = self.logprobs(self.ref, batch) if self.ref is not None else None
        return old, ref, self.values(batch) if self.critic is not None else None

    def values(self, batch: Batch) -> torch.Tensor:
        self.critic.eval()
        return self._score(batch, lambda mb: self.critic_trainer.call(_values, mb) * mb.mask)

    # ---------------------------------------------------------------- update

    def update(
        self,
        batch: Batch,
        advantages_BT: torch.Tensor,
        returns_BT: torch.Tensor | None,
        old_logp_BT: torch.Tensor,
        old_values_BT: torch.Tensor | None,
        ref_logp_BT: torch.Tensor | None,
        train_policy: bool = True,
        generator: torch.Generator | None = None,
        is_weights_BT: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Epochs x minibatches of PPO; returns the mean of each statistic over minibatches.

        `returns_BT`/`old_values_BT` are None without a critic; `is_weights_BT` multiplies each
        token's policy loss (truncated importance sampling). A batch that does not divide into
        `ppo.num_minibatches` (dynamic sampling) is split into near-equal parts. Under several
        ranks every rank is given the same arguments and takes its share of each minibatch.
        """
        cfg = self.cfg
        B = len(batch)
        if B == 0:
            raise ValueError("an update needs at least one rollout")
        num_minibatches = min(cfg.num_minibatches, B)  # dynamic sampling may leave fewer rows than minibatches
        kl_fn = KL_ESTIMATORS[cfg.kl_estimator]
        kl_in_loss = cfg.kl_penalty == "loss" and cfg.kl_coef > 0 and ref_logp_BT is not None
        policy, critic = self.policy_trainer if train_policy else None, self.critic_trainer
        sums: dict[str, float] = {}
        n_updates = skipped = 0
        self.policy.train()
        if critic is not None:
            self.critic.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(B, generator=generator)
            for idx in order.tensor_split(num_minibatches):
                num_tokens = batch.mask[idx].sum().clamp(min=1).item()
                # the minibatch's loss weights, laid out by batch row so that any micro-batch can pick its rows
                weights = torch.zeros_like(batch.mask)
                weights[idx] = loss_weights(batch.mask[idx], self.loss_agg, self.max_new_tokens)
                if is_weights_BT is not None:
                    weights = weights * is_weights_BT
                stats: dict[str, float] = {}
                finite = {id(t): True for t in (policy, critic) if t is not None}  # each model's losses so far
                for trainer in (policy, critic):
                    if trainer is not None:
                        trainer.zero_grad()
                groups = self._groups(batch, idx.tolist())
                for k, rows in enumerate(groups):
                    last, real = k == len(groups) - 1, bool(rows)
                    rows = rows or idx[:1].tolist()
                    mb = self._micro_batch(batch, rows)
                    t = mb.mask.shape[1]
                    pick = lambda x: x[rows, :t].to(self.device)  # noqa: E731
                    w = pick(weights) * float(real)
                    share = mb.mask.sum().item() / num_tokens if real else 0.0  # this micro-batch's weight in token means
                    if policy is not None:
                        logp, entropy = policy.call(self.token_logprobs, mb, cfg.entropy_coef != 0)
                        loss, pstats = clipped_policy_loss(logp, pick(old_logp_BT), pick(advantages_BT), mb.mask, cfg.clip_low, cfg.clip_high, w)
                        _acc(stats, "loss/policy", loss.item())
                        _acc(stats, "policy/entropy", masked_mean(entropy.detach(), mb.mask).item() * share)
                        for key, v in pstats.items():
                            _acc(stats, f"policy/{key}", v.item() * share)
                        if cfg.entropy_coef:
                            loss = loss - cfg.entropy_coef * (entropy * w).sum()
                        if kl_in_loss:
                            kl_loss = (kl_fn(logp, pick(ref_logp_BT)) * w).sum()
                            _acc(stats, "loss/kl", kl_loss.item())
                            loss = loss + cfg.kl_coef * kl_loss
                        finite[id(policy)] &= bool(torch.isfinite(loss))
                        if finite[id(policy)]:
                            policy.backward(loss, last)
                    if critic is not None:
                        values = critic.call(_values, mb)
                        vloss, vstats = clipped_value_loss(values, pick(old_values_BT), pick(returns_BT), mb.mask, cfg.value_clip, num_tokens)
                        vloss = vloss * float(real)
                        finite[id(critic)] &= bool(torch.isfinite(vloss))
                        if finite[id(critic)]:
                            critic.backward(cfg.vf_coef * vloss, last)
                        _acc(stats, "loss/value", vloss.item())
                        _acc(stats, "value/clip_frac", vstats["value_clip_frac"].item() * share)
                if self.world_size > 1:
                    keys = sorted(stats)
                    total = self._all_reduce(torch.tensor([stats[key] for key in keys], dtype=torch.float64))
                    stats = dict(zip(keys, total.tolist()))
                if self.world_size > 1:  # every rank skips (or stops) together
                    bad = self._all_reduce(torch.tensor([float(not f) for f in finite.values()], dtype=torch.float64))
                    finite = {key: not b for key, b in zip(finite, bad.tolist())}
                for trainer, name in ((policy, "policy"), (critic, "value")):
                    if trainer is None:
                        continue
                    # a NaN/inf loss or gradient norm: no step from this minibatch (counted; the loop decides when to stop)
                    norm = trainer.step() if finite[id(trainer)] else (trainer.skip() or math.nan)
                    if math.isfinite(norm):
                        _acc(stats, f"{name}/grad_norm", norm)
                    else:
                        skipped += 1
                stats = {key: v for key, v in stats.items() if math.isfinite(v)}
                for key, v in stats.items():
                    _acc(sums, key, v)
                n_updates += 1
        out = {key: v / n_updates for key, v in sums.items()}
        out["policy/lr"] = self.policy_trainer.last_lr()
        out["learner/nonfinite_steps"] = float(skipped)  # optimizer steps skipped for a NaN or inf
        return out

    # ---------------------------------------------------------------- weights and checkpoint state

    def policy_weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's full weights cast to `dtype`, one tensor at a time, for the rollout engine
        (under ZeRO-3 a collective: every rank iterates)."""
        return self.policy_trainer.full_weights(dtype)

    def full_weights(self, which: str) -> dict[str, torch.Tensor] | None:
        """`which` ("policy" or "critic") model's full float32 weights where its module does not hold
        them (ZeRO-3), else None (the module's own state dict is complete)."""
        return (self.policy_trainer if which == "policy" else self.critic_trainer).gathered_state()

    def save_to(self, folder) -> None:
        self.policy_trainer.save_to(folder / "learner_policy")
        if self.critic_trainer is not None:
            self.critic_trainer.save_to(folder / "learner_critic")

    def load_from(self, folder) -> None:
        self.policy_trainer.load_from(folder / "learner_policy")
        if self.critic_trainer is not None:
            self.critic_trainer.load_from(folder / "learner_critic")

    def state_dict(self) -> dict:
        state = self.policy_trainer.state_dict()
        if not state:
            return {}  # DeepSpeed: save_to
        out = {"policy_opt": state["optimizer"], "policy_sched": state["scheduler"]}
        if self.critic_trainer is not None:
            state = self.critic_trainer.state_dict()
            out["critic_opt"], out["critic_sched"] = state["optimizer"], state["scheduler"]
        return out

    def load_state_dict(self, state: dict) -> None:
        deepspeed = self.lcfg.backend == "deepspeed"
        if bool(state) == deepspeed:  # DeepSpeed keeps its states in save_to's folders, torch in `state`
            raise ValueError(f"the checkpoint was written by another learner.backend than {self.lcfg.backend!r}: resume with the one it was written with")
        if not state:
            return
        self.policy_trainer.load_state_dict({"optimizer": state["policy_opt"], "scheduler": state["policy_sched"]})
        if self.critic_trainer is not None:
            self.critic_trainer.load_state_dict({"optimizer": state["critic_opt"], "scheduler": state["critic_sched"]})


def _acc(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


# ------------------------------------------------------------------------------ several ranks
# `rlvr train` over N ranks: rank 0 runs the loop (engine, verifiers, logging) and calls the
# learner through `RankMirror`, which first broadcasts each collective call (its name and
# arguments) to the other ranks; they wait in `follow`, make the same call on their own learner,
# and so take their share of every forward, backward, gather and checkpoint.

_MIRRORED = {"scores", "update", "policy_weights", "full_weights", "save_to", "load_from", "load_state_dict"}


class RankMirror:
    def __init__(self, learner: PPOLearner):
        self.learner = learner

    def __getattr__(self, name: str):
        fn = getattr(self.learner, name)
        if self.learner.world_size == 1 or name not in _MIRRORED:
            return fn

        def call(*args, **kwargs):
            _send((name, args, {k: _portable(v) for k, v in kwargs.items()}))
            return fn(*args, **kwargs)

        return call

    def stop(self) -> None:
        if self.learner.world_size > 1:
            _send(("stop", (), {}))


def follow(learner: PPOLearner) -> None:
    """Ranks 1..N-1: mirror rank 0's learner calls until it stops."""
    while True:
        box = [None]
        torch.distributed.broadcast_object_list(box, src=0)
        name, args, kwargs = box[0]
        if name == "stop":
            return
        kwargs = {k: _restore(v) for k, v in kwargs.items()}
        out = getattr(learner, name)(*args, **kwargs)
        if name == "policy_weights":
            for _ in out:  # a gather per tensor under ZeRO-3: every rank iterates
                pass


def _send(message) -> None:
    torch.distributed.broadcast_object_list([message], src=0)


def _portable(v):
    # a generator travels as its state; rank 0 keeps drawing from its own, the others from a copy in the same state
    return ("__generator__", v.get_state()) if isinstance(v, torch.Generator) else v


def _restore(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__generator__":
        g = torch.Generator()
        g.set_state(v[1])
        return g
    return v
