"""DPO (Rafailov et al. 2023) on preference pairs, from a file or sampled on-policy and verified.

On-policy pairs: the starting (SFT) policy samples `dpo.samples_per_prompt` completions per
prompt with vLLM, the verifiers score them, and each prompt with both a passing and a failing
completion gives one pair (`dpo.choose`: the likeliest of each under the sampler, or the first). The pairs are written to
`<run_dir>/pairs.jsonl`, and the reference (the starting policy) logprobs are computed once and
cached in `<run_dir>/ref_logprobs.pt`, so a resumed run trains on exactly the same data.

On-policy pairs take `chosen` only from a sample the verifier scored `ok` with a passing score and
`rejected` only from one it scored `wrong`: a sample whose check timed out, errored or could not
be parsed says nothing about the answer and is never a "rejected" answer. The counts of each
status are logged (`pairs/status_<status>`).

File pairs, in the forms preference data comes in: `prompt` a string or a message list (or
`messages`, the chat before the answer), and `chosen` / `rejected` each a string (the answer),
a message list ending with the assistant's answer (the whole conversation, as in
UltraFeedback, or just the answer), or with no `prompt` two conversations that differ only in
their last message. The prompt is rendered with the model's chat template, the conversation
is kept whole, and each answer ends with the template's own end of turn.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import torch
import torch.nn.functional as F

from rlvr.backends import ModelTrainer
from rlvr.chat import ChatFormatError, answer_example, check_messages, stop_token_ids
from rlvr.config import StageConfig, to_yaml
from rlvr.learner import make_batch, response_logits
from rlvr.logprobs import check_lean_model, lean_logprobs
from rlvr.models import DTYPES, check_model, learner_device, load_policy, load_tokenizer, num_params
from rlvr.ppo import token_logprobs
from rlvr.rollouts import Rollout, Sampling, derive_seed, make_engine
from rlvr.runlog import RunLogger
from rlvr.stages.lm import StageError, finish, prepare_run, restore, save, stage_rows, stage_trainer
from rlvr.verifiers import STATUSES, VerifierResult


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


def chosen_nll(policy_chosen_P: torch.Tensor, chosen_tokens_P: torch.Tensor, normalized: bool) -> torch.Tensor:
    """The chosen answers' negative log-likelihood per token, averaged over P pairs: the NLL term of RPO
    (Pang et al. 2024, eq. 1: L = L_DPO + alpha * NLL(chosen) / |chosen|). On on-policy pairs that differ in
    a token or two, DPO alone pushes the shared tokens of both answers down with the rejected one; the
    term keeps the chosen answer likely. `policy_chosen_P` is summed (or, `normalized`, per-token) logprob."""
    per_token = policy_chosen_P if normalized else policy_chosen_P / chosen_tokens_P.clamp(min=1)
    return -per_token.mean()


def sequence_logps(logp_PT: torch.Tensor, mask_PT: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Sum over response tokens of log pi, or its per-token mean (`normalize`): [P]."""
    total = (logp_PT * mask_PT).sum(1)
    return total / mask_PT.sum(1).clamp(min=1) if normalize else total


def sequence_logprobs(model, rollouts: list[Rollout], pad_id: int, normalize: bool, lean: bool = False) -> torch.Tensor:
    """Each answer's summed (or, `normalize`, mean) token logprob; `lean`: the LM head only at answer
    positions, in chunks (rlvr.logprobs)."""
    batch = make_batch(rollouts, pad_id).to(next(model.parameters()).device)
    if lean:
        logp = lean_logprobs(model, batch, 1.0, 1024, False)[0]
    else:
        logp = token_logprobs(response_logits(model, batch), batch.response_ids)
    return sequence_logps(logp, batch.mask, normalize)


def pair_logprobs(model, chosen: list[Rollout], rejected: list[Rollout], pad_id: int, normalize: bool, lean: bool = False):
    """`sequence_logprobs` of the chosen and of the rejected answers, in one forward pass of `model`."""
    both = sequence_logprobs(model, chosen + rejected, pad_id, normalize, lean)
    return both[: len(chosen)], both[len(chosen) :]


# ------------------------------------------------------------------------------------ pairs


def _messages(value, where: str, key: str) -> list[dict]:
    try:
        return check_messages(value, f"{where}: '{key}'")
    except ChatFormatError as e:
        raise StageError(str(e)) from None


