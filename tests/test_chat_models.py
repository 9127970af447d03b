"""Hub-like chat models (byte-level BPE, a chat template, several stop ids, no dedicated pad token):
tokens round-trip, prompts are the model's own template, SFT targets end at the end of turn, packed
rows never attend across examples, DPO data in the forms people have it, generation stops on every
stop id."""

import json

import pytest
import torch

from conftest import DATA, hub_like_texts
from rlvr.chat import IGNORE, answer_example, prompt_ids, render_chat, sft_example, stop_token_ids
from rlvr.models import load_policy, load_tokenizer
from rlvr.stages.lm import lm_loss, make_rows

END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def style(model_dir) -> str:
    return model_dir.name


def test_tokens_round_trip_and_specials_are_hub_like(hub_model_dir):
    tok = load_tokenizer(str(hub_model_dir))
    texts = hub_like_texts()[:400] + ["Ünïcode π ≈ 3.14159, −2 × 10⁻³ \\frac{1}{2}\t tab\n\n newline  ", "🙂 emoji and 中文"]
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    config = json.loads((hub_model_dir / "tokenizer_config.json").read_text())
    generation = json.loads((hub_model_dir / "generation_config.json").read_text())
    stops = stop_token_ids(hub_model_dir)
    # no padding_idx: a zero embedding row that never learns would make a stop token unsayable
    assert load_policy(hub_model_dir).get_input_embeddings().weight[stops].norm(dim=1).min() > 0
    assert sorted(generation["eos_token_id"]) == stops and min(stops) >= len(tok) - 6  # special tokens last, as in the real models
    if style(hub_model_dir) == "chatml":
        assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>" and config.get("bos_token") is None
        assert tok.convert_ids_to_tokens(stops) == ["<|endoftext|>", "<|im_end|>"]
    else:
        assert config["eos_token"] == "<|eot_id|>" and config.get("pad_token") is None  # no pad token at all
        assert tok.convert_ids_to_tokens(stops) == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
        assert tok("hi")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds <|begin_of_text|> itself


def test_prompts_are_rendered_by_the_models_own_template(hub_model_dir):
    from rlvr.data import encode_prompts, gsm8k_rows

    tok = load_tokenizer(str(hub_model_dir))
    rows = gsm8k_rows(DATA / "gsm8k" / "test.jsonl", limit=5)
    ids = encode_prompts(rows, tok, 1024, "test")
    for row, got in zip(rows, ids):
        # transformers' own tokenising of the template, and the text the template renders
        assert got == tok.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
        text = tok.decode(got)
        if style(hub_model_dir) == "chatml":
            assert text == f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{row['messages'][0]['content']}<|im_end|>\n<|im_start|>assistant\n"
        else:
            assert text == f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{row['messages'][0]['content'].strip()}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            assert got.count(tok.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer


def test_sft_targets_are_the_answers_up_to_one_end_of_turn(hub_model_dir):
    tok = load_tokenizer(str(hub_model_dir))
    end = END[style(hub_model_dir)]
    messages = [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5.\n#### 5"},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "#### 8"},
    ]
    ids, labels = sft_example(tok, messages, stop_token_ids(hub_model_dir))
    targets = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    # each answer and its own end of turn, once: no EOS appended after a template that ends the turn
    assert tok.decode(targets) == f"2 + 3 = 5.\n#### 5{end}#### 8{end}"
    assert ids[-1] == tok.convert_tokens_to_ids(end)
    # everything else (system, user, the template's role headers and newlines) is masked
    masked = tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE])
    assert "Answer with a number." in masked and "And 4 + 4?" in masked and "5.\n" not in masked
    # the answer of a DPO pair is the same span: the prompt is the chat up to the generation prompt
    prompt, answer = answer_example(tok, messages[:3], stop_token_ids(hub_model_dir))
    assert prompt == render_chat(tok, messages[:2], add_generation_prompt=True)
    assert tok.decode(answer) == f"2 + 3 = 5.\n#### 5{end}"


