"""How one trained model (policy or critic) takes its optimizer steps: plain torch or DeepSpeed ZeRO.

The learner (rlvr.learner) computes losses; a `ModelTrainer` owns the model's optimizer,
schedule, gradient clipping, precision and ranks:

    out = trainer.call(fn, *args)   # fn(model, *args) as the model's forward pass
    trainer.backward(loss)          # gradients accumulate until step()
    grad_norm = trainer.step()

Every forward pass that takes part in training goes through `call`: under DeepSpeed it runs
inside DeepSpeedEngine.forward (a thin module whose forward calls `fn` on the model), so the
hooks DeepSpeed installs there (micro-step counting, ZeRO-3 prefetching, its bf16 optimizer's
gradient bookkeeping) see every pass, whatever part of the model `fn` uses (the lean logprobs
call the trunk and the LM head separately).

Precision (both backends): the weights the optimizer updates and its states are float32
("master weights"); with `model.dtype: bfloat16` the forward and backward passes compute in
bfloat16 (torch: autocast; DeepSpeed: its bf16 mode, which keeps the fp32 master copy in the
ZeRO optimizer). An update far below a bf16 weight's spacing (lr 1e-6 on weights of size 1e-2)
is kept in the master weights, where pure bf16 would round it away; the rollout engine gets the
master weights cast to its dtype.

Ranks (DeepSpeed): every rank runs the same number of forward/backward passes on its share of
each minibatch, with the minibatch's loss weights; DeepSpeed averages gradients over ranks, so
`backward` multiplies the loss by the world size and the update equals one rank's on the whole
minibatch.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator

import torch
from torch.optim.lr_scheduler import LambdaLR

from rlvr.config import LearnerConfig

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


class ModelTrainer:
    """The torch backend: one process, AdamW, fp32 master weights, bf16 autocast when asked."""

    rank, world_size = 0, 1

    def __init__(self, model: torch.nn.Module, make_optimizer: OptimizerFactory, schedule: Callable[[int], float], max_grad_norm: float, compute_dtype: torch.dtype):
        self.module = model.float()  # master weights
        self.max_grad_norm = max_grad_norm
        self.compute_dtype = compute_dtype
        self.device = next(model.parameters()).device
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.scheduler = LambdaLR(self.optimizer, schedule)

    def autocast(self):
        return self.autocast_for(self.module, self.compute_dtype)

    def call(self, fn, *args, **kwargs):
        """fn(model, *args, **kwargs), computed in the trainer's precision."""
        with self.autocast():
            return fn(self.module, *args, **kwargs)

    @staticmethod
    def autocast_for(model: torch.nn.Module, compute_dtype: torch.dtype):
        """The context a float32 `model` computes in at `compute_dtype`."""
        if compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(next(model.parameters()).device.type, dtype=compute_dtype)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        """Accumulate the gradient of `loss`; `last`: the minibatch's last micro-batch (DeepSpeed reduces then)."""
        loss.backward()

    def step(self) -> float:
        """Clip, take one optimizer step and one schedule step; returns the global gradient norm before
        clipping. A non-finite norm skips the optimizer step (the gradients are dropped, the weights
        and the optimizer's moments stay as they were; the schedule moves on)."""
        norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm))
        if math.isfinite(norm):
            self.optimizer.step()
        else:
            self.zero_grad()
        self.scheduler.step()
        return norm

    def skip(self) -> None:
        """Drop this minibatch's gradients without a step (its loss was not finite)."""
        self.zero_grad()
        self.scheduler.step()

    def last_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """The full weights, one tensor at a time, cast to `dtype` (what the rollout engine loads)."""
        for name, t in self.module.state_dict().items():
            yield name, t.detach().to(dtype)

    def gathered_state(self) -> dict[str, torch.Tensor] | None:
        """The full float32 weights where the module does not hold them (ZeRO-3), else None."""
        return None

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_to(self, folder) -> None:
        """States kept outside state_dict() (DeepSpeed's partitioned ones); none here."""

    def load_from(self, folder) -> None:
        pass


class NonFiniteError(RuntimeError):
    """A NaN or inf that the learner cannot skip past (DeepSpeed), or too many skipped updates in a row."""