def pair_conversations(row: dict, where: str) -> tuple[list[dict], list[dict]]:
    """The chosen and rejected conversations of a preference row, each ending with the assistant's answer."""
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), (str, list)) or not row[key]:
            raise StageError(f"{where}: needs '{key}' (a string or a list of messages)")
    prompt = row.get("messages", row.get("prompt"))
    if prompt is None:
        if not (isinstance(row["chosen"], list) and isinstance(row["rejected"], list)):
            raise StageError(f"{where}: needs 'prompt' (a string or a list of messages) or 'messages'")
        prompt = _messages(row["chosen"], where, "chosen")[:-1]
        if not prompt:
            raise StageError(f"{where}: without 'prompt', 'chosen' must hold the conversation before the answer")
    elif isinstance(prompt, str):
        if not prompt:
            raise StageError(f"{where}: 'prompt' is empty")
        prompt = [{"role": "user", "content": prompt}]
    else:
        prompt = _messages(prompt, where, "prompt")
    out = []
    for key in ("chosen", "rejected"):
        answer = row[key]
        if isinstance(answer, str):
            conv = prompt + [{"role": "assistant", "content": answer}]
        else:
            msgs = _messages(answer, where, key)
            if msgs[-1]["role"] != "assistant":
                raise StageError(f"{where}: '{key}' must end with the assistant's answer")
            if len(msgs) == 1:
                conv = prompt + msgs
            elif msgs[:-1] == prompt:
                conv = msgs
            else:
                raise StageError(f"{where}: '{key}' continues a different conversation than the prompt")
        out.append(conv)
    return out[0], out[1]


