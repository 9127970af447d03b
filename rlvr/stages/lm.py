"""Pretraining and SFT: next-token loss over packed (or padded) sequences.

`pretrain`: text -> one token stream (EOS between documents) cut into `seq_len` rows; every
token is a target. `sft`: chat rows rendered with the tokenizer's chat template; only the
assistant tokens (and the EOS after them) are targets, every other token is masked (-100).

Both: AdamW with warm-up and cosine (or linear) decay, token-level loss over the whole batch
(micro-batches accumulate to it exactly), eval loss every N steps, atomic checkpoints,
`--resume`, TensorBoard + metrics.jsonl, and the final model in `<run_dir>/final/`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rlvr import checkpoint as ckpt
from rlvr.config import StageConfig, to_yaml
from rlvr.learner import lr_lambda
from rlvr.models import initial_model, load_policy, load_tokenizer, num_params
from rlvr.rollouts import derive_seed
from rlvr.runlog import RunLogger

IGNORE = -100


class StageError(ValueError):
    """Bad stage input (data, model path); the CLI prints it as one line with exit status 2."""


# ------------------------------------------------------------------------------------ data


def stage_rows(source: str) -> list[dict]:
    """Rows of a stage's data file, folder or hub dataset; a bad source is a StageError."""
    from rlvr.data import DataError, load_rows

    try:
        return load_rows(source)
    except DataError as e:
        raise StageError(str(e)) from None


def read_texts(source: str) -> list[str]:
    """Documents from a .txt file (blocks separated by a blank line), or from the `text` column
    of JSONL/Parquet/a hub dataset."""
    path = Path(source)
    if path.is_file() and path.suffix == ".txt":
        blocks = [b.strip() for b in path.read_text().split("\n\n")]
        return [b for b in blocks if b]
    rows = stage_rows(source)
    texts = []
    for i, row in enumerate(rows):
        if not isinstance(row.get("text"), str):
            raise StageError(f"{source} row {i}: needs a 'text' string")
        texts.append(row["text"])
    return texts


