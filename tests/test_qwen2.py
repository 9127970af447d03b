"""The Qwen2 family as the tiny model: vLLM serves it natively and its logprobs match the learner's."""

import json
import subprocess
import sys


from conftest import REPO
from numerics import LOGPROB_ATOL

SCRIPT = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"; os.environ["TORCHDYNAMO_DISABLE"] = "1"
import torch
from rlvr.config import PPOConfig, TinyModelConfig
from rlvr.learner import PPOLearner, make_batch
from rlvr.chat import train_word_tokenizer
from rlvr.models import build_tiny_model, load_policy
from rlvr.rollouts import Sampling, make_engine
from rlvr.tasks import kinds_vocabulary
out = sys.argv[1]
tok = train_word_tokenizer([" ".join(kinds_vocabulary())])
model = build_tiny_model(TinyModelConfig(arch="qwen2"), tok, seed=0)
model.save_pretrained(out); tok.save_pretrained(out)
engine = make_engine("vllm", out, max_model_len=64)
rollouts = engine.generate([tok("apple river : write only digits")["input_ids"]] * 4, Sampling(8, seed=1), n=2)
policy = load_policy(out)
batch = make_batch(rollouts, tok.pad_token_id)
ours = PPOLearner(policy, None, None, PPOConfig(), 1, tok.pad_token_id).logprobs(policy, batch)
theirs = torch.zeros_like(batch.mask)
for i, r in enumerate(rollouts):
    theirs[i, : len(r.sampler_logprobs)] = torch.tensor(r.sampler_logprobs)
print(json.dumps({"arch": type(model).__name__, "diff": ((ours - theirs).abs() * batch.mask).max().item()}))
"""


def test_qwen2_tiny_model_in_vllm(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["arch"] == "Qwen2ForCausalLM"
    assert result["diff"] <= LOGPROB_ATOL