def encode_pair(tokenizer, chosen: list[dict], rejected: list[dict], stop: list[int], where: str) -> dict:
    """Token ids of a pair: the shared prompt (chat template, generation prompt) and each answer,
    ending with its end-of-turn token. Without a chat template: plain text and an EOS."""
    if not getattr(tokenizer, "chat_template", None):
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        text = "\n".join(m["content"] for m in chosen[:-1])
        answer = lambda conv: tokenizer(conv[-1]["content"], add_special_tokens=False)["input_ids"] + eos  # noqa: E731
        return {"prompt_ids": tokenizer(text)["input_ids"], "chosen_ids": answer(chosen), "rejected_ids": answer(rejected)}
    try:
        prompt, chosen_ids = answer_example(tokenizer, chosen, stop)
        prompt_r, rejected_ids = answer_example(tokenizer, rejected, stop)
    except ChatFormatError as e:
        raise StageError(f"{where}: {e}") from None
    if prompt != prompt_r:
        raise StageError(f"{where}: 'chosen' and 'rejected' answer different prompts")
    if not chosen_ids or not rejected_ids:
        raise StageError(f"{where}: an answer encodes to no tokens")
    return {"prompt_ids": prompt, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


def pairs_from_file(source: str, tokenizer, stop: list[int]) -> list[dict]:
    pairs = []
    for i, row in enumerate(stage_rows(source)):
        where = f"{source} row {i}"
        chosen, rejected = pair_conversations(row, where)
        pairs.append(encode_pair(tokenizer, chosen, rejected, stop, where))
    return pairs


def choose_pair(
    group: list[tuple[Rollout, VerifierResult]], threshold: float, choose: str = "likeliest", must_end: bool = True
) -> tuple[Rollout, Rollout] | None:
    """(chosen, rejected) of one prompt's samples, or None unless both exist. `chosen`: scored `ok` with a
    passing score and, with `must_end`, ended on a stop token (an answer cut off at max_new_tokens is not
    preferred: DPO would teach the policy not to end its turn);
    `rejected`: scored `wrong`. Of several candidates, `likeliest` takes the one with the highest summed
    sampler logprob, `first` the first sampled.

    Why the likeliest: from a policy that is still flat at temperature 1, a sample that passes is often
    a lucky guess (the wrong person, thing and sum, the right final number), and a pair of two such
    samples teaches noise. The likeliest passing sample is the one nearest the policy's own mode, and
    the likeliest wrong one is the mistake greedy decoding is most apt to make: the pair targets it."""
    good = [r for r, v in group if v.status == "ok" and v.score >= threshold and (r.finish_reason == "stop" or not must_end)]
    bad = [r for r, v in group if v.status == "wrong"]
    if not good or not bad:
        return None
    if choose == "first":
        return good[0], bad[0]
    likeliest = lambda rs: max(rs, key=lambda r: sum(r.sampler_logprobs))  # noqa: E731  (the first of equals)
    return likeliest(good), likeliest(bad)


def pairs_on_policy(cfg: StageConfig, model_path: str, tokenizer) -> tuple[list[dict], dict[str, float]]:
    """Sample, verify, pair a passing with a wrong completion per prompt."""
    from rlvr.data import encode_prompts, load_rows, normalize_rows
    from rlvr.tasks import make_task
    from rlvr.verifiers import VerifierPool, load_verifier_file

    d, o = cfg.data, cfg.dpo
    for path in cfg.verifier_files:
        load_verifier_file(path)
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
    v = cfg.verify
    with VerifierPool(v.workers, v.timeout_s, cfg.verifier_files, v.max_memory_mb) as pool:
        results = pool.score([r.text for r in rollouts], [row for row in rows for _ in range(n)]).results
    pairs = []
    for i, ids in enumerate(prompt_ids):
        pair = choose_pair(list(zip(rollouts[i * n : (i + 1) * n], results[i * n : (i + 1) * n])), o.pass_threshold, o.choose, o.chosen_must_end)
        if pair is not None:
            pairs.append({"prompt_ids": ids, "chosen_ids": pair[0].completion_ids, "rejected_ids": pair[1].completion_ids})
    statuses = Counter(r.status for r in results)
    stats = {
        "pairs/prompts": len(prompt_ids),
        "pairs/made": len(pairs),
        "pairs/sample_pass_rate": sum(r.status == "ok" and r.score >= o.pass_threshold for r in results) / len(results),
        **{f"pairs/status_{s}": statuses.get(s, 0) for s in STATUSES},
    }
    return pairs, stats


# ------------------------------------------------------------------------------------ loop


def train_dpo(cfg: StageConfig, resume: bool = False, progress: bool = True) -> dict:
    if not cfg.model.name_or_path:
        raise StageError("dpo needs model.name_or_path: the SFT model to start from (and the reference)")
    last = prepare_run(cfg, resume)
    check_model(cfg.model.name_or_path)  # a model that cannot be loaded stops here, before anything is written
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.seed)
    start_path = cfg.model.name_or_path
    tokenizer = load_tokenizer(start_path)
    normalize, lean = cfg.dpo.loss == "norm", cfg.learner.lean_logprobs

    pairs_path, ref_path = run_dir / "pairs.jsonl", run_dir / "ref_logprobs.pt"
    pair_stats: dict[str, float] = {}
    if pairs_path.exists():
        pairs = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    else:
        if cfg.dpo.pairs_from == "file":
            if not cfg.data.train:
                raise StageError("dpo.pairs_from=file needs data.train: a JSONL of prompt/chosen/rejected rows")
            pairs = pairs_from_file(cfg.data.train, tokenizer, stop_token_ids(start_path, tokenizer))
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
        ref_model = load_policy(start_path, "float32").to(learner_device()).eval()
        if lean:
            check_lean_model(ref_model)
        autocast = ModelTrainer.autocast_for(ref_model, DTYPES[cfg.model.dtype])
        with torch.no_grad(), autocast:
            ref = {
                key: torch.cat([
                    sequence_logprobs(ref_model, rollouts(key, range(s, min(s + micro, len(pairs)))), tokenizer.pad_token_id, normalize, lean)
                    for s in range(0, len(pairs), micro)
                ]).cpu()
                for key in ("chosen_ids", "rejected_ids")
            }
        torch.save(ref, ref_path.with_suffix(".tmp"))
        ref_path.with_suffix(".tmp").rename(ref_path)
        del ref_model

    model = load_policy(str(last / "policy") if last else start_path, "float32").to(learner_device()).train()
    o = cfg.optim
    steps = o.steps if o.steps > 0 else cfg.dpo.epochs * -(-len(pairs) // o.batch_size)
    trainer = stage_trainer(cfg, model, steps)
    model = trainer.module
    step, history = restore(last, trainer, {"pairs": len(pairs), **pair_stats, "wall_s": 0.0, "last": {}})
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
            trainer.zero_grad()
            sums: dict[str, float] = {}
            for s in range(0, len(idx), micro):
                mb = idx[s : s + micro]
                chosen = rollouts("chosen_ids", mb)
                pc, pr = trainer.call(pair_logprobs, chosen, rollouts("rejected_ids", mb), tokenizer.pad_token_id, normalize, lean)
                loss, stats = dpo_loss(pc, pr, ref["chosen_ids"][mb].to(pc.device), ref["rejected_ids"][mb].to(pc.device), cfg.dpo.beta)
                stats["loss/dpo"] = loss.detach()
                if cfg.dpo.nll_coef > 0:
                    tokens = torch.tensor([len(r.completion_ids) for r in chosen], dtype=pc.dtype, device=pc.device)
                    nll = chosen_nll(pc, tokens, normalize)
                    loss = loss + cfg.dpo.nll_coef * nll
                    stats["loss/nll_chosen"] = nll.detach()
                share = len(mb) / len(idx)
                trainer.backward(loss * share, last=s + micro >= len(idx))
                for k, v in {"loss/total": loss, **stats}.items():
                    sums[k] = sums.get(k, 0.0) + v.item() * share
            gn = trainer.step()
            done = step + 1
            m = {**sums, "optim/grad_norm": gn, "optim/lr": trainer.last_lr(), "time/step_s": time.perf_counter() - t}
            history["last"] = sums
            history["wall_s"] = time.perf_counter() - t_run
            if done % cfg.train.log_every == 0 or done == steps:
                log.scalars(done, m)
            bar.set_postfix(loss=f"{sums['loss/dpo']:.3f}", acc=f"{sums['rewards/accuracy']:.2f}")
            if done % cfg.train.checkpoint_every == 0 or done == steps:
                save(run_dir, done, model, tokenizer, trainer, history, cfg.train.keep_checkpoints)
    finally:
        log.close()
    return finish(cfg, run_dir, model, tokenizer, {"stage": "dpo", **history}, trainer.gathered_state())
