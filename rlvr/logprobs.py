"""Lean logprobs: the LM head applied only where a response token is predicted, in chunks.

A full forward pass materialises float32 logits [B, L, V] for every position (prompt and padding
included), and autograd keeps them, their log-softmax and the entropy's for the backward pass:
at vocab 152k that is gigabytes per micro-batch. Here the transformer trunk runs once, its
hidden states are gathered at the N positions that predict a real response token, and
`HeadLogprobs` computes log pi(token) and the entropy chunk by chunk ([chunk, V] at a time) and
stores nothing but its inputs: the backward pass recomputes each chunk's logits and applies the
closed-form gradients

    d logp_t / d z = onehot(t) - p            d H / d z = -p * (log p + H)

with z = h W^T / temperature. The entropy gets no gradient unless it is asked for (an entropy
bonus), so its cost is a few flops per chunk. Equal to the full computation within float32
rounding (tests/test_logprobs.py).
"""

from __future__ import annotations

import torch

# config attributes that scale or squash logits after the LM head: the lean path would silently
# compute another distribution for such models, so it refuses them
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


class HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, targets_N, temperature: float, chunk: int, entropy_grad: bool):
        # the matmuls run in autocast's dtype when it is on (the residual stream, hence the hidden
        # states, stays float32 under autocast), else in the hidden states' dtype
        device = hidden_NH.device.type
        ctx.compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden_NH.dtype
        h_all, w = hidden_NH.to(ctx.compute_dtype), weight_VH.to(ctx.compute_dtype)
        N = hidden_NH.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=hidden_NH.device)
        entropy = torch.empty_like(logp)
        with torch.no_grad(), torch.autocast(device, enabled=False):
            for s in range(0, N, chunk):
                logp_all = _chunk_logsoftmax(h_all[s : s + chunk], w, temperature)  # [C, V], the only one held
                logp[s : s + chunk] = logp_all.gather(-1, targets_N[s : s + chunk, None]).squeeze(-1)
                entropy[s : s + chunk] = -(logp_all.exp() * logp_all).sum(-1)
        ctx.save_for_backward(hidden_NH, weight_VH, targets_N, entropy)
        ctx.temperature, ctx.chunk, ctx.entropy_grad = temperature, chunk, entropy_grad
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden_NH, weight_VH, targets_N, entropy = ctx.saved_tensors
        w = weight_VH.to(ctx.compute_dtype)
        d_hidden = torch.empty_like(hidden_NH) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device) if ctx.needs_input_grad[1] else None
        with torch.no_grad(), torch.autocast(hidden_NH.device.type, enabled=False):
            for s in range(0, hidden_NH.shape[0], ctx.chunk):
                h = hidden_NH[s : s + ctx.chunk].to(ctx.compute_dtype)
                logp_all = _chunk_logsoftmax(h, w, ctx.temperature)
                dz = logp_all.exp()  # p; two [C, V] tensors at a time, the rest in place
                g = g_logp[s : s + ctx.chunk, None].float() if g_logp is not None else torch.zeros_like(dz[:, :1])
                if ctx.entropy_grad and g_entropy is not None:
                    # dH/dz = -p (log p + H): folded into logp_all, then into dz
                    logp_all.add_(entropy[s : s + ctx.chunk, None]).mul_(g_entropy[s : s + ctx.chunk, None].float()).add_(g)
                    dz.mul_(logp_all).neg_()
                else:
                    dz.mul_(-g)
                del logp_all
                dz.scatter_add_(-1, targets_N[s : s + ctx.chunk, None], g)  # d logp_t / dz = onehot(t) - p
                if ctx.temperature != 1.0:
                    dz.div_(ctx.temperature)
                dz = dz.to(h.dtype)
                if d_hidden is not None:
                    d_hidden[s : s + ctx.chunk] = (dz @ w).to(d_hidden.dtype)
                if d_weight is not None:
                    d_weight += (dz.mT @ h).float()
        if d_weight is not None:
            d_weight = d_weight.to(weight_VH.dtype)
        return d_hidden, d_weight, None, None, None, None


