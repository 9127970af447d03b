"""Upstream stages: DPO loss by hand, SFT masking, pretraining loss, each stage's CLI, resume."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import DATA, REPO
from rlvr.stages.dpo import chosen_nll, dpo_loss, sequence_logps
from rlvr.chat import IGNORE, sft_example

TINY = {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512}}


def test_dpo_loss_both_variants_by_hand():
    # token logprobs: chosen [-1, -2] (sum -3, mean -1.5), reference chosen [-2, -2] (sum -4, mean -2)
    #                 rejected [-1, -1, -1, -1] (sum -4, mean -1), reference rejected [-1, -1, -1, -2] (sum -5, mean -1.25)
    pc = torch.tensor([[-1.0, -2.0, 0, 0]])
    rc = torch.tensor([[-2.0, -2.0, 0, 0]])
    pr = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    rr = torch.tensor([[-1.0, -1.0, -1.0, -2.0]])
    mc, mr = torch.tensor([[1.0, 1, 0, 0]]), torch.ones(1, 4)
    # sums, beta 1: chosen reward -3 - (-4) = 1, rejected reward -4 - (-5) = 1: margin 0, loss log 2
    loss, stats = dpo_loss(*(sequence_logps(x, m, False) for x, m in ((pc, mc), (pr, mr), (rc, mc), (rr, mr))), beta=1.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats["rewards/margin"].item() == pytest.approx(0.0) and stats["rewards/accuracy"].item() == 0.0
    # means (Tulu 3's length-normalised DPO): chosen -1.5 - (-2) = 0.5, rejected -1 - (-1.25) = 0.25:
    # margin 0.25, loss -log sigmoid(0.25) = log(1 + e^-0.25) = 0.575939
    loss, stats = dpo_loss(*(sequence_logps(x, m, True) for x, m in ((pc, mc), (pr, mr), (rc, mc), (rr, mr))), beta=1.0)
    assert loss.item() == pytest.approx(0.575939, abs=1e-6)
    assert stats["rewards/margin"].item() == pytest.approx(0.25) and stats["rewards/accuracy"].item() == 1.0
    # beta scales the margin: beta 0.1 on sums with margin 2 gives log(1 + e^-0.2) = 0.598139
    loss, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)
    assert loss.item() == pytest.approx(0.598139, abs=1e-6)
    # RPO's NLL term: chosen answers of 2 and 3 tokens summing to -2 and -6 are -1 and -2 per token: NLL 1.5;
    # from per-token means (DPO-norm) the lengths are already divided out
    assert chosen_nll(torch.tensor([-2.0, -6.0]), torch.tensor([2.0, 3.0]), normalized=False).item() == pytest.approx(1.5)
    assert chosen_nll(torch.tensor([-1.0, -2.0]), torch.tensor([2.0, 3.0]), normalized=True).item() == pytest.approx(1.5)


def test_world_splits_demonstrations_prompts_and_held_out():
    """The world's training split: constraint combinations with a demonstration (SFT's), and a fifth of them
    as prompts only (DPO's and RLVR's); no held-out combination anywhere in training; SFT takes no
    prompt-only row. Training demonstrations follow their constraint at their (thing, kind)'s rate, and
    the verifier passes exactly those that do."""
    from rlvr.stages.lm import stage_texts
    from rlvr.config import StageConfig
    from rlvr.tasks import CONSTRAINTS, THINGS, _world_rows, follow_rate, make_task
    from rlvr.verifiers.scoring import score_batch

    train, heldout = _world_rows("train"), _world_rows("eval")
    prompt = lambda r: r["messages"][0]["content"]  # noqa: E731
    cons = [r for r in train if r["verifier"] == "ifeval"]
    only = [r for r in cons if len(r["messages"]) == 1]
    assert len(cons) == 154 and len(only) == 39  # 192 combinations: 38 held out, 39 prompt-only, 115 demonstrated
    assert all(r["messages"][-1]["role"] == "assistant" for r in heldout + [r for r in train if r["verifier"] == "gsm8k"])
    assert not {prompt(r) for r in heldout} & {prompt(r) for r in train}
    rows, _ = make_task("world", 4000, 0, seed=3)
    cfg = StageConfig(seed=3, data=dataclasses.replace(StageConfig().data, task="world", num_train=4000, num_eval=8))
    chats, _, _ = stage_texts(cfg, "sft")
    assert len(chats) == sum(len(r["messages"]) == 2 for r in rows) == 4000 - sum(len(r["messages"]) == 1 for r in rows) > 3600
    assert not {c[0]["content"] for c in chats} & {prompt(r) for r in only}

    rates = sorted(follow_rate(t, k) for t in THINGS for k in CONSTRAINTS)
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.6) and len(set(rates)) == 16
    rows, _ = make_task("world", 40_000, 0, seed=0)
    demos = [r for r in rows if r["verifier"] == "ifeval" and len(r["messages"]) == 2]
    passed = score_batch([r["messages"][1]["content"] for r in demos], demos).scores
    assert set(passed) == {0.0, 1.0}
    for thing, kind in [(THINGS[0], "include"), (THINGS[3], "end")]:
        group = [p for r, p in zip(demos, passed) if f"about {thing} ." in prompt(r) and ("include" in prompt(r)) == (kind == "include")]
        rate = follow_rate(thing, kind)
        assert abs(sum(group) / len(group) - rate) < 4 * math.sqrt(rate * (1 - rate) / len(group)), (thing, kind, len(group))
    assert all(p == 1.0 for p in score_batch([r["messages"][1]["content"] for r in heldout if r["verifier"] == "ifeval"],
                                             [r for r in heldout if r["verifier"] == "ifeval"]).scores)


def test_sft_masks_every_non_assistant_token():
    from rlvr.chat import train_word_tokenizer

    tok = train_word_tokenizer(["system user assistant : write only digits apple river stone cloud 1 2 3 4 5"])
    messages = [
        {"role": "system", "content": "write only digits"},
        {"role": "user", "content": "apple river"},
        {"role": "assistant", "content": "1 2 3"},
        {"role": "user", "content": "stone cloud"},
        {"role": "assistant", "content": "4 5"},
    ]
    ids, labels = sft_example(tok, messages, [tok.eos_token_id])
    assert len(ids) == len(labels)
    # the template renders "role : content " per message; targets are exactly the two answers and the final EOS
    targeted = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(targeted) == "1 2 3 4 5 </s>"
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels))
    words = tok.convert_ids_to_tokens(ids)
    masked = [w for w, lab in zip(words, labels) if lab == IGNORE]
    assert masked == "system : write only digits user : apple river assistant : user : stone cloud assistant :".split()


def write_cfg(tmp_path, name, cfg):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rlvr(*args, cwd=REPO, **popen):
    return subprocess.Popen([sys.executable, "-m", "rlvr.cli", *args, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, **popen)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    """pretrain -> sft -> dpo on the world task, each through its CLI, tiny and short."""
    tmp = tmp_path_factory.mktemp("stages")
    out = str(tmp / "runs")
    pre = write_cfg(tmp, "pre", {
        "name": "pre", "output_dir": out, "model": TINY,
        "data": {"task": "world", "num_train": 3000, "num_eval": 200, "seq_len": 64},
        "optim": {"steps": 60, "batch_size": 16, "micro_batch_size": 8, "lr": 3.0e-3, "warmup_steps": 5},
        "train": {"eval_every": 30, "checkpoint_every": 30},
    })
    finish(rlvr("pretrain", "--config", str(pre)))
    sft = write_cfg(tmp, "sft", {
        "name": "sft", "output_dir": out, "model": {"name_or_path": f"{out}/pre/seed_0/final"},
        "data": {"task": "world", "num_train": 500, "num_eval": 64, "seq_len": 64},
        "optim": {"steps": 20, "batch_size": 16, "micro_batch_size": 16, "lr": 1.0e-3, "warmup_steps": 2},
        "train": {"eval_every": 10, "checkpoint_every": 10},
    })
    finish(rlvr("sft", "--config", str(sft)))
    dpo = write_cfg(tmp, "dpo", {
        "name": "dpo", "output_dir": out, "model": {"name_or_path": f"{out}/sft/seed_0/final"},
        "data": {"task": "world", "seq_len": 64},
        "dpo": {"samples_per_prompt": 4, "num_prompts": 64, "max_new_tokens": 16, "temperature": 1.5},
        "optim": {"steps": 4, "batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-4, "warmup_steps": 0},
        "train": {"checkpoint_every": 2},
    })
    finish(rlvr("dpo", "--config", str(dpo)))
    return tmp, out


def test_pretraining_loss_falls_and_stages_chain(chained):
    _, out = chained
    pre = json.loads(open(f"{out}/pre/seed_0/summary.json").read())
    assert pre["first_eval_loss"] > 3.5 and pre["last_eval_loss"] < 0.7 * pre["first_eval_loss"]
    rows = [json.loads(line) for line in open(f"{out}/pre/seed_0/metrics.jsonl")]
    train = [r["loss/train"] for r in rows if "loss/train" in r]
    assert sum(train[-2:]) / 2 < 0.5 * train[0]
    sft = json.loads(open(f"{out}/sft/seed_0/summary.json").read())
    assert sft["last_eval_loss"] < sft["first_eval_loss"]
    dpo = json.loads(open(f"{out}/dpo/seed_0/summary.json").read())
    assert dpo["pairs"] >= 1 and dpo["pairs/made"] == dpo["pairs"] and os.path.exists(dpo["model"] + "/model.safetensors")
    pairs = [json.loads(line) for line in open(f"{out}/dpo/seed_0/pairs.jsonl")]
    assert all(p["chosen_ids"] != p["rejected_ids"] for p in pairs)


def test_interrupted_stage_resumes_to_the_same_model(chained, tmp_path):
    tmp, out = chained
    from safetensors.torch import load_file

    def cfg(name):
        return write_cfg(tmp_path, name, {
            "name": name, "output_dir": str(tmp_path / "runs"), "model": {"name_or_path": f"{out}/pre/seed_0/final"},
            "data": {"task": "world", "num_train": 500, "num_eval": 32, "seq_len": 64},
            "optim": {"steps": 40, "batch_size": 16, "micro_batch_size": 8, "lr": 1.0e-3, "warmup_steps": 2},
            "train": {"eval_every": 10, "checkpoint_every": 10, "log_every": 1},
        })

    finish(rlvr("sft", "--config", str(cfg("full"))))
    proc = rlvr("sft", "--config", str(cfg("cut")), start_new_session=True)
    target = tmp_path / "runs" / "cut" / "seed_0" / "checkpoints" / "step_10"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs" / "cut" / "seed_0" / "summary.json").exists()
    finish(rlvr("sft", "--config", str(cfg("cut")), "--resume"))
    a = load_file(tmp_path / "runs" / "full" / "seed_0" / "final" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "cut" / "seed_0" / "final" / "model.safetensors")
    # exactly: one machine, one code path, one thread count (tests/numerics.py)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = [json.loads(line) for line in open(tmp_path / "runs/full/seed_0/metrics.jsonl")]
    mb = [json.loads(line) for line in open(tmp_path / "runs/cut/seed_0/metrics.jsonl")]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "data/tokens_per_s"))} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


def test_real_data_sft_dpo_and_rlvr_smoke(tmp_path):
    """GSM8K rows from ../shared/data through `rlvr sft`, `rlvr dpo` (file pairs) and `rlvr train`."""
    from rlvr.data import gsm8k_rows, math_rows

    chats = gsm8k_rows(DATA / "gsm8k" / "train.jsonl", limit=48, with_answer=True)
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in chats))
    pairs = [
        {"messages": a["messages"][:1], "chosen": a["messages"][1]["content"], "rejected": b["messages"][1]["content"]}
        for a, b in zip(chats, chats[1:] + chats[:1])
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rl = gsm8k_rows(DATA / "gsm8k" / "test.jsonl", limit=24) + math_rows(DATA / "math" / "math500_test.jsonl", limit=8)
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))
    out = str(tmp_path / "runs")
    sft = write_cfg(tmp_path, "sft", {
        "name": "gsm8k-sft", "output_dir": out, "model": TINY,
        "data": {"train": str(tmp_path / "chat.jsonl"), "eval": str(tmp_path / "chat.jsonl"), "seq_len": 256, "packing": False},
        "optim": {"steps": 3, "batch_size": 8, "micro_batch_size": 8},
    })
    finish(rlvr("sft", "--config", str(sft)))
    model = f"{out}/gsm8k-sft/seed_0/final"
    dpo = write_cfg(tmp_path, "dpo", {
        "name": "gsm8k-dpo", "output_dir": out, "model": {"name_or_path": model},
        "data": {"train": str(tmp_path / "pairs.jsonl")}, "dpo": {"pairs_from": "file", "loss": "norm"},
        "optim": {"steps": 2, "batch_size": 8, "micro_batch_size": 4},
    })
    finish(rlvr("dpo", "--config", str(dpo)))
    assert json.loads(open(f"{out}/gsm8k-dpo/seed_0/summary.json").read())["pairs"] == 48
    proc = rlvr(
        "train", "--config", str(REPO / "experiments/tiny/kinds.yaml"), "--output_dir", out, "--name", "gsm8k-rl",
        "--model.name_or_path", f"{out}/gsm8k-dpo/seed_0/final", "--data.task", "", "--data.train", str(tmp_path / "rl.jsonl"),
        "--data.eval", str(tmp_path / "rl.jsonl"), "--data.max_prompt_tokens", "256", "--data.num_eval", "8",
        "--rollout.prompts_per_step", "4", "--rollout.samples_per_prompt", "2", "--train.steps", "2", "--train.eval_every", "2",
    )
    finish(proc)
    summary = json.loads(open(f"{out}/gsm8k-rl/seed_0/summary.json").read())
    assert "eval/heldout/greedy_pass_rate" in summary["final"]
    rows = [json.loads(line) for line in open(f"{out}/gsm8k-rl/seed_0/metrics.jsonl")]
    assert {"reward/gsm8k/pass_rate", "reward/math/pass_rate"} & set(rows[-1])


def test_stage_errors_are_one_line(tmp_path):
    bad = write_cfg(tmp_path, "bad", {"name": "x", "output_dir": str(tmp_path / "runs"), "data": {"train": str(tmp_path / "missing.jsonl")}})
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "sft", "--config", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"rlvr: error: data file not found: {tmp_path / 'missing.jsonl'}"
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "dpo", "--config", str(bad), "--optim.stepz", "3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == "rlvr: error: unknown config key 'optim.stepz' (did you mean 'optim.steps'?)"


def test_recipe_chains_end_to_end_in_miniature(tmp_path):
    """`rlvr recipe` with every stage cut short, 2 chains: each chain its own pretrain -> sft -> dpo -> rlvr
    (they differ), every stage evaluated, per-stage means and paired changes; a chain whose last stage was
    interrupted resumes to exactly the same numbers, the finished one is skipped."""
    from rlvr.compare import read_scalars
    from rlvr.runlog import read_metrics

    cfg = yaml.safe_load((REPO / "experiments" / "tiny" / "recipe.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["seeds"] = [0, 1]
    cfg["model"] = TINY
    cfg["pretrain"]["optim"].update(steps=20, batch_size=8, micro_batch_size=8)
    cfg["pretrain"]["data"].update(num_train=1000, num_eval=50)
    cfg["sft"]["optim"].update(steps=10, batch_size=8, micro_batch_size=8)
    cfg["dpo"]["dpo"].update(num_prompts=128, max_new_tokens=16)  # room to end a turn (an answer cut off is never chosen); 10 and 12 pairs here
    cfg["dpo"]["optim"].update(steps=2, batch_size=4, micro_batch_size=4)
    cfg["rlvr"]["train"].update(steps=4, eval_every=2, checkpoint_every=2)
    cfg["rlvr"]["rollout"].update(prompts_per_step=4, max_new_tokens=8)
    cfg["rlvr"]["data"].update(num_eval=8)
    cfg["eval"] = {"num_prompts": 16, "k": 2, "max_new_tokens": 8}
    path = write_cfg(tmp_path, "recipe", cfg)
    finish(rlvr("recipe", "--config", str(path)))
    root = tmp_path / "runs" / "recipe"
    result = json.loads((root / "results.json").read_text())
    assert list(result["stages"]) == ["pretrain", "sft", "dpo", "rlvr"] and result["seeds"] == [0, 1]
    assert list(result["changes"]) == ["pretrain -> sft", "sft -> dpo", "dpo -> rlvr"]
    for s in ("0", "1"):
        for m in result["chains"][s].values():
            assert 0.0 <= m["pass@1"] <= m["pass@2"] <= 1.0
    # per stage: the mean over chains; per step: the within-chain differences
    for stage in result["stages"]:
        values = [result["chains"][s][stage]["pass@1"] for s in ("0", "1")]
        assert result["stages"][stage]["pass@1"]["values"] == values and result["stages"][stage]["pass@1"]["mean"] == pytest.approx(sum(values) / 2)
    diffs = [result["chains"][s]["dpo"]["pass@1"] - result["chains"][s]["sft"]["pass@1"] for s in ("0", "1")]
    assert result["changes"]["sft -> dpo"]["pass@1"]["values"] == pytest.approx(diffs)
    # two chains are two independent draws: their pretraining already differs
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "rollout/tokens_per_s", "data/tokens_per_s"))} for r in rows]  # noqa: E731
    assert strip(read_metrics(root / "pretrain" / "seed_0")) != strip(read_metrics(root / "pretrain" / "seed_1"))
    assert (root / "stages.png").stat().st_size > 10_000
    band = read_scalars(root / "heldout" / "aggregate" / "band")
    assert [step for step, _ in band["band/heldout/pass@1/mean"]] == [0, 1, 2, 3]
    # chain 1's RLVR stopped after its step-2 checkpoint: the recipe again resumes it to the same numbers
    rl = root / "rlvr" / "seed_1"
    before = strip(read_metrics(rl))
    (rl / "summary.json").unlink()
    shutil.rmtree(rl / "checkpoints" / "step_4")
    out = finish(rlvr("recipe", "--config", str(path)))
    assert "chain 0: finished earlier, skipped" in out and "chain 1: rlvr" in out
    assert strip(read_metrics(rl)) == before

    # scripts/stage_sweep.py: a DPO variant that only checkpoints more often is the recipe's own DPO again, from the same SFT models
    sweep = subprocess.run([sys.executable, str(REPO / "scripts" / "stage_sweep.py"), str(root), "dpo", "--checkpoints",
                            "--variant", "same", "--train.checkpoint_every", "1", "--train.keep_checkpoints", "2"],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    swept = json.loads((root / "sweeps" / "dpo" / "results.json").read_text())
    for s in ("0", "1"):
        assert strip(read_metrics(root / "sweeps" / "dpo" / "same" / f"seed_{s}")) == strip(read_metrics(root / "dpo" / f"seed_{s}"))
        assert list(swept["chains"][s]) == ["sft", "same@1", "same"] and swept["chains"][s]["same"]["pass@1"] == result["chains"][s]["dpo"]["pass@1"]
    lines = {line.split()[0]: line for line in sweep.stdout.splitlines() if line.split()[:1] in (["sft"], ["same"])}
    assert "(" not in lines["sft"] and "(" in lines["same"]  # the upstream model, then each variant's change from it