def read_chats(source: str) -> list[list[dict]]:
    """`messages` lists (the usual chat JSONL) ending with an assistant turn."""
    rows = stage_rows(source)
    out = []
    for i, row in enumerate(rows):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise StageError(f"{source} row {i}: needs a non-empty 'messages' list")
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
                raise StageError(f"{source} row {i}: each message needs a role (system/user/assistant) and a content string")
        if msgs[-1]["role"] != "assistant":
            raise StageError(f"{source} row {i}: the last message must be the assistant's")
        out.append([{"role": m["role"], "content": m["content"]} for m in msgs])
    return out


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sft_tokenize(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are the ids on assistant tokens, -100 on every other token.

    An assistant turn's tokens are those between the rendering of the turns before it (with the
    generation prompt) and the rendering up to and including it. When the conversation ends with
    an assistant turn and the template does not close it with EOS, an EOS is added as a target.
    """
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render_chat(tokenizer, messages[:i], add_generation_prompt=True))
        upto = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(upto)] != upto or start > len(upto):
            raise StageError("the chat template does not render earlier turns as a prefix of later ones; cannot mask prompts")
        labels[start : len(upto)] = full[start : len(upto)]
    eos = tokenizer.eos_token_id
    if messages and messages[-1]["role"] == "assistant" and eos is not None and (not full or full[-1] != eos):
        full, labels = full + [eos], labels + [eos]
    return full, labels


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (ids, labels) pairs and cut into rows of seq_len (the tail is padded, not dropped)."""
    ids = [t for e in examples for t in e[0]]
    labels = [t for e in examples for t in e[1]]
    n = max(1, -(-len(ids) // seq_len))
    ids += [pad_id] * (n * seq_len - len(ids))
    labels += [IGNORE] * (n * seq_len - len(labels))
    return torch.tensor(ids).view(n, seq_len), torch.tensor(labels).view(n, seq_len)


def pad_rows(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [e[0][:seq_len] + [pad_id] * (seq_len - len(e[0][:seq_len])) for e in examples]
    labels = [e[1][:seq_len] + [IGNORE] * (seq_len - len(e[1][:seq_len])) for e in examples]
    return torch.tensor(ids), torch.tensor(labels)


def stage_texts(cfg: StageConfig, mode: str) -> tuple[list, list, list[str]]:
    """(train examples, eval examples, tokenizer text): texts for pretrain, chats for sft."""
    from rlvr.tasks import make_task, world_corpus, world_vocabulary

    d = cfg.data
    if bool(d.task) == bool(d.train):
        raise StageError("set one of data.task (a synthetic task) and data.train (a file or hub dataset)")
    if d.task and d.task != "world":
        raise StageError(f"data.task: unknown task {d.task!r}; available: world")
    vocab = [" ".join(world_vocabulary())] if d.task else []
    if mode == "pretrain":
        if d.task:
            return world_corpus(d.num_train, seed=cfg.seed), world_corpus(d.num_eval, seed=cfg.seed + 10_000), vocab
        train = read_texts(d.train)
        heldout = read_texts(d.eval) if d.eval else []
        return train, heldout, vocab + train[:20000]
    if d.task:
        tr, ev = make_task(d.task, d.num_train, d.num_eval, seed=cfg.seed)
        return [r["messages"] for r in tr], [r["messages"] for r in ev], vocab
    train = read_chats(d.train)
    heldout = read_chats(d.eval) if d.eval else []
    return train, heldout, vocab + [m["content"] for c in train[:20000] for m in c]


def encode(cfg: StageConfig, mode: str, items: list, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    pad = tokenizer.pad_token_id
    if mode == "pretrain":
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        examples = []
        for text in items:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            examples.append((ids, ids))
        return pack(examples, cfg.data.seq_len, pad)
    examples = [sft_tokenize(tokenizer, msgs) for msgs in items]
    return (pack if cfg.data.packing else pad_rows)(examples, cfg.data.seq_len, pad)


# ------------------------------------------------------------------------------------ model


def lm_loss(model, ids: torch.Tensor, labels: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and the number of targets."""
    attn = (ids != pad_id) | (labels != IGNORE)
    logits = model(input_ids=ids, attention_mask=attn.long()).logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


@torch.no_grad()
def eval_loss(model, ids: torch.Tensor, labels: torch.Tensor, pad_id: int, micro: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(ids), micro):
        loss, k = lm_loss(model, ids[s : s + micro], labels[s : s + micro], pad_id)
        total, n = total + loss.item(), n + k
    model.train()
    return total / max(n, 1)


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of optimizer step `step` (0-based): epochs over a seeded permutation; a pure function of step."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_rows)
        perm = np.random.default_rng(derive_seed(seed, epoch)).permutation(num_rows)
        take = min(batch_size - len(out), num_rows - offset)
        out.extend(perm[offset : offset + take].tolist())
    return np.array(out)


# ------------------------------------------------------------------------------------ loop


def make_optimizer(model, o, steps: int):
    """AdamW and its warm-up + decay schedule over `steps` optimizer steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.adam_betas, weight_decay=o.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.lr_schedule, o.warmup_steps, steps))


def restore(last: Path | None, opt, sched, history: dict) -> tuple[int, dict]:
    """(step, history) from checkpoint `last` (optimizer, schedule and RNG restored), or (0, history)."""
    if last is None:
        return 0, history
    state = ckpt.load_trainer_state(last)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    return state["step"], state["history"]


def prepare_run(cfg: StageConfig, resume: bool) -> Path | None:
    run_dir = cfg.run_dir
    if not resume and (run_dir / "config.yaml").exists():
        raise StageError(f"{run_dir} already holds a run; pass --resume to continue it, or change name/seed")
    return ckpt.latest_checkpoint(run_dir) if resume else None


def train_lm(cfg: StageConfig, mode: str, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) `pretrain` or `sft`; returns the summary also written to summary.json."""
    assert mode in ("pretrain", "sft")
    last = prepare_run(cfg, resume)
    run_dir = cfg.run_dir
    train_items, eval_items, tok_text = stage_texts(cfg, mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.seed)

    init = initial_model(cfg, run_dir, tok_text)
    model_path = str(last / "policy") if last else init
    tokenizer = load_tokenizer(model_path)
    model = load_policy(model_path, cfg.model.dtype)
    model.train()
    train_ids, train_labels = encode(cfg, mode, train_items, tokenizer)
    eval_ids, eval_labels = encode(cfg, mode, eval_items, tokenizer) if eval_items else (None, None)

    o = cfg.optim
    opt, sched = make_optimizer(model, o, o.steps)
    step, history = restore(last, opt, sched, {"first_eval_loss": None, "last_eval_loss": None, "wall_s": 0.0})
    log = RunLogger(run_dir, resume_step=step)
    pad = tokenizer.pad_token_id
    t_run = time.perf_counter() - history["wall_s"]
    if step == 0:
        log.text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)
        first = {"model/params": num_params(model), "data/train_rows": len(train_ids)}
        if eval_ids is not None:
            history["first_eval_loss"] = history["last_eval_loss"] = eval_loss(model, eval_ids, eval_labels, pad, o.micro_batch_size)
            first["loss/eval"] = history["first_eval_loss"]
        log.scalars(0, first)

    from tqdm.auto import tqdm

    bar = tqdm(range(step, o.steps), desc=f"{mode} {cfg.name}", unit="step", initial=step, total=o.steps, disable=not progress)
    try:
        for step in bar:
            t = time.perf_counter()
            idx = batch_indices(len(train_ids), o.batch_size, step, cfg.seed)
            n_targets = int((train_labels[idx][:, 1:] != IGNORE).sum())
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for s in range(0, len(idx), o.micro_batch_size):
                mb = idx[s : s + o.micro_batch_size]
                loss, _ = lm_loss(model, train_ids[mb], train_labels[mb], pad)
                (loss / max(n_targets, 1)).backward()
                total += loss.item()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
            opt.step()
            sched.step()
            done = step + 1
            m = {"loss/train": total / max(n_targets, 1), "optim/grad_norm": gn.item(), "optim/lr": sched.get_last_lr()[0]}
            m["time/step_s"] = time.perf_counter() - t
            m["data/tokens_per_s"] = n_targets / m["time/step_s"]
            if eval_ids is not None and (done % cfg.train.eval_every == 0 or done == o.steps):
                history["last_eval_loss"] = m["loss/eval"] = eval_loss(model, eval_ids, eval_labels, pad, o.micro_batch_size)
            history["wall_s"] = time.perf_counter() - t_run
            if done % cfg.train.log_every == 0 or done == o.steps or "loss/eval" in m:
                log.scalars(done, m)
            bar.set_postfix(loss=f"{m['loss/train']:.3f}", eval=f"{history['last_eval_loss'] or float('nan'):.3f}")
            if done % cfg.train.checkpoint_every == 0 or done == o.steps:
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history}
                ckpt.save_checkpoint(run_dir, done, model, None, tokenizer, state, keep=cfg.train.keep_checkpoints)
    finally:
        log.close()
    return finish(cfg, run_dir, model, tokenizer, {"stage": mode, **history})


def finish(cfg: StageConfig, run_dir: Path, model, tokenizer, summary: dict) -> dict:
    """Write `<run_dir>/final/` (HF format, atomically) and summary.json."""
    final, tmp = run_dir / "final", run_dir / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    summary = {"experiment": cfg.name, "seed": cfg.seed, "steps": cfg.optim.steps, "model": str(final), **summary}
    summary["wall_s"] = round(summary.get("wall_s", 0.0), 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
