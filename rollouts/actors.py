"""Rollout engines as Ray actors, and the transports that push the learner's weights to them.

    engines = EngineActors(2, "vllm", model_path, engine_kwargs, transport="distributed")
    rollouts = engines.generate(prompt_ids, sampling, n)     # prompts split across the engines
    engines.push(learner.policy_weights(dtype), version=7)   # every engine, or an EngineError

Each `RolloutActor` is one process running today's `RolloutEngine` unchanged (vLLM in-process,
or transformers), placed by a Ray placement group (`cpus` and `gpus` per engine). A step's
prompts are cut into contiguous slices, one per engine; per-prompt sampling seeds come from
the prompt's index in the whole list (`Sampling.first_index`), so vLLM's samples do not depend
on how many engines there are (the transformers engine seeds one generator per slice, so its
samples do), and results come back in prompt order.

Weights travel in byte buckets from the learner's process (rank 0 of a group of its own) to
every engine: over a torch.distributed group (`distributed`: NCCL when the learner has a GPU and
every engine whole GPUs of its own, else gloo through the CPU) or through the Ray object store
(`object_store`). An engine generates in one concurrency group and receives weights in another:
it stages what it receives and loads it before its next generation (at once when it is idle), so
a push never waits for a generation in flight; every rollout records the weights' version
(`Rollout.policy_version`). Starts, group forming and pushes have timeouts; a dead or stuck engine
is an `EngineError` naming the engine and the step.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import timedelta
from typing import Iterable, Iterator

import torch

from rlvr.rollouts.base import Rollout, Sampling
from rlvr.rollouts.vllm_engine import VLLM_ENV

TRANSPORTS = ("distributed", "object_store")

# what an engine process needs whatever the caller's environment: vLLM in the actor's own
# process, no torch.compile, quiet logs
ENGINE_ENV = {**VLLM_ENV, "TOKENIZERS_PARALLELISM": "false"}


class EngineError(RuntimeError):
    """A rollout engine actor failed to start, died, or missed a timeout."""


def _in(group: str, method):
    """An actor method called in one of the actor's concurrency groups: "generate" or "sync"
    (the others, ping/ready/close, run in the default group, free while both are busy)."""
    return method.options(concurrency_group=group)


def split_evenly(count: int, parts: int) -> list[slice]:
    """`parts` contiguous slices of range(count), sizes differing by at most one (empty ones dropped)."""
    base, extra = divmod(count, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (k < extra)
        if size:
            out.append(slice(start, start + size))
        start += size
    return out


def weight_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[tuple[list[tuple], torch.Tensor]]:
    """(layout, flat uint8 buffer) per bucket of about `bucket_bytes`; layout rows are
    (name, dtype, shape, offset, nbytes). Tensors are consumed one at a time (a ZeRO-3 gather
    yields them layer by layer); any dtypes share a bucket, each tensor 16-byte aligned."""
    layout: list[tuple] = []
    parts: list[torch.Tensor] = []
    size = 0
    for name, t in named:
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        if size % 16:  # every tensor starts 16-byte aligned, so that its bytes can be viewed as its dtype
            parts.append(torch.zeros(16 - size % 16, dtype=torch.uint8))
            size += 16 - size % 16
        layout.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), size, raw.numel()))
        parts.append(raw)
        size += raw.numel()
        if size >= bucket_bytes:
            yield layout, torch.cat(parts)
            layout, parts, size = [], [], 0
    if layout:
        yield layout, torch.cat(parts)


def unpack(layout: list[tuple], flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [(name, flat[o : o + nb].view(getattr(torch, dt)).view(shape)) for name, dt, shape, o, nb in layout]


def _new_group(backend: str, host: str, port: int, rank: int, world: int, timeout_s: float, is_master: bool = False):
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world, is_master=is_master, timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore("rlvr-weights", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world, opts)


class RolloutActor:
    """One engine process (wrapped by `ray.remote` in `EngineActors`). Generation and weight
    reception run in two concurrency groups, so weights arrive while a generation is running."""

    def __init__(self, name: str, kind: str, model_path: str, engine_kwargs: dict, threads: int, version: int = 0):
        from rlvr.rollouts import make_engine

        torch._C.set_num_threads(threads)  # torch.set_num_threads is a no-op beside in-process vLLM
        self.name = name
        self.engine = make_engine(kind, model_path, **engine_kwargs)
        self.version = version
        self.engine_lock = threading.Lock()  # the engine: one generation or weight load at a time
        self.stage_lock = threading.Lock()
        self.staged: tuple[list, int] | None = None
        self.incoming: list = []
        self.group, self.backend = None, ""
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def ready(self) -> dict:
        return {"pid": os.getpid(), "device": self.device}

    def ping(self) -> int:
        return self.version

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, n: int) -> list[Rollout]:
        with self.engine_lock:
            self._load_staged()
            out = self.engine.generate(prompt_ids, sampling, n)
            for r in out:
                r.policy_version = self.version
            return out

    def join_group(self, backend: str, host: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        if backend == "nccl" and self.device != "cuda":
            raise RuntimeError(f"{self.name}: weight transport over NCCL, but this engine sees no GPU")
        self.group, self.backend = _new_group(backend, host, port, rank, world, timeout_s), backend

    def receive_bucket(self, layout: list[tuple], nbytes: int) -> None:
        flat = torch.empty(nbytes, dtype=torch.uint8, device="cuda" if self.backend == "nccl" else "cpu")
        self.group.broadcast(flat, 0).wait()
        self.incoming += unpack(layout, flat)

    def receive_objects(self, bucket: tuple[list[tuple], torch.Tensor]) -> None:
        self.incoming += unpack(*bucket)

    def commit(self, version: int) -> None:
        """The weights received since the last commit are version `version` (none received: the
        weights are unchanged, only the version moves): load them now if the engine is idle, else
        before the next generation."""
        with self.stage_lock:
            if self.incoming or self.staged is None:
                self.staged = (self.incoming, version)
            else:  # weights still staged: they become this version
                self.staged = (self.staged[0], version)
            self.incoming = []
        if self.engine_lock.acquire(blocking=False):
            try:
                self._load_staged()
            finally:
                self.engine_lock.release()

    def _load_staged(self) -> None:
        with self.stage_lock:
            staged, self.staged = self.staged, None
        if staged is not None:
            if staged[0]:
                self.engine.load_weights(staged[0])
            self.version = staged[1]

    def close(self) -> None:
        self.engine.close()


def ensure_ray(address: str | None = None) -> None:
    """Join the Ray cluster named by `address` (or RAY_ADDRESS), else start a local one in this process."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)


