"""Pretraining and SFT: next-token loss over packed (or one-per-row) examples.

`pretrain`: each document and an EOS, cut into pieces of at most `seq_len` tokens, every token
a target. `sft`: chat rows rendered with the model's own chat template; only the assistant
turns up to their end-of-turn token (`<|im_end|>`, `<|eot_id|>`, or an EOS the template does
not write) are targets, every other token is masked (-100). Examples are packed into rows with
positions that restart per example and block-diagonal attention (`Rows`): no token sees another
example, and a packed batch has the loss of the same examples one per row.

Both: AdamW with warm-up and cosine (or linear) decay, token-level loss over the whole batch
(micro-batches accumulate to it exactly), eval loss every N steps, atomic checkpoints,
`--resume`, TensorBoard + metrics.jsonl, and the final model in `<run_dir>/final/`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlvr import checkpoint as ckpt
from rlvr.chat import IGNORE, ChatFormatError, check_messages, sft_example, stop_token_ids
from rlvr.backends import ModelTrainer, make_trainer
from rlvr.config import LearnerConfig, StageConfig, check_resume, to_yaml
from rlvr.learner import lr_lambda
from rlvr.logprobs import check_lean_model, model_head_logprobs
from rlvr.models import DTYPES, initial_model, learner_device, load_policy, load_tokenizer, num_params
from rlvr.rollouts import derive_seed
from rlvr.runlog import RunLogger


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
    out = []
    for i, row in enumerate(stage_rows(source)):
        try:
            msgs = check_messages(row.get("messages"), f"{source} row {i}: 'messages'")
        except ChatFormatError as e:
            raise StageError(str(e)) from None
        if msgs[-1]["role"] != "assistant":
            raise StageError(f"{source} row {i}: the last message must be the assistant's")
        out.append(msgs)
    return out


@dataclass
class Rows:
    """Training rows: token ids, labels (IGNORE where a token is no target) and position ids, each
    [N, seq_len]. Positions restart at 0 with every example, and the model is called with them
    and no attention mask, so attention is block-diagonal: no token attends across an example
    boundary (transformers builds the mask from the restarts; flash-attention runs varlen)."""

    ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    truncated: int = 0  # examples longer than seq_len, cut from the end

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, idx) -> "Rows":
        return Rows(self.ids[idx], self.labels[idx], self.positions[idx])


def make_rows(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int, pack: bool) -> Rows:
    """(ids, labels) examples into rows of seq_len: one example per row, or (`pack`) each example
    after the previous one while it fits. An example longer than seq_len is truncated from the
    end; none is split across rows. The first token of an example is no target (nothing of its
    own example precedes it), and the padding that ends a row is a segment of its own with no
    targets, so a packed row's loss is the sum of its examples' losses alone."""
    ids_rows, label_rows, pos_rows = [], [], []
    ids, labels, pos = [], [], []
    truncated = 0

    def close() -> None:
        pad = seq_len - len(ids)
        ids_rows.append(ids + [pad_id] * pad)
        label_rows.append(labels + [IGNORE] * pad)
        pos_rows.append(pos + list(range(pad)))

    for e_ids, e_labels in examples:
        if not e_ids:
            continue
        if len(e_ids) > seq_len:
            e_ids, e_labels, truncated = e_ids[:seq_len], e_labels[:seq_len], truncated + 1
        if ids and (not pack or len(ids) + len(e_ids) > seq_len):
            close()
            ids, labels, pos = [], [], []
        ids, labels, pos = ids + e_ids, labels + [IGNORE] + e_labels[1:], pos + list(range(len(e_ids)))
    if ids or not ids_rows:
        close()
    return Rows(torch.tensor(ids_rows), torch.tensor(label_rows), torch.tensor(pos_rows), truncated)


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
            corpus = world_corpus(d.num_train, seed=cfg.seed)
            return corpus, world_corpus(d.num_eval, seed=cfg.seed + 10_000), vocab + corpus[:5000]
        train = read_texts(d.train)
        heldout = read_texts(d.eval) if d.eval else []
        return train, heldout, vocab + train[:20000]
    if d.task:
        tr, ev = make_task(d.task, d.num_train, d.num_eval, seed=cfg.seed)
        chats = [r["messages"] for r in tr if r["messages"][-1]["role"] == "assistant"]  # prompt-only rows are for DPO and RLVR
        return chats, [r["messages"] for r in ev], vocab + [m["content"] for c in chats[:5000] for m in c]
    train = read_chats(d.train)
    heldout = read_chats(d.eval) if d.eval else []
    return train, heldout, vocab + [m["content"] for c in train[:20000] for m in c]


def encode(cfg: StageConfig, mode: str, items: list, tokenizer, model_path: str) -> Rows:
    """Pretraining: each document and an EOS, cut into pieces of at most seq_len (every token a
    target), packed. SFT: each chat through the model's own template, only the assistant turns
    as targets, packed when `data.packing`."""
    seq_len = cfg.data.seq_len
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if mode == "pretrain":
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        pieces = []
        for text in items:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            pieces += [(ids[s : s + seq_len], ids[s : s + seq_len]) for s in range(0, len(ids), seq_len)]
        return make_rows(pieces, seq_len, pad, pack=True)
    stop = stop_token_ids(model_path, tokenizer)
    try:
        examples = [sft_example(tokenizer, msgs, stop) for msgs in items]
    except ChatFormatError as e:
        raise StageError(str(e)) from None
    return make_rows(examples, seq_len, pad, pack=cfg.data.packing)


# ------------------------------------------------------------------------------------ model


def lm_loss(model, rows: Rows, lean: bool = False, chunk: int = 1024) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and the number of targets. No attention
    mask: with positions that restart per example, attention stays within each example. `lean`:
    the LM head only at target positions, in chunks (rlvr.logprobs), never [rows, L, V] logits."""
    device = next(model.parameters()).device
    ids, positions, targets = rows.ids.to(device), rows.positions.to(device), rows.labels[:, 1:].to(device)
    if lean:
        hidden = model.base_model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[:, :-1]
        real = targets != IGNORE
        logp, _ = model_head_logprobs(model, hidden[real], targets[real], 1.0, chunk)
        return -logp.sum(), int(real.sum())
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, :-1].float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