def test_rows_pack_whole_examples_with_restarting_positions():
    # seq_len 8: examples of 3, 4 and 10 tokens -> [3 + 4 + 1 pad], [10 truncated to 8]; nothing split across rows
    a, b, c = ([1, 2, 3], [1, 2, 3]), ([4, 5, 6, 7], [IGNORE, IGNORE, 6, 7]), (list(range(10, 20)), list(range(10, 20)))
    rows = make_rows([a, b, c], seq_len=8, pad_id=0, pack=True)
    assert rows.ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [10, 11, 12, 13, 14, 15, 16, 17]]
    assert rows.positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], list(range(8))]
    # an example's first token is no target (nothing of its own example precedes it); padding has none
    assert rows.labels.tolist() == [[IGNORE, 2, 3, IGNORE, IGNORE, 6, 7, IGNORE], [IGNORE, *range(11, 18)]]
    assert rows.truncated == 1
    one_each = make_rows([a, b, c], seq_len=8, pad_id=0, pack=False)
    assert one_each.ids.tolist()[:2] == [[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 0, 0, 0, 0]]
    assert one_each.positions.tolist()[0] == [0, 1, 2, 0, 1, 2, 3, 4]


def test_packed_loss_equals_the_loss_of_the_examples_one_per_row(hub_model_dir):
    """No token attends across an example boundary: the packed batch's summed loss and target count
    equal those of the same examples each alone in a row (and each example's logits are its own)."""
    from rlvr.data import gsm8k_rows

    tok = load_tokenizer(str(hub_model_dir))
    model = load_policy(hub_model_dir).eval()
    stop = stop_token_ids(hub_model_dir)
    chats = [r["messages"] for r in gsm8k_rows(DATA / "gsm8k" / "train.jsonl", limit=12, with_answer=True)]
    examples = [sft_example(tok, c, stop) for c in chats]
    seq_len = 2 * max(len(e[0]) for e in examples)
    pad = tok.pad_token_id  # pad = an end-of-turn id for llama3 (no pad token): masks never come from pad ids
    packed = make_rows(examples, seq_len, pad, pack=True)
    alone = make_rows(examples, seq_len, pad, pack=False)
    assert len(packed) < len(alone) == len(examples)
    with torch.no_grad():
        loss_packed, n_packed = lm_loss(model, packed)
        loss_alone, n_alone = lm_loss(model, alone)
    assert n_packed == n_alone == sum(sum(lab != IGNORE for lab in e[1][1:]) for e in examples)
    # float32 sums of ~3,000 token losses in another order: ~1e-7 relative; 1e-5 is 100x that. Attention
    # across the boundary moves even this random model's loss by 1.1e-4 to 2.7e-4 (a full mask, checked)
    assert loss_packed.item() == pytest.approx(loss_alone.item(), rel=1e-5)
    # the second example of the first packed row sees only itself
    first, second = examples[0], examples[1]
    assert packed.positions[0, len(first[0])].item() == 0
    with torch.no_grad():
        row = model(input_ids=packed.ids[:1], position_ids=packed.positions[:1], use_cache=False).logits[0]
        own = model(input_ids=torch.tensor([second[0]])).logits[0]
    got = row[len(first[0]) : len(first[0]) + len(second[0])]
    torch.testing.assert_close(got, own, rtol=1e-4, atol=1e-5)  # same computation on other shapes: float32 noise only


def test_end_of_turn_tokens_are_attended_and_trained_where_pad_is_eos(hub_model_dir):
    """Llama 3 style: pad = <|eot_id|> once the loader fills the missing pad token. The end-of-turn
    tokens are still targets (the model learns to stop) and visible to later tokens."""
    tok = load_tokenizer(str(hub_model_dir))
    stop = stop_token_ids(hub_model_dir)
    chat = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "6"}]
    ids, labels = sft_example(tok, chat, stop)
    eot = tok.convert_tokens_to_ids(END[style(hub_model_dir)])
    rows = make_rows([(ids, labels)], len(ids) + 3, tok.pad_token_id, pack=True)
    assert [lab for lab in rows.labels[0].tolist() if lab == eot] == [eot, eot]
    model = load_policy(hub_model_dir).eval()
    with torch.no_grad():
        loss, n = lm_loss(model, rows)
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    by_hand = -sum(torch.log_softmax(logits[t - 1], -1)[ids[t]] for t in range(1, len(ids)) if labels[t] != IGNORE)
    assert n == sum(lab != IGNORE for lab in labels[1:]) and loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("form", ["prompt string, answers strings", "prompt string, answers full conversations (UltraFeedback)",
                                  "prompt messages, answers as one-message lists", "no prompt, two conversations"])
