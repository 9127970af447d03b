"""The tiny GRPO task in Hugging Face TRL's `GRPOTrainer`, for a side-by-side time per step.

    .venv/bin/pip install --target /tmp/trl trl==1.16.0 accelerate   # not a project dependency
    PYTHONPATH=/tmp/trl .venv/bin/python scripts/compare_trl.py [--steps 100] [--seed 0]

Same initial model and tokenizer (built exactly as `rlvr train` builds them for
`experiments/tiny/baselines/grpo.yaml`), same prompts (the chat-rendered token ids rlvr samples
from), same batch (32 prompts x 4 samples per generation, 2 minibatches, 2 epochs: one rlvr step
is one TRL generation and its 4 optimizer steps), AdamW at lr 1e-3 with 5 warm-up steps and
linear decay, group-normalised advantages, sequence-mean loss, k3 KL at beta 0.001, clip 0.2,
max 8 new tokens at temperature 1; rewards from rlvr's verifier. Generation is transformers
`generate` (TRL's vLLM modes need a GPU). Prints seconds per rlvr-equivalent step (wall time of
the loop between evaluations, over the steps) and the loop time to held-out greedy pass >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100, help="rlvr-equivalent steps (generations)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=10)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.chat import prompt_ids
    from rlvr.config import load_config
    from rlvr.models import initial_model, load_tokenizer
    from rlvr.trainer import prepare_data
    from rlvr.verifiers.scoring import score_one

    out = tempfile.mkdtemp(prefix="compare_trl_")
    cfg = load_config("experiments/tiny/baselines/grpo.yaml", ["--output_dir", out, "--seed", str(args.seed)])
    train_rows, heldout_rows, text = prepare_data(cfg)
    cfg.run_dir.mkdir(parents=True)
    init = initial_model(cfg, cfg.run_dir, text)
    tok = load_tokenizer(init)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)

    def rendered(row):  # the text whose tokens are exactly rlvr's prompt ids
        ids = prompt_ids(tok, row)
        txt = tok.decode(ids)
        assert tok(txt, add_special_tokens=False)["input_ids"] == ids, (txt, ids)
        return txt

    data = Dataset.from_list(
        [{"prompt": rendered(r), "ground_truth": r["ground_truth"], "verifier": r["verifier"]} for r in train_rows]
    )

    def reward(prompts, completions, ground_truth, verifier, **_):
        return [score_one(c, gt, v).score for c, gt, v in zip(completions, ground_truth, verifier)]

    p, r = cfg.ppo, cfg.rollout
    n_prompts, n = r.prompts_per_step, r.samples_per_prompt
    opt_steps_per_gen = p.num_minibatches * p.epochs
    conf = GRPOConfig(
        output_dir=out,
        seed=args.seed,
        max_steps=args.steps * opt_steps_per_gen,
        per_device_train_batch_size=n_prompts * n // p.num_minibatches,
        steps_per_generation=p.num_minibatches,
        num_iterations=p.epochs,
        num_generations=n,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=p.lr,
        warmup_steps=p.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=p.max_grad_norm,
        beta=p.kl_coef,
        epsilon=p.clip_low,
        loss_type="grpo",
        scale_rewards="group",
        use_vllm=False,
        logging_steps=10**9,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_dropout=True,
        dataloader_num_workers=0,
    )
    heldout_text = [rendered(row) for row in heldout_rows]

    class Clock(TrainerCallback):
        """Loop time without the evaluations; held-out greedy pass every `--eval-every` generations."""

        def __init__(self):
            self.loop, self.t0, self.reach, self.last = 0.0, None, None, None

        def on_step_begin(self, a, state, control, **kw):
            if self.t0 is None:
                self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % (args.eval_every * opt_steps_per_gen):
                return
            self.loop += time.perf_counter() - self.t0
            self.last = greedy_pass(model)
            gen = state.global_step // opt_steps_per_gen
            print(f"step {gen}: held-out greedy {self.last:.3f}, loop {self.loop:.1f} s", flush=True)
            if self.reach is None and self.last >= 0.8:
                self.reach = self.loop
            self.t0 = time.perf_counter()

    @torch.no_grad()
    def greedy_pass(m) -> float:
        enc = tok(heldout_text, return_tensors="pt", padding=True, add_special_tokens=False)
        outs = m.generate(**enc, max_new_tokens=r.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        comps = tok.batch_decode(outs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return sum(score_one(c, row["ground_truth"], row["verifier"]).score >= 1.0 for c, row in zip(comps, heldout_rows)) / len(comps)

    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=conf, train_dataset=data, processing_class=tok, callbacks=[clock])
    trainer.train()
    print(
        f"TRL {__import__('trl').__version__} GRPOTrainer, seed {args.seed}: {clock.loop / args.steps:.3f} s per step "
        f"({args.steps} generations of {n_prompts} x {n}), held-out greedy {clock.last:.3f} at the end, "
        f"reached 0.8 after {clock.reach if clock.reach is None else round(clock.reach, 1)} s of loop"
    )


if __name__ == "__main__":
    main()