class DeepSpeedTrainer(ModelTrainer):
    """DeepSpeed ZeRO 0-3 with a torch optimizer (no compiled ops), fp32 or bf16 compute."""

    def __init__(self, model, make_optimizer, schedule, max_grad_norm, compute_dtype, cfg: LearnerConfig):
        import deepspeed

        init_distributed()
        bf16 = compute_dtype == torch.bfloat16
        if bf16 and cfg.zero_stage == 0:
            raise ValueError("DeepSpeed keeps bf16 runs' float32 master weights in its ZeRO optimizer: use learner.zero_stage 1-3 (or backend torch)")
        zero: dict = {"stage": cfg.zero_stage, "stage3_param_persistence_threshold": cfg.zero3_persistence_threshold}
        if cfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # we form micro-batches ourselves; these two only name the unit
            "gradient_accumulation_steps": 1,  # the boundary is set per micro-batch (backward's `last`)
            "gradient_clipping": max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": bf16},
            **({"data_types": {"grad_accum_dtype": "fp32"}} if bf16 else {}),  # micro-batch gradients add up in fp32
            "zero_allow_untested_optimizer": True,  # a torch optimizer: no JIT-compiled FusedAdam/CPUAdam
            "zero_force_ds_cpu_optimizer": False,  # offloaded: torch's AdamW steps the CPU copy
            "wall_clock_breakdown": False,
            "steps_per_print": 2**31 - 1,
        }
        model = model.float()
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=_Call(model), optimizer=optimizer, lr_scheduler=lambda opt: LambdaLR(opt, schedule), config=ds_config
        )
        self.module = self.engine.module.model
        self.compute_dtype, self.max_grad_norm = compute_dtype, max_grad_norm
        self.zero_stage = cfg.zero_stage
        self.device = self.engine.device
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed's bf16 mode holds bf16 weights itself

    def zero_grad(self) -> None:
        pass  # DeepSpeed zeroes after each step

    def skip(self) -> None:
        raise NonFiniteError("a non-finite loss; DeepSpeed cannot skip a step once its micro-batches are under way")

    def call(self, fn, *args, **kwargs):
        return self.engine(fn, *args, **kwargs)  # DeepSpeedEngine.forward -> _Call.forward -> fn(model, ...)

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world_size)

    def step(self) -> float:
        before = None
        if self.zero_stage == 0:  # DeepSpeed clips without keeping the norm there; the gradients are whole on every rank
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            before = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))) if grads else 0.0
        if before is not None and not math.isfinite(before):
            raise NonFiniteError(f"a non-finite gradient norm ({before}); DeepSpeed cannot skip the step")
        self.engine.step()
        norm = self.engine.get_global_grad_norm() if before is None else before
        if norm is None:
            raise RuntimeError(f"DeepSpeed (ZeRO {self.zero_stage}) reported no gradient norm")
        if not math.isfinite(float(norm)):
            raise NonFiniteError(f"DeepSpeed (ZeRO {self.zero_stage}) stepped with a non-finite gradient norm ({norm}); it cannot skip a step")
        return float(norm)

    def full_weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """Under ZeRO-3 each parameter is gathered from its shards, one at a time (a collective: every
        rank must iterate); otherwise the module holds full weights."""
        if self.zero_stage < 3:
            yield from super().full_weights(dtype)
            return
        import deepspeed

        for name, p in self.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                t = p.detach().to(dtype).clone()
            yield name, t

    def gathered_state(self) -> dict[str, torch.Tensor] | None:
        """The float32 master weights (the module holds bf16 copies in bf16 mode, shards under ZeRO-3),
        gathered one parameter at a time into CPU memory (a collective: every rank calls it)."""
        from deepspeed.utils import safe_get_full_fp32_param

        if self.zero_stage < 3 and self.compute_dtype == torch.float32:
            return None  # the module's own weights are the master weights
        out = {}
        for name, p in self.module.named_parameters():
            full = safe_get_full_fp32_param(p)
            out[name] = (full if full is not None else p.detach()).float().cpu()
        return out if self.rank == 0 else {}

    def state_dict(self) -> dict:
        return {}  # partitioned over ranks: written by save_to

    def load_state_dict(self, state: dict) -> None:
        pass

    def save_to(self, folder) -> None:
        """Optimizer, schedule and (fp32 master) weights as DeepSpeed writes them, every rank its shard."""
        self.engine.save_checkpoint(str(folder), tag="state")

    def load_from(self, folder) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag="state", load_module_strict=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed learner state in {folder}")


class _Call(torch.nn.Module):
    """The module DeepSpeed wraps: its forward runs fn(model, ...) (its parameters are the model's,
    named `model.<name>` in DeepSpeed's own checkpoints)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def init_distributed() -> None:
    """torch.distributed for DeepSpeed: from a launcher's environment (torchrun, deepspeed), or a
    single rank of its own; gloo on the CPU, NCCL on GPUs."""
    import deepspeed

    # DeepSpeed would JIT-compile a shared-memory op (about a minute) for CPU collectives
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.distributed.is_initialized():
        return
    for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_trainer(model, make_optimizer, schedule, max_grad_norm, compute_dtype, cfg: LearnerConfig) -> ModelTrainer:
    if cfg.backend == "deepspeed":
        return DeepSpeedTrainer(model, make_optimizer, schedule, max_grad_norm, compute_dtype, cfg)
    return ModelTrainer(model, make_optimizer, schedule, max_grad_norm, compute_dtype)