@torch.no_grad()
def eval_loss(model, rows: Rows, micro: int, trainer: ModelTrainer | None = None, lean: bool = False) -> float:
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(rows), micro):
        part = rows.select(slice(s, s + micro))
        loss, k = trainer.call(lm_loss, part, lean) if trainer is not None else lm_loss(model, part, lean)
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


def make_trainer_for(model, o, steps: int, dtype: str = "float32", learner: LearnerConfig | None = None) -> ModelTrainer:
    """AdamW with its warm-up + decay schedule over `steps` optimizer steps, on the backend and in the
    precision `rlvr train` uses (float32 master weights; `dtype` bfloat16: bf16 compute)."""
    learner = learner or LearnerConfig()
    if learner.world_size != 1:
        raise StageError(f"learner.world_size {learner.world_size}: the stages run one learner rank")
    if learner.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if learner.lean_logprobs:
        check_lean_model(model)
    make = lambda params: torch.optim.AdamW(params, lr=o.lr, betas=o.adam_betas, weight_decay=o.weight_decay)  # noqa: E731
    return make_trainer(model, make, lr_lambda(o.lr_schedule, o.warmup_steps, steps), o.max_grad_norm, DTYPES[dtype], learner)


def stage_trainer(cfg: StageConfig, model, steps: int) -> ModelTrainer:
    return make_trainer_for(model, cfg.optim, steps, cfg.model.dtype, cfg.learner)


def restore(last: Path | None, trainer: ModelTrainer, history: dict) -> tuple[int, dict]:
    """(step, history) from checkpoint `last` (optimizer, schedule and RNG restored), or (0, history)."""
    if last is None:
        return 0, history
    state = ckpt.load_trainer_state(last)
    trainer.load_state_dict({"optimizer": state.get("optimizer"), "scheduler": state.get("scheduler")})
    trainer.load_from(last / "learner")
    ckpt.set_rng_state(state["rng"])
    return state["step"], state["history"]


def save(run_dir: Path, done: int, model, tokenizer, trainer: ModelTrainer, history: dict, keep: int) -> None:
    ckpt.save_checkpoint(
        run_dir, done, model, None, tokenizer, {**trainer.state_dict(), "history": history}, keep=keep,
        policy_weights=trainer.gathered_state(), save_extra=lambda folder: trainer.save_to(folder / "learner"),
    )


def prepare_run(cfg: StageConfig, resume: bool) -> Path | None:
    run_dir = cfg.run_dir
    if not resume and (run_dir / "config.yaml").exists():
        raise StageError(f"{run_dir} already holds a run; pass --resume to continue it, or change name/seed")
    if resume:
        check_resume(run_dir, cfg)
    return ckpt.latest_checkpoint(run_dir) if resume else None


