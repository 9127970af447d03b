"""DPO (Rafailov et al. 2023) on preference pairs, from a file or sampled on-policy and verified.

On-policy pairs: the starting (SFT) policy samples `dpo.samples_per_prompt` completions per
prompt with vLLM, the verifiers score them, and each prompt with both a passing and a failing
completion gives one pair (the first passing, the first failing). The pairs are written to
`<run_dir>/pairs.jsonl`, and the reference (the starting policy) logprobs are computed once and
cached in `<run_dir>/ref_logprobs.pt`, so a resumed run trains on exactly the same data.

File pairs: JSONL rows with `prompt` (str) or `messages` (chat list without the answer), and
`chosen` / `rejected` (str, or chat lists whose last message is the assistant's answer).
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from rlvr import checkpoint as ckpt
from rlvr.config import StageConfig, to_yaml
from rlvr.learner import make_batch, response_logits
from rlvr.models import load_policy, load_tokenizer, num_params
from rlvr.ppo import token_logprobs
from rlvr.rollouts import Rollout, Sampling, derive_seed, make_engine
from rlvr.runlog import RunLogger
from rlvr.stages.lm import StageError, finish, make_optimizer, prepare_run, render_chat, restore, stage_rows


def dpo_loss(
    policy_chosen_P: torch.Tensor,
    policy_rejected_P: torch.Tensor,
    ref_chosen_P: torch.Tensor,
    ref_rejected_P: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over P pairs (DPO eq. 7).

    The inputs are sequence logprobs: sums over the response tokens for `sigmoid`, per-token
    means for `norm` (Tulu 3's length-normalised DPO); the caller chooses which it passes.
    """
    chosen_reward = beta * (policy_chosen_P - ref_chosen_P)
    rejected_reward = beta * (policy_rejected_P - ref_rejected_P)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    stats = {
        "rewards/chosen": chosen_reward.detach().mean(),
        "rewards/rejected": rejected_reward.detach().mean(),
        "rewards/accuracy": (chosen_reward > rejected_reward).float().mean().detach(),
        "rewards/margin": (chosen_reward - rejected_reward).detach().mean(),
    }
    return losses.mean(), stats


