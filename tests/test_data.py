import json
import subprocess
import sys

import pytest

from conftest import REPO
from rlvr.data import DataError, PromptSampler, encode_prompts, load_rows, normalize_rows
from rlvr.models import load_tokenizer

GT = json.dumps({"allowed": list("0123456789"), "min_words": 4})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_from_jsonl_and_folder_with_the_dataset_alias(tmp_path):
    rows = [
        {"prompt": "apple river : write only digits", "ground_truth": GT, "verifier": "allowed_words"},
        {"messages": [{"role": "user", "content": "stone cloud : write only digits"}], "ground_truth": [GT], "dataset": ["allowed_words"]},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    got = normalize_rows(load_rows(str(path)), "train.jsonl")
    assert got[0] == {"prompt": rows[0]["prompt"], "ground_truth": GT, "verifier": "allowed_words"}
    assert got[1] == {"messages": rows[1]["messages"], "ground_truth": GT, "verifier": "allowed_words"}
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    assert normalize_rows(load_rows(str(folder)), "ds") == got
    # Parquet files and folders go through `datasets` (the path a hub id takes too)
    import datasets

    flat = [{"prompt": f"p{i}", "ground_truth": GT, "verifier": "allowed_words"} for i in range(3)]
    pq = tmp_path / "pq"
    pq.mkdir()
    datasets.Dataset.from_list(flat).to_parquet(str(pq / "train-00000.parquet"))
    assert load_rows(str(pq)) == flat
    assert load_rows(str(pq / "train-00000.parquet")) == flat


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "ground_truth": "g"}, "t.jsonl row 1: missing 'verifier' (or 'dataset') column"),
        ({"prompt": "p", "verifier": "allowed_words"}, "t.jsonl row 1: missing 'ground_truth'"),
        ({"prompt": "", "ground_truth": "g", "verifier": "allowed_words"}, "t.jsonl row 1: needs a non-empty 'messages' list or 'prompt' string"),
        ({"prompt": "p", "ground_truth": "g", "verifier": "mathh"}, "t.jsonl row 1: unknown verifier 'mathh'; available: "),
    ],
)
def test_bad_rows_name_the_row(row, message):
    good = {"prompt": "p", "ground_truth": "g", "verifier": "regex"}
    with pytest.raises(DataError) as e:
        normalize_rows([good, row], "t.jsonl")
    assert str(e.value).startswith(message)


def test_missing_file_and_long_prompt(tmp_path, tiny_model_dir):
    with pytest.raises(DataError, match="data file not found: ./nope.jsonl"):
        load_rows("./nope.jsonl")
    tok = load_tokenizer(str(tiny_model_dir))
    rows = [{"prompt": "apple " * 3}, {"prompt": "apple " * 30}]
    with pytest.raises(DataError, match=r"eval row 1: prompt has 30 tokens, over data.max_prompt_tokens=10"):
        encode_prompts(rows, tok, 10, "eval")


def test_prompt_sampler_is_seeded_and_resumable():
    a = PromptSampler(10, seed=3)
    first = a.take(7) + a.take(7)  # crosses an epoch boundary
    assert sorted(first[:10]) == list(range(10))
    b = PromptSampler(10, seed=3)
    b.take(7)
    state = b.state_dict()
    c = PromptSampler(10, seed=3)
    c.load_state_dict(state)
    assert c.take(7) == first[7:]
    assert PromptSampler(10, seed=4).take(10) != first[:10]


def test_train_from_jsonl_files_with_the_hf_engine(tmp_path):
    """A user's own data files and the fallback engine, through the CLI."""
    words = "apple river stone cloud tiger piano".split()
    rows = [{"prompt": f"{a} {b} : write only digits", "ground_truth": GT, "verifier": "allowed_words"} for a in words for b in words]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:30])
    heldout = write_jsonl(tmp_path / "eval.jsonl", rows[30:])
    cmd = [
        sys.executable, "-m", "rlvr.cli", "train", "--config", str(REPO / "experiments/tiny/kinds.yaml"),
        "--output_dir", str(tmp_path / "runs"), "--name", "files", "--no-progress",
        "--data.task", "", "--data.train", str(train), "--data.eval", str(heldout),
        "--rollout.engine", "hf", "--train.steps", "3", "--train.eval_every", "3", "--rollout.prompts_per_step", "8",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/files/seed_0/summary.json").read_text())
    assert summary["steps"] == 3 and "eval/heldout/greedy_pass_rate" in summary["final"]
    assert (tmp_path / "runs/files/seed_0/checkpoints/step_3/policy/model.safetensors").exists()
    # a bad row stops the run before it starts, naming the row
    write_jsonl(tmp_path / "bad.jsonl", rows[:3] + [{"prompt": "x", "ground_truth": GT}])
    cmd[cmd.index(str(train))] = str(tmp_path / "bad.jsonl")
    cmd[cmd.index("files")] = "bad"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"rlvr: error: {tmp_path / 'bad.jsonl'} row 3: missing 'verifier' (or 'dataset') column"
    assert not (tmp_path / "runs/bad").exists()