def test_dpo_pairs_in_the_forms_preference_data_comes_in(hub_model_dir, tmp_path, form):
    from rlvr.stages.dpo import pairs_from_file

    tok = load_tokenizer(str(hub_model_dir))
    q, good, bad = "What is 6 * 7?", "6 * 7 = 42.\n#### 42", "6 * 7 = 36.\n#### 36"
    user = [{"role": "user", "content": q}]
    row = {
        "prompt string, answers strings": {"prompt": q, "chosen": good, "rejected": bad},
        "prompt string, answers full conversations (UltraFeedback)": {
            "prompt": q, "chosen": user + [{"role": "assistant", "content": good}], "rejected": user + [{"role": "assistant", "content": bad}]},
        "prompt messages, answers as one-message lists": {
            "prompt": user, "chosen": [{"role": "assistant", "content": good}], "rejected": [{"role": "assistant", "content": bad}]},
        "no prompt, two conversations": {"chosen": user + [{"role": "assistant", "content": good}], "rejected": user + [{"role": "assistant", "content": bad}]},
    }[form]
    (tmp_path / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    (pair,) = pairs_from_file(str(tmp_path / "pairs.jsonl"), tok, stop_token_ids(hub_model_dir))
    end = END[style(hub_model_dir)]
    assert pair["prompt_ids"] == prompt_ids(tok, {"messages": user})  # the chat template, with the generation prompt
    assert tok.decode(pair["chosen_ids"]) == good + end and tok.decode(pair["rejected_ids"]) == bad + end


@pytest.mark.parametrize("row, error", [
    ({"prompt": "q", "chosen": "a"}, "row 0: needs 'rejected'"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "b"}, "row 0: 'chosen' must end with the assistant's answer"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "a"}], "rejected": "b"},
     "row 0: 'chosen' continues a different conversation than the prompt"),
    ({"prompt": "q", "chosen": [{"role": "robot", "content": "a"}], "rejected": "b"}, "row 0: 'chosen': each message needs a role"),
    ({"chosen": "a", "rejected": "b"}, "row 0: needs 'prompt'"),
])
def test_bad_preference_rows_are_errors_naming_the_row(tiny_model_dir, tmp_path, row, error):
    from rlvr.stages.dpo import pairs_from_file
    from rlvr.stages.lm import StageError

    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    tok = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(StageError, match=error.replace("(", r"\(").replace(")", r"\)")):
        pairs_from_file(str(tmp_path / "p.jsonl"), tok, [tok.eos_token_id])


def test_on_policy_pairs_never_reject_a_failed_check():
    """`chosen`: scored ok with a passing score; `rejected`: scored wrong. A timed-out, errored or
    unparsable sample is neither."""
    from rlvr.rollouts import Rollout
    from rlvr.stages.dpo import choose_pair
    from rlvr.verifiers import VerifierResult

    def group(*results):
        return [(Rollout([1], [i], str(i), [0.0], "stop"), r) for i, r in enumerate(results)]

    ok, wrong = VerifierResult(1.0, {"status": "ok"}), VerifierResult(0.0, {"status": "wrong"})
    timeout, error = VerifierResult.fail("timeout", "slow"), VerifierResult.fail("error", "boom")
    unparsable, partial = VerifierResult.fail("unparsable", "no answer"), VerifierResult(0.5, {"status": "ok"})
    assert choose_pair(group(timeout, error, unparsable, ok), 1.0) is None  # no wrong answer: no pair
    c, r = choose_pair(group(timeout, ok, error, wrong), 1.0)
    assert (c.text, r.text) == ("1", "3")
    assert choose_pair(group(partial, wrong), 1.0) is None  # 0.5 does not pass at threshold 1
    assert choose_pair(group(partial, wrong), 0.5)[0].text == "0"