def train_lm(cfg: StageConfig, mode: str, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) `pretrain` or `sft`; returns the summary also written to summary.json."""
    assert mode in ("pretrain", "sft")
    last = prepare_run(cfg, resume)
    run_dir = cfg.run_dir
    train_items, eval_items, tok_text = stage_texts(cfg, mode)
    init = initial_model(cfg, run_dir, tok_text)  # a model that cannot be loaded stops here, before config.yaml
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.seed)

    model_path = str(last / "policy") if last else init
    tokenizer = load_tokenizer(model_path)
    model = load_policy(model_path, "float32").to(learner_device())
    model.train()
    train_rows = encode(cfg, mode, train_items, tokenizer, init)
    eval_rows = encode(cfg, mode, eval_items, tokenizer, init) if eval_items else None

    o = cfg.optim
    trainer = stage_trainer(cfg, model, o.steps)
    model, lean = trainer.module, cfg.learner.lean_logprobs
    evaluate = lambda: eval_loss(model, eval_rows, o.micro_batch_size, trainer, lean)  # noqa: E731
    step, history = restore(last, trainer, {"first_eval_loss": None, "last_eval_loss": None, "wall_s": 0.0})
    log = RunLogger(run_dir, resume_step=step)
    t_run = time.perf_counter() - history["wall_s"]
    if step == 0:
        log.text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)
        first = {"model/params": num_params(model), "data/train_rows": len(train_rows), "data/truncated": train_rows.truncated}
        first["data/fill"] = float((train_rows.labels != IGNORE).float().mean())  # share of row positions that are targets
        if eval_rows is not None:
            history["first_eval_loss"] = history["last_eval_loss"] = evaluate()
            first["loss/eval"] = history["first_eval_loss"]
        log.scalars(0, first)
        if train_rows.truncated:
            print(f"[{cfg.name}] {train_rows.truncated} {'documents' if mode == 'pretrain' else 'examples'} longer than "
                  f"data.seq_len={cfg.data.seq_len} were truncated", file=sys.stderr)

    from tqdm.auto import tqdm

    bar = tqdm(range(step, o.steps), desc=f"{mode} {cfg.name}", unit="step", initial=step, total=o.steps, disable=not progress)
    try:
        for step in bar:
            t = time.perf_counter()
            idx = batch_indices(len(train_rows), o.batch_size, step, cfg.seed)
            n_targets = int((train_rows.labels[idx][:, 1:] != IGNORE).sum())
            trainer.zero_grad()
            total = 0.0
            for s in range(0, len(idx), o.micro_batch_size):
                loss, _ = trainer.call(lm_loss, train_rows.select(idx[s : s + o.micro_batch_size]), lean)
                trainer.backward(loss / max(n_targets, 1), last=s + o.micro_batch_size >= len(idx))
                total += loss.item()
            gn = trainer.step()
            done = step + 1
            m = {"loss/train": total / max(n_targets, 1), "optim/grad_norm": gn, "optim/lr": trainer.last_lr()}
            m["time/step_s"] = time.perf_counter() - t
            m["data/tokens_per_s"] = n_targets / m["time/step_s"]
            if eval_rows is not None and (done % cfg.train.eval_every == 0 or done == o.steps):
                history["last_eval_loss"] = m["loss/eval"] = evaluate()
            history["wall_s"] = time.perf_counter() - t_run
            if done % cfg.train.log_every == 0 or done == o.steps or "loss/eval" in m:
                log.scalars(done, m)
            bar.set_postfix(loss=f"{m['loss/train']:.3f}", eval=f"{history['last_eval_loss'] or float('nan'):.3f}")
            if done % cfg.train.checkpoint_every == 0 or done == o.steps:
                save(run_dir, done, model, tokenizer, trainer, history, cfg.train.keep_checkpoints)
    finally:
        log.close()
    return finish(cfg, run_dir, model, tokenizer, {"stage": mode, **history}, trainer.gathered_state())


def finish(cfg: StageConfig, run_dir: Path, model, tokenizer, summary: dict, weights: dict | None = None) -> dict:
    """Write `<run_dir>/final/` (HF format, atomically; `weights`: the full state dict where the
    module holds shards) and summary.json."""
    final, tmp = run_dir / "final", run_dir / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    summary = {"experiment": cfg.name, "seed": cfg.seed, "steps": cfg.optim.steps, "model": str(final), **summary}
    summary["wall_s"] = round(summary.get("wall_s", 0.0), 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