class EngineActors:
    """`n` RolloutActors as one engine (`generate`, `load_weights`, `close`), plus `submit`/`gather`
    for overlapping work with generation and `push` for versioned weight updates."""

    def __init__(
        self,
        n: int,
        kind: str,
        model_path: str,
        engine_kwargs: dict,
        *,
        cpus: float = 1.0,
        gpus: float = 0.0,
        transport: str = "distributed",
        timeout_s: float = 120.0,
        start_timeout_s: float = 600.0,
        bucket_mb: int = 256,
        label: str = "rlvr",
        version: int = 0,
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weight transport {transport!r}; available: {', '.join(TRANSPORTS)}")
        ensure_ray()
        self.transport, self.timeout_s, self.bucket_bytes = transport, timeout_s, bucket_mb << 20
        self.version = version  # of the weights the engines start from
        self.names = [f"engine {k}" for k in range(n)]
        self.actors: list = []
        self.group = None
        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.pg = placement_group([bundle] * n, strategy="PACK")
        if not self.pg.wait(timeout_seconds=int(start_timeout_s)):
            ray.util.remove_placement_group(self.pg)
            raise EngineError(
                f"Ray could not place {n} rollout engine(s) of {bundle} within {start_timeout_s:.0f} s "
                f"(rollout.num_engines, rollout.engine_cpus, rollout.engine_gpus); free now: {ray.available_resources()}"
            )
        cls = ray.remote(concurrency_groups={"generate": 1, "sync": 1})(RolloutActor)
        env = {**ENGINE_ENV, "OMP_NUM_THREADS": str(max(1, int(cpus)))}
        tag = uuid.uuid4().hex[:8]
        try:
            for k in range(n):
                self.actors.append(
                    cls.options(
                        name=f"{label}:engine{k}:{tag}",
                        num_cpus=cpus,
                        num_gpus=gpus,
                        max_restarts=0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=k),
                        runtime_env={"env_vars": env},
                    ).remote(self.names[k], kind, model_path, engine_kwargs, max(1, int(cpus)), version)
                )
            self.info = self._get([a.ready.remote() for a in self.actors], "start", start_timeout_s)
            if gpus and any(i["device"] != "cuda" for i in self.info):
                raise EngineError(f"rollout.engine_gpus is {gpus} but an engine sees no GPU: {self.info}")
            if transport == "distributed":
                self._join_group(nccl=gpus >= 1 and float(gpus).is_integer() and torch.cuda.is_available())
        except BaseException:
            self.close()
            raise

    # -- generation
    def submit(self, prompt_ids: list[list[int]], sampling: Sampling, n: int = 1) -> list[tuple]:
        """Start generating; one (ref, engine index) per engine's slice of the prompts, in prompt order."""
        import dataclasses

        pending = []
        for k, sl in enumerate(split_evenly(len(prompt_ids), len(self.actors))):
            part = dataclasses.replace(sampling, first_index=sampling.first_index + sl.start)
            pending.append((_in("generate", self.actors[k].generate).remote(prompt_ids[sl], part, n), k, sl))
        return pending

    def as_completed(self, pending: list[tuple], what: str = "generate") -> Iterator[tuple[slice, list[Rollout]]]:
        """(prompt slice, its rollouts) for each engine's share, as soon as that engine is done."""
        import ray

        waiting = {ref: (k, sl) for ref, k, sl in pending}
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            k, sl = waiting.pop(done[0])
            yield sl, self._get(done, what, None, engines=[k])[0]

    def gather(self, pending: list[tuple], what: str = "generate") -> list[Rollout]:
        out: list[Rollout] = []
        for ref, k, _ in pending:
            out += self._get([ref], what, None, engines=[k])[0]
        return out

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, n: int = 1) -> list[Rollout]:
        return self.gather(self.submit(prompt_ids, sampling, n))

    # -- weights
    def push(self, named: Iterable[tuple[str, torch.Tensor]], version: int) -> dict[str, float]:
        """Send the weights to every engine as `version`; returns seconds and bytes (of the tensors)."""
        t0, total = time.perf_counter(), 0
        refs = []
        what = f"weight push of step {version}"
        try:
            for layout, flat in weight_buckets(named, self.bucket_bytes):
                total += sum(row[-1] for row in layout)
                if self.transport == "distributed":
                    refs += [_in("sync", a.receive_bucket).remote(layout, flat.numel()) for a in self.actors]
                    self.group.broadcast(flat.to(self.device), 0).wait()
                    if self.backend == "nccl":
                        torch.cuda.synchronize()  # an NCCL wait() returns before the transfer ends
                else:  # one buffer per bucket (views of it would each carry the whole buffer)
                    ref = __import__("ray").put((layout, flat))
                    refs += [_in("sync", a.receive_objects).remote(ref) for a in self.actors]
            refs += [_in("sync", a.commit).remote(version) for a in self.actors]
            self._get(refs, what, self.timeout_s)
        except EngineError:
            raise
        except Exception as e:  # a collective that timed out or lost a peer
            raise EngineError(f"{what} to {self._dead_or_all()} failed after {time.perf_counter() - t0:.1f} s: {e}") from e
        self.version = version
        return {"seconds": time.perf_counter() - t0, "bytes": float(total)}

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.push(named_tensors, self.version + 1)

    def set_version(self, version: int) -> None:
        """The weights did not change (a step without an update), but they are now `version`."""
        self._get([_in("sync", a.commit).remote(version) for a in self.actors], f"version of step {version}", self.timeout_s)
        self.version = version

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(a)
        self.actors = []
        self.group = self._store = None
        if getattr(self, "pg", None) is not None:
            try:
                ray.util.remove_placement_group(self.pg)
            except Exception:
                pass
            self.pg = None

    # -- internals
    @property
    def device(self) -> str:
        return "cuda" if self.backend == "nccl" else "cpu"

    def _join_group(self, nccl: bool) -> None:
        import ray
        import torch.distributed as dist

        self.backend = "nccl" if nccl else "gloo"
        host = ray.util.get_node_ip_address()
        world = len(self.actors) + 1
        store = dist.TCPStore(host, 0, world, is_master=True, timeout=timedelta(seconds=self.timeout_s), wait_for_workers=False)
        self._store = store  # the engines rendezvous through it; it lives as long as the group
        refs = [
            _in("sync", a.join_group).remote(self.backend, host, store.port, k + 1, world, self.timeout_s) for k, a in enumerate(self.actors)
        ]
        try:
            self.group = _new_group(self.backend, host, store.port, 0, world, self.timeout_s)
        except Exception as e:
            raise EngineError(f"the weight group with the engines did not form within {self.timeout_s:.0f} s: {e}") from e
        self._get(refs, "joining the weight group", self.timeout_s)

    backend = "gloo"

    def _get(self, refs: list, what: str, timeout: float | None, engines: list[int] | None = None) -> list:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(refs, timeout=timeout)
        except GetTimeoutError:
            raise EngineError(f"{what}: {self._dead_or_all(engines)} did not answer within {timeout:.0f} s") from None
        except RayActorError as e:
            raise EngineError(f"{what}: {self._dead_or_all(engines)} died ({_first_line(e)})") from None
        except RayTaskError as e:
            raise EngineError(f"{what}: {self._dead_or_all(engines)} failed: {_first_line(e)}") from e

    def _dead_or_all(self, engines: list[int] | None = None) -> str:
        """The engines that are dead or do not answer a ping within 5 s (else the ones concerned,
        else all), by name."""
        import ray

        pings = {a.ping.remote(): k for k, a in enumerate(self.actors)}
        answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=5)
        dead = []
        for ref, k in pings.items():
            try:
                if ref not in answered:
                    raise TimeoutError
                ray.get(ref)
            except Exception:
                dead.append(self.names[k])
        if dead:
            return ", ".join(dead)
        return ", ".join(self.names[k] for k in (engines if engines is not None else range(len(self.actors))))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(e).__name__
