import random

import numpy as np
import torch

from rlvr import checkpoint as ckpt
from rlvr.models import load_critic, load_policy, load_tokenizer


def test_only_complete_checkpoints_count_and_old_ones_are_pruned(tmp_path, tiny_model_dir):
    policy, tok = load_policy(tiny_model_dir), load_tokenizer(str(tiny_model_dir))
    critic = load_critic(tiny_model_dir, from_policy=True)
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, policy, critic, tok, {"x": step}, keep=2)
    # a crash mid-write leaves a temporary folder, and a folder renamed by hand may lack its state
    (tmp_path / "checkpoints" / ".tmp_step_8" / "policy").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_10").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_4", "step_6"]
    last = ckpt.latest_checkpoint(tmp_path)
    assert last.name == "step_6" and ckpt.load_trainer_state(last)["x"] == 6
    reloaded = load_policy(last / "policy")
    for (name, a), b in zip(policy.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert (last / "policy" / "tokenizer.json").exists() and (last / "critic" / "config.json").exists()


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