def test_on_policy_pairs_take_the_likeliest_finished_answers():
    """Of several passing (failing) samples the one with the highest summed sampler logprob; a passing
    sample cut off at max_new_tokens is never `chosen`; `first` keeps sampling order."""
    from rlvr.rollouts import Rollout
    from rlvr.stages.dpo import choose_pair
    from rlvr.verifiers import VerifierResult

    ok, wrong = VerifierResult(1.0, {"status": "ok"}), VerifierResult(0.0, {"status": "wrong"})
    samples = [  # (text, sampler logprobs, finish reason, verdict)
        ("ok lucky", [-2.0, -3.0], "stop", ok),
        ("ok cut off", [-0.1, -0.1], "length", ok),
        ("wrong unlikely", [-4.0, -1.0], "stop", wrong),
        ("ok mode", [-0.5, -1.0, -1.0], "stop", ok),
        ("wrong likely", [-0.2, -0.3], "stop", wrong),
    ]
    group = [(Rollout([1], [i], text, lp, finish), v) for i, (text, lp, finish, v) in enumerate(samples)]
    c, r = choose_pair(group, 1.0)
    assert (c.text, r.text) == ("ok mode", "wrong likely")  # -2.5 beats -5.0; -0.5 beats -5.0
    c, r = choose_pair(group, 1.0, "first")
    assert (c.text, r.text) == ("ok lucky", "wrong unlikely")
    assert choose_pair([group[1], group[2]], 1.0) is None  # the only passing answer never ended its turn
    assert choose_pair([group[1], group[2]], 1.0, must_end=False)[0].text == "ok cut off"


@pytest.fixture(scope="module")
def stop_heavy_model(hub_model_dir, tmp_path_factory):
    """The fixture with its stop tokens' output embeddings scaled up, so that every stop id is sampled often."""
    model = load_policy(hub_model_dir)
    with torch.no_grad():
        for t in stop_token_ids(hub_model_dir):
            model.get_output_embeddings().weight[t] *= 30.0
    out = tmp_path_factory.mktemp("stops") / style(hub_model_dir)
    model.save_pretrained(out)
    load_tokenizer(str(hub_model_dir)).save_pretrained(out)
    return out


@pytest.mark.parametrize("engine_kind", ["vllm", "hf"])
def test_generation_stops_on_every_end_of_turn_id(stop_heavy_model, engine_kind):
    from rlvr.rollouts import Sampling, make_engine

    tok = load_tokenizer(str(stop_heavy_model))
    stops = set(stop_token_ids(stop_heavy_model))
    engine = make_engine(engine_kind, str(stop_heavy_model), max_model_len=256)
    try:
        prompts = [prompt_ids(tok, {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}]}) for i in range(16)]
        rollouts = engine.generate(prompts, Sampling(32, 1.0, seed=3), n=8)
    finally:
        engine.close()
    ended_on = set()
    for r in rollouts:
        assert not stops & set(r.completion_ids[:-1])  # nothing is generated after a stop id
        if r.finish_reason == "stop":
            assert r.completion_ids[-1] in stops
            ended_on.add(r.completion_ids[-1])
        else:
            assert len(r.completion_ids) == 32
        # the text the verifiers see: the completion without its special tokens (vLLM holds back the
        # bytes of a character a truncated completion ends inside)
        decoded = tok.decode(r.completion_ids, skip_special_tokens=True)
        assert r.text in (decoded, decoded.rstrip("\ufffd")), (r.text, decoded)
    assert ended_on == stops, tok.convert_ids_to_tokens(sorted(stops - ended_on))


# ------------------------------------------------------------------------------------ every command, end to end

