"""What only a GPU shows, in one run of a few minutes; at small shapes it runs on the CPU too.

    python scripts/gpu_check.py [--out gpu_check.json] [--small]

Needs torch and transformers; the project and DeepSpeed may be installed from wheels (no network).
Sections, each timed and never fatal to the others (an error is recorded in its place):

1. env: torch, transformers, deepspeed versions; the device.
2. tiny_task: `rlvr train` on experiments/tiny/kinds.yaml with the transformers engine (learner and
   engine on the GPU), 20 steps: held-out greedy pass rate before and after.
3. learner: rlvr/benchmark.py at Qwen2.5-0.5B's shape (random weights, 64 rollouts of 128 +
   224..896 tokens; `--small` or no GPU: the "test" shape), one process per configuration: the
   old path (full logits, fixed micro-batches) and the new one on the torch backend, with layer
   checkpointing, and on DeepSpeed ZeRO 0-3; seconds, MFU on real tokens, peak GPU memory.
4. stages: SFT and DPO steps (a tiny model, the synthetic world task, file pairs) on the device.

The last line printed is the whole result as JSON (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LEARNER_RUNS = [
    dict(path="old", backend="torch", zero_stage=0),
    dict(path="new", backend="torch", zero_stage=0),
    dict(path="new", backend="torch", zero_stage=0, gradient_checkpointing=True),
    dict(path="new", backend="deepspeed", zero_stage=0),
    dict(path="new", backend="deepspeed", zero_stage=1),
    dict(path="new", backend="deepspeed", zero_stage=2),
    dict(path="new", backend="deepspeed", zero_stage=3),
]


def section(results: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:  # a failed section is a result too
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    if isinstance(results[name], dict):
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu_check] {name}: {json.dumps(results[name])[:400]}", file=sys.stderr, flush=True)


def env() -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.cuda.is_available()}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except ImportError as e:
        out["deepspeed"] = f"missing ({e})"
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def tiny_task(out_dir: Path, small: bool) -> dict:
    from rlvr.config import load_config
    from rlvr.trainer import train

    steps = "4" if small else "20"
    cfg = load_config(
        REPO / "experiments/tiny/kinds.yaml",
        ["--rollout.engine", "hf", "--train.steps", steps, "--train.eval_every", steps, "--train.checkpoint_every", steps,
         "--output_dir", str(out_dir), "--name", "gpu_tiny"],
    )
    summary = train(cfg, progress=False)
    return {
        "steps": int(steps),
        "greedy_before": summary["initial"]["eval/heldout/greedy_pass_rate"],
        "greedy_after": summary["final"]["eval/heldout/greedy_pass_rate"],
        "train_wall_s": summary["wall_s"],
    }


def learner(small: bool) -> list:
    import torch

    gpu = torch.cuda.is_available() and not small
    shape, dtype, budget = ("qwen2.5-0.5b", "bfloat16", 16384) if gpu else ("test", "float32", 64)
    out = []
    deadline = time.perf_counter() + 300  # the whole check stays within about 6 minutes
    for run in LEARNER_RUNS:
        # DeepSpeed's bf16 mode needs a ZeRO optimizer (its fp32 master weights live there): ZeRO 0 runs in float32
        run_dtype = "float32" if run["backend"] == "deepspeed" and run["zero_stage"] == 0 else dtype
        spec = dict(shape_name=shape, dtype=run_dtype, budget_tokens=budget, micro_batch_size=8, **run)
        if time.perf_counter() > deadline:
            out.append({**spec, "error": "skipped: the learner section's 300 s were spent"})
            continue
        if not gpu:  # small shapes: in this process (peak memory is not what is checked there)
            from rlvr.benchmark import measure

            out.append(measure(**spec))
            continue
        cmd = [sys.executable, __file__, "--one", json.dumps(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": _pythonpath()})
            if proc.returncode == 0:
                out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                out.append({**spec, "error": proc.stderr[-1500:]})
        except subprocess.TimeoutExpired:
            out.append({**spec, "error": "timed out after 120 s"})
        print(f"[gpu_check] learner {json.dumps(out[-1])[:300]}", file=sys.stderr, flush=True)
    return out


def stages(out_dir: Path) -> dict:
    from rlvr.config import StageConfig, load_config
    from rlvr.models import learner_device
    from rlvr.stages.dpo import train_dpo
    from rlvr.stages.lm import stage_texts, train_lm

    tiny = ["--model.tiny.hidden_size", "128", "--model.tiny.num_heads", "4", "--model.tiny.num_layers", "2", "--output_dir", str(out_dir)]
    sft = load_config(None, [*tiny, "--name", "gpu_sft", "--data.task", "world", "--data.num_train", "256", "--data.num_eval", "32",
                             "--optim.steps", "5", "--optim.batch_size", "16", "--optim.micro_batch_size", "8", "--train.eval_every", "5"], StageConfig)
    s = train_lm(sft, "sft", progress=False)
    # preference pairs from the task's own chats: each answer preferred to the next chat's
    chats = stage_texts(sft, "sft")[0][:33]
    pairs = out_dir / "pairs.jsonl"
    pairs.write_text("".join(
        json.dumps({"messages": a[:-1], "chosen": a[-1]["content"], "rejected": b[-1]["content"]}) + "\n" for a, b in zip(chats, chats[1:])
    ))
    dpo = load_config(None, [*tiny[-2:], "--name", "gpu_dpo", "--model.name_or_path", s["model"], "--data.train", str(pairs),
                             "--dpo.pairs_from", "file", "--optim.steps", "3", "--optim.batch_size", "8", "--optim.micro_batch_size", "4"], StageConfig)
    d = train_dpo(dpo, progress=False)
    return {"device": str(learner_device()), "sft_eval_loss": [s["first_eval_loss"], s["last_eval_loss"]], "dpo_last": d["last"]}


def _pythonpath() -> str:
    return os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--small", action="store_true", help="small shapes (the CPU check)")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one learner measurement in this process
    args = ap.parse_args()
    if args.one:
        from rlvr.benchmark import measure

        print(json.dumps(measure(**json.loads(args.one), repeats=2)))
        return
    skip = set(args.skip.split(",")) - {""}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, fn in (
            ("env", env),
            ("tiny_task", lambda: tiny_task(tmp / "runs", args.small)),
            ("learner", lambda: learner(args.small)),
            ("stages", lambda: stages(tmp / "stages")),
        ):
            if name not in skip:
                section(results, name, fn)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