def sequence_logps(logp_PT: torch.Tensor, mask_PT: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Sum over response tokens of log pi, or its per-token mean (`normalize`): [P]."""
    total = (logp_PT * mask_PT).sum(1)
    return total / mask_PT.sum(1).clamp(min=1) if normalize else total


def sequence_logprobs(model, rollouts: list[Rollout], pad_id: int, normalize: bool) -> torch.Tensor:
    batch = make_batch(rollouts, pad_id).to(next(model.parameters()).device)
    return sequence_logps(token_logprobs(response_logits(model, batch), batch.response_ids), batch.mask, normalize)


# ------------------------------------------------------------------------------------ pairs


def _prompt_ids(tokenizer, row: dict) -> list[int]:
    if "messages" in row:
        return render_chat(tokenizer, row["messages"], add_generation_prompt=True)
    return tokenizer(row["prompt"])["input_ids"]


def _answer_ids(tokenizer, answer) -> list[int]:
    text = answer[-1]["content"] if isinstance(answer, list) else answer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def pairs_from_file(source: str, tokenizer) -> list[dict]:
    rows = stage_rows(source)
    pairs = []
    for i, row in enumerate(rows):
        if not (isinstance(row.get("prompt"), str) or isinstance(row.get("messages"), list)):
            raise StageError(f"{source} row {i}: needs 'prompt' (str) or 'messages' (list)")
        for key in ("chosen", "rejected"):
            if not isinstance(row.get(key), (str, list)) or not row[key]:
                raise StageError(f"{source} row {i}: needs '{key}' (a string or a chat list)")
        prompt = row.get("messages") or row["prompt"]
        prompt_row = {"messages": prompt} if isinstance(prompt, list) else {"prompt": prompt}
        pairs.append({
            "prompt_ids": _prompt_ids(tokenizer, prompt_row),
            "chosen_ids": _answer_ids(tokenizer, row["chosen"]),
            "rejected_ids": _answer_ids(tokenizer, row["rejected"]),
        })
    return pairs


def pairs_on_policy(cfg: StageConfig, model_path: str, tokenizer) -> tuple[list[dict], dict[str, float]]:
    """Sample, verify, pair a passing with a failing completion per prompt."""
    from rlvr.data import encode_prompts, load_rows, normalize_rows
    from rlvr.tasks import make_task
    from rlvr.verifiers import VerifierPool

    d, o = cfg.data, cfg.dpo
    if d.task:
        rows, _ = make_task(d.task, o.num_prompts, 0, seed=cfg.seed)
        rows = [{**r, "messages": [m for m in r["messages"] if m["role"] != "assistant"]} for r in rows]
    else:
        rows = normalize_rows(load_rows(d.train), d.train)[: o.num_prompts]
    prompt_ids = encode_prompts(rows, tokenizer, 10 * d.seq_len, "dpo prompts")
    engine = make_engine("vllm", model_path, max_model_len=max(map(len, prompt_ids)) + o.max_new_tokens, seed=cfg.seed)
    try:
        sampling = Sampling(o.max_new_tokens, o.temperature, seed=derive_seed(cfg.seed, 7))
        rollouts = engine.generate(prompt_ids, sampling, o.samples_per_prompt)
    finally:
        engine.close()
    n = o.samples_per_prompt
    with VerifierPool(cfg.verify.workers, cfg.verify.timeout_s, max_memory_mb=cfg.verify.max_memory_mb) as pool:
        scores = pool.score([r.text for r in rollouts], [row for row in rows for _ in range(n)]).scores
    pairs = []
    for i, ids in enumerate(prompt_ids):
        group = list(zip(rollouts[i * n : (i + 1) * n], scores[i * n : (i + 1) * n]))
        good = next((r for r, s in group if s >= 1.0), None)
        bad = next((r for r, s in group if s < 1.0), None)
        if good is not None and bad is not None:
            pairs.append({"prompt_ids": ids, "chosen_ids": good.completion_ids, "rejected_ids": bad.completion_ids})
    stats = {"pairs/prompts": len(prompt_ids), "pairs/made": len(pairs), "pairs/sample_pass_rate": sum(s >= 1.0 for s in scores) / len(scores)}
    return pairs, stats


# ------------------------------------------------------------------------------------ loop


def train_dpo(cfg: StageConfig, resume: bool = False, progress: bool = True) -> dict:
    if not cfg.model.name_or_path:
        raise StageError("dpo needs model.name_or_path: the SFT model to start from (and the reference)")
    last = prepare_run(cfg, resume)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.seed)
    start_path = cfg.model.name_or_path
    tokenizer = load_tokenizer(start_path)
    normalize = cfg.dpo.loss == "norm"

    pairs_path, ref_path = run_dir / "pairs.jsonl", run_dir / "ref_logprobs.pt"
    pair_stats: dict[str, float] = {}
    if pairs_path.exists():
        pairs = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    else:
        if cfg.dpo.pairs_from == "file":
            if not cfg.data.train:
                raise StageError("dpo.pairs_from=file needs data.train: a JSONL of prompt/chosen/rejected rows")
            pairs = pairs_from_file(cfg.data.train, tokenizer)
        else:
            pairs, pair_stats = pairs_on_policy(cfg, start_path, tokenizer)
        tmp = pairs_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        tmp.rename(pairs_path)
    if not pairs:
        raise StageError("no preference pairs: every prompt's samples all passed or all failed")

    def rollouts(key: str, idx) -> list[Rollout]:
        return [Rollout(pairs[i]["prompt_ids"], pairs[i][key], "", [], "") for i in idx]

    micro = cfg.optim.micro_batch_size
    if ref_path.exists():
        ref = torch.load(ref_path)
    else:
        ref_model = load_policy(start_path, cfg.model.dtype).eval()
        with torch.no_grad():
            ref = {
                key: torch.cat([
                    sequence_logprobs(ref_model, rollouts(key, range(s, min(s + micro, len(pairs)))), tokenizer.pad_token_id, normalize)
                    for s in range(0, len(pairs), micro)
                ]).cpu()
                for key in ("chosen_ids", "rejected_ids")
            }
        torch.save(ref, ref_path.with_suffix(".tmp"))
        ref_path.with_suffix(".tmp").rename(ref_path)
        del ref_model

    model = load_policy(str(last / "policy") if last else start_path, cfg.model.dtype).train()
    o = cfg.optim
    steps = o.steps if o.steps > 0 else cfg.dpo.epochs * -(-len(pairs) // o.batch_size)
    opt, sched = make_optimizer(model, o, steps)
    step, history = restore(last, opt, sched, {"pairs": len(pairs), **pair_stats, "wall_s": 0.0, "last": {}})
    log = RunLogger(run_dir, resume_step=step)
    if step == 0:
        log.text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)
        log.scalars(0, {"model/params": num_params(model), "pairs/count": len(pairs), **pair_stats})
    t_run = time.perf_counter() - history["wall_s"]

    from tqdm.auto import tqdm

    from rlvr.stages.lm import batch_indices

    bar = tqdm(range(step, steps), desc=f"dpo {cfg.name}", unit="step", initial=step, total=steps, disable=not progress)
    try:
        for step in bar:
            t = time.perf_counter()
            idx = batch_indices(len(pairs), min(o.batch_size, len(pairs)), step, cfg.seed)
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for s in range(0, len(idx), micro):
                mb = idx[s : s + micro]
                pc = sequence_logprobs(model, rollouts("chosen_ids", mb), tokenizer.pad_token_id, normalize)
                pr = sequence_logprobs(model, rollouts("rejected_ids", mb), tokenizer.pad_token_id, normalize)
                loss, stats = dpo_loss(pc, pr, ref["chosen_ids"][mb], ref["rejected_ids"][mb], cfg.dpo.beta)
                share = len(mb) / len(idx)
                (loss * share).backward()
                for k, v in {"loss/dpo": loss, **stats}.items():
                    sums[k] = sums.get(k, 0.0) + v.item() * share
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
            opt.step()
            sched.step()
            done = step + 1
            m = {**sums, "optim/grad_norm": gn.item(), "optim/lr": sched.get_last_lr()[0], "time/step_s": time.perf_counter() - t}
            history["last"] = sums
            history["wall_s"] = time.perf_counter() - t_run
            if done % cfg.train.log_every == 0 or done == steps:
                log.scalars(done, m)
            bar.set_postfix(loss=f"{sums['loss/dpo']:.3f}", acc=f"{sums['rewards/accuracy']:.2f}")
            if done % cfg.train.checkpoint_every == 0 or done == steps:
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history}
                ckpt.save_checkpoint(run_dir, done, model, None, tokenizer, state, keep=cfg.train.keep_checkpoints)
    finally:
        log.close()
    return finish(cfg, run_dir, model, tokenizer, {"stage": "dpo", **history})