def _chunk_logsoftmax(h_CH: torch.Tensor, w_VH: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(h W^T / temperature) in float32, computed in place in one [C, V] tensor."""
    z = (h_CH @ w_VH.mT).float()
    if temperature != 1.0:
        z.div_(temperature)
    return z.sub_(torch.logsumexp(z, -1, keepdim=True))


def head_logprobs(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_N: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(h W^T / temperature)[target] and the entropy per row, float32 [N] each."""
    return HeadLogprobs.apply(hidden_NH, weight_VH, targets_N, float(temperature), int(chunk), bool(entropy_grad))


def checkpointed_head_logprobs(head, hidden_NH, targets_N, temperature=1.0, chunk=1024, entropy_grad=False):
    """`head_logprobs` through the head module's own forward, each chunk checkpointed (recomputed in
    the backward pass). For heads whose weight is not a plain tensor outside their forward: under
    ZeRO-3 each call of the module gathers its partitioned weight."""
    from torch.utils.checkpoint import checkpoint

    def one(h, t):
        z = head(h).float()
        if temperature != 1.0:
            z = z / temperature
        logp_all = z.log_softmax(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, t[:, None]).squeeze(-1), entropy if entropy_grad else entropy.detach()

    # Each call of the module gathers its weight (a collective): every rank makes the same number of
    # calls, at least one (empty chunks where a rank has fewer tokens), so that ranks pair up and a
    # micro-batch without response tokens still has a loss in the graph.
    n = max(1, -(-hidden_NH.shape[0] // chunk))
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        count = torch.tensor([n], device=hidden_NH.device if hidden_NH.is_cuda else "cpu")
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        n = int(count)
    parts = [checkpoint(one, hidden_NH[i * chunk : (i + 1) * chunk], targets_N[i * chunk : (i + 1) * chunk], use_reentrant=False) for i in range(n)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def model_head_logprobs(model, hidden_NH, targets_N, temperature=1.0, chunk=1024, entropy_grad=False):
    """`head_logprobs` with `model`'s LM head (through the module under ZeRO-3, whose partitioned
    weight only the module's forward gathers)."""
    head = model.get_output_embeddings()
    if hasattr(head.weight, "ds_id"):
        return checkpointed_head_logprobs(head, hidden_NH, targets_N, temperature, chunk, entropy_grad)
    return head_logprobs(hidden_NH, head.weight, targets_N, temperature, chunk, entropy_grad)


def check_lean_model(model: torch.nn.Module) -> None:
    """The lean path computes softmax(trunk(x) W^T): refuse models whose logits are anything else."""
    cfg = model.config
    for name in _LOGIT_TRANSFORMS:
        value = getattr(cfg, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({name}={value}); lean logprobs do not reproduce that: "
                "set learner.lean_logprobs: false"
            )
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(f"{type(model).__name__}'s LM head is not a bias-free linear layer: set learner.lean_logprobs: false")


def response_hidden(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's hidden states at the positions that predict each real response token ([N, H],
    row-major over the batch's mask) and those tokens ([N])."""
    out = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    P, T = batch.prompt_width, batch.response_ids.shape[1]
    real = batch.mask.bool()
    return out.last_hidden_state[:, P - 1 : P + T - 1][real], batch.response_ids[real]


def lean_logprobs(model, batch, temperature: float, chunk: int, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs and entropy of the response tokens, [B, T] float32 each, 0 off the mask."""
    hidden, targets = response_hidden(model, batch)
    logp_N, ent_N = model_head_logprobs(model, hidden, targets, temperature, chunk, entropy_grad)
    real = batch.mask.bool()
    logp = torch.zeros(batch.mask.shape, dtype=torch.float32, device=logp_N.device).masked_scatter(real, logp_N)
    entropy = torch.zeros_like(logp).masked_scatter(real, ent_N)
    return logp, entropy
