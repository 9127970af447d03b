"""The PPO learner: policy, critic and frozen reference on one process (plain torch).

It turns rollouts into padded tensors, scores them (old logprobs, reference logprobs,
values) and runs epochs x minibatches of clipped PPO updates with gradient accumulation
over micro-batches. The math lives in `rlvr.ppo` and `rlvr.baselines`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from rlvr.config import PPOConfig
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
    ):
        """`critic` None: a critic-free baseline (no value loss); `loss_agg`/`max_new_tokens`:
        how the policy loss aggregates over tokens (rlvr.ppo.loss_weights); `temperature`: the
        engine's sampling temperature (every logprob, entropy and KL is of logits / temperature,
        the distribution the rollouts were sampled from)."""
        if temperature <= 0:
            raise ValueError(f"the learner needs a sampling temperature > 0, got {temperature}")
        self.policy, self.critic, self.ref, self.cfg, self.pad_id = policy, critic, ref, cfg, pad_id
        self.loss_agg, self.max_new_tokens, self.temperature = loss_agg, max_new_tokens, temperature
        # The learner computes on its models' device; what it returns (logprobs, values) is on the CPU.
        self.device = next(policy.parameters()).device
        if ref is not None:
            ref.eval().requires_grad_(False)
        updates = total_steps * cfg.epochs * cfg.num_minibatches
        self.policy_opt = torch.optim.AdamW(
            policy.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        self.policy_sched = LambdaLR(self.policy_opt, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, updates))
        self.critic_opt = self.critic_sched = None
        if critic is not None:
            self.critic_opt = torch.optim.AdamW(
                critic.parameters(), lr=cfg.critic_lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
            )
            self.critic_sched = LambdaLR(self.critic_opt, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, updates))

    # ---------------------------------------------------------------- scoring

    def micro_batches(self, batch: Batch):
        for start in range(0, len(batch), self.cfg.micro_batch_size):
            yield batch.rows(slice(start, start + self.cfg.micro_batch_size)).to(self.device)

    def sampling_logits(self, model: torch.nn.Module, mb: Batch) -> torch.Tensor:
        """Logits of the distribution the engine samples from: the model's, divided by the temperature."""
        logits = response_logits(model, mb)
        return logits if self.temperature == 1.0 else logits / self.temperature

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """log pi(response token) under `model` at the sampling temperature: [B, T] float32 (0 on padding)."""
        model.eval()
        parts = [token_logprobs(self.sampling_logits(model, mb), mb.response_ids) * mb.mask for mb in self.micro_batches(batch)]
        return torch.cat(parts).cpu()

    @torch.no_grad()
    def values(self, batch: Batch) -> torch.Tensor:
        self.critic.eval()
        parts = [response_logits(self.critic, mb)[..., 0].float() * mb.mask for mb in self.micro_batches(batch)]
        return torch.cat(parts).cpu()

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
        `ppo.num_minibatches` (dynamic sampling) is split into near-equal parts.
        """
        cfg = self.cfg
        B = len(batch)
        if B < cfg.num_minibatches:
            raise ValueError(f"batch of {B} rollouts is smaller than ppo.num_minibatches={cfg.num_minibatches}")
        kl_fn = KL_ESTIMATORS[cfg.kl_estimator]
        kl_in_loss = cfg.kl_penalty == "loss" and cfg.kl_coef > 0 and ref_logp_BT is not None
        sums: dict[str, float] = {}
        n_updates = 0
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(B, generator=generator)
            for idx in order.tensor_split(cfg.num_minibatches):
                num_tokens = batch.mask[idx].sum().clamp(min=1).item()
                weights = loss_weights(batch.mask[idx], self.loss_agg, self.max_new_tokens)
                if is_weights_BT is not None:
                    weights = weights * is_weights_BT[idx]
                stats: dict[str, float] = {}
                if train_policy:
                    self.policy_opt.zero_grad(set_to_none=True)
                if self.critic is not None:
                    self.critic_opt.zero_grad(set_to_none=True)
                for mstart in range(0, len(idx), cfg.micro_batch_size):
                    midx = idx[mstart : mstart + cfg.micro_batch_size]
                    mb = batch.rows(midx).to(self.device)
                    on_device = lambda t: t[midx].to(self.device)  # noqa: E731
                    w = weights[mstart : mstart + cfg.micro_batch_size].to(self.device)
                    share = mb.mask.sum().item() / num_tokens  # this micro-batch's weight in token means
                    if train_policy:
                        logits = self.sampling_logits(self.policy, mb)
                        logp = token_logprobs(logits, mb.response_ids)
                        loss, pstats = clipped_policy_loss(
                            logp, on_device(old_logp_BT), on_device(advantages_BT), mb.mask, cfg.clip_low, cfg.clip_high, w
                        )
                        entropy = entropy_from_logits(logits)
                        _acc(stats, "loss/policy", loss.item())
                        _acc(stats, "policy/entropy", masked_mean(entropy, mb.mask).item() * share)
                        for k, v in pstats.items():
                            _acc(stats, f"policy/{k}", v.item() * share)
                        if cfg.entropy_coef:
                            loss = loss - cfg.entropy_coef * (entropy * w).sum()
                        if kl_in_loss:
                            kl_loss = (kl_fn(logp, on_device(ref_logp_BT)) * w).sum()
                            _acc(stats, "loss/kl", kl_loss.item())
                            loss = loss + cfg.kl_coef * kl_loss
                        loss.backward()
                    if self.critic is not None:
                        values = response_logits(self.critic, mb)[..., 0].float()
                        vloss, vstats = clipped_value_loss(
                            values, on_device(old_values_BT), on_device(returns_BT), mb.mask, cfg.value_clip, num_tokens
                        )
                        (cfg.vf_coef * vloss).backward()
                        _acc(stats, "loss/value", vloss.item())
                        _acc(stats, "value/clip_frac", vstats["value_clip_frac"].item() * share)
                if train_policy:
                    gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                    _acc(stats, "policy/grad_norm", gn.item())
                    self.policy_opt.step()
                    self.policy_sched.step()
                if self.critic is not None:
                    gn = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                    _acc(stats, "value/grad_norm", gn.item())
                    self.critic_opt.step()
                    self.critic_sched.step()
                for k, v in stats.items():
                    _acc(sums, k, v)
                n_updates += 1
        out = {k: v / n_updates for k, v in sums.items()}
        out["policy/lr"] = self.policy_sched.get_last_lr()[0]
        return out

    # ---------------------------------------------------------------- checkpoint state

    def state_dict(self) -> dict:
        state = {"policy_opt": self.policy_opt.state_dict(), "policy_sched": self.policy_sched.state_dict()}
        if self.critic is not None:
            state["critic_opt"] = self.critic_opt.state_dict()
            state["critic_sched"] = self.critic_sched.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.policy_sched.load_state_dict(state["policy_sched"])
        if self.critic is not None:
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.critic_sched.load_state_dict(state["critic_sched"])


def _acc(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value