PARITY_VERIFIER = '''
from rlvr.verifiers import VerifierResult, register_verifier

@register_verifier("e_parity")
def e_parity(completion, ground_truth, **meta):
    """Passes when the completion has an even number of 'e's; a digit makes the check fail with an error."""
    if any(c.isdigit() for c in completion):
        return VerifierResult.fail("error", "a digit")
    return VerifierResult(1.0 if completion.count("e") % 2 == 0 else 0.0)
'''

CHAIN = r"""
import json, sys
from rlvr.cli import main

root, model = sys.argv[1], sys.argv[2]
def run(*argv):
    code = main([*argv, "--no-progress"])
    assert code == 0, (argv, code)

out = f"{root}/runs"
small_rl = ["--data.train", f"{root}/rl.jsonl", "--data.eval", f"{root}/rl.jsonl", "--data.num_eval", "6",
            "--data.max_prompt_tokens", "640", "--rollout.prompts_per_step", "4", "--rollout.samples_per_prompt", "2",
            "--rollout.max_new_tokens", "16", "--ppo.epochs", "1", "--ppo.micro_batch_size", "8", "--train.steps", "2",
            "--train.eval_every", "2", "--train.eval_samples", "2", "--train.checkpoint_every", "2",
            "--verify.workers", "1", "--verifier_files", f"{root}/my_verifiers.py", "--output_dir", out, "--resources.gpus", "0"]
run("pretrain", "--config", f"{root}/pre.yaml")
run("sft", "--config", f"{root}/sft.yaml")
run("dpo", "--config", f"{root}/dpo_file.yaml")
run("dpo", "--config", f"{root}/dpo_policy.yaml")
dpo = f"{out}/dpo_file/seed_0/final"
run("train", "--config", "experiments/gsm8k/tulu3_ppo.yaml", "--model.name_or_path", dpo, "--rollout.temperature", "0.7",
    "--model.dtype", "float32", "--ppo.max_tokens_per_micro_batch", "512", *small_rl)  # float32: the sampler check is exact on a CPU
run("train", "--config", "experiments/ifeval/tulu3_ppo.yaml", "--model.name_or_path", dpo, "--rollout.engine", "hf", "--model.dtype", "float32", *small_rl)
run("bestofn", "--name", "bon", "--output_dir", out, "--model.name_or_path", dpo, "--data.eval", f"{root}/rl.jsonl",
    "--data.max_prompt_tokens", "640", "--num_prompts", "6", "--n", "4", "--k", "[1, 4]", "--sampling.max_new_tokens", "16",
    "--verifier_files", f"{root}/my_verifiers.py")
run("rft", "--name", "rft", "--output_dir", out, "--model.name_or_path", f"{out}/sft/seed_0/final", "--data.train", f"{root}/rl.jsonl",
    "--data.eval", f"{root}/rl.jsonl", "--data.num_eval", "4", "--data.max_prompt_tokens", "640", "--rounds", "1",
    "--prompts_per_round", "8", "--samples_per_prompt", "2", "--sampling.max_new_tokens", "16", "--optim.steps", "2",
    "--optim.batch_size", "4", "--optim.micro_batch_size", "4", "--eval_samples", "1", "--pass_threshold", "0.5",
    "--verifier_files", f"{root}/my_verifiers.py")
"""


def test_every_command_runs_on_a_hub_like_model(hub_model_dir, tmp_path):
    """pretrain -> SFT -> DPO (file pairs, UltraFeedback form; on-policy pairs scored by a verifier
    from `verifier_files`) -> `rlvr train` with the real-model experiment files (vLLM at temperature
    0.7, transformers) -> best-of-n -> RFT, every one on the hub-like model."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO
    from numerics import LOGPROB_ATOL
    from rlvr.data import gsm8k_rows, math_rows
    from rlvr.runlog import read_metrics
    from rlvr.tasks import make_task

    root, out = tmp_path, tmp_path / "runs"
    (root / "my_verifiers.py").write_text(PARITY_VERIFIER)
    questions = [r["messages"][0]["content"] for r in gsm8k_rows(DATA / "gsm8k" / "train.jsonl", limit=300)]
    (root / "text.txt").write_text("\n\n".join(questions))
    chats = [r["messages"] for r in gsm8k_rows(DATA / "gsm8k" / "train.jsonl", limit=48, with_answer=True)]
    (root / "chat.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    pairs = [{"prompt": a[0]["content"], "chosen": a, "rejected": a[:1] + b[1:]} for a, b in zip(chats, chats[1:] + chats[:1])]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    words = [{"messages": [{"role": "user", "content": f"Write a short note about the number {i}."}], "ground_truth": "", "verifier": "e_parity"} for i in range(32)]
    (root / "dpo_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in words))
    _, constraints = make_task("world", 1, 64, seed=0)
    ifeval = [{**r, "messages": r["messages"][:1]} for r in constraints if r["verifier"] == "ifeval"][:4]
    maths = [{**r, "dataset": "MATH"} for r in math_rows(DATA / "math" / "math500_test.jsonl", limit=4)]  # allenai's spelling
    for r in maths:
        del r["verifier"]
    rl = gsm8k_rows(DATA / "gsm8k" / "test.jsonl", limit=4) + maths + ifeval + words[:4]
    (root / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))
    stage = {"output_dir": str(out), "train": {"eval_every": 2, "checkpoint_every": 2, "log_every": 1},
             "optim": {"steps": 2, "batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "warmup_steps": 0}}
    configs = {
        "pre": {"model": {"name_or_path": str(hub_model_dir)}, "data": {"train": str(root / "text.txt"), "seq_len": 128}},
        "sft": {"model": {"name_or_path": str(out / "pre/seed_0/final")},
                "data": {"train": str(root / "chat.jsonl"), "eval": str(root / "chat.jsonl"), "seq_len": 512}},
        "dpo_file": {"model": {"name_or_path": str(out / "sft/seed_0/final")}, "data": {"train": str(root / "pairs.jsonl")},
                     "dpo": {"pairs_from": "file", "loss": "norm"}},
        "dpo_policy": {"model": {"name_or_path": str(out / "sft/seed_0/final")}, "data": {"train": str(root / "dpo_rows.jsonl"), "seq_len": 64},
                       "dpo": {"num_prompts": 32, "samples_per_prompt": 4, "max_new_tokens": 12, "chosen_must_end": False},  # a 2-step model rarely ends a turn
                       "verifier_files": [str(root / "my_verifiers.py")]},
    }
    for name, cfg in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **stage, **cfg}))
    proc = subprocess.run([sys.executable, "-c", CHAIN, str(root), str(hub_model_dir)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    summary = lambda name: json.loads((out / name / "seed_0" / "summary.json").read_text())  # noqa: E731
    assert summary("pre")["steps"] == 2 and summary("sft")["last_eval_loss"] < summary("sft")["first_eval_loss"]
    assert summary("dpo_file")["pairs"] == 48
    on_policy = summary("dpo_policy")
    assert on_policy["pairs/made"] >= 1 and on_policy["pairs/status_error"] >= 1  # errored samples were seen, and not used
    assert sum(on_policy[f"pairs/status_{s}"] for s in ("ok", "wrong", "error", "timeout", "unparsable")) == 32 * 4
    gsm = read_metrics(out / "tulu3_gsm8k" / "seed_0")
    # the learner reproduces the temperature-0.7 distribution the engine sampled from
    assert max(r["rollout/sampler_logprob_diff"] for r in gsm[1:]) <= LOGPROB_ATOL
    assert {"reward/gsm8k/pass_rate", "reward/math/pass_rate"} <= {k for r in gsm for k in r}
    hf = read_metrics(out / "tulu3_ifeval" / "seed_0")
    assert max(r["rollout/sampler_logprob_diff"] for r in hf[1:]) <= LOGPROB_ATOL
    bon = json.loads((out / "bon" / "seed_0" / "results.json").read_text())
    assert bon["prompts"] == 6 and set(bon["by_verifier"]) == {"gsm8k", "math"}
    assert json.loads((out / "rft" / "seed_0" / "summary.json").read_text())["final"] is not None
