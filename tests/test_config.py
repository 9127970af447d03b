import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from rlvr.config import Config, ConfigError, load_config, to_yaml

TINY = REPO / "experiments" / "tiny" / "kinds.yaml"


def test_yaml_then_dotted_overrides():
    cfg = load_config(TINY, ["--ppo.kl_coef", "0.02", "--seed=3", "--rollout.engine", "hf", "--ppo.adam_betas", "[0.8, 0.9]", "--ppo.lr", "3e-4"])
    assert cfg.ppo.lr == 3e-4  # PyYAML alone would read "3e-4" as a string
    assert cfg.name == "kinds"
    assert cfg.ppo.kl_coef == 0.02 and isinstance(cfg.ppo.kl_coef, float)
    assert cfg.seed == 3
    assert cfg.rollout.engine == "hf"
    assert cfg.ppo.adam_betas == (0.8, 0.9)
    assert cfg.rollout.max_new_tokens == yaml.safe_load(TINY.read_text())["rollout"]["max_new_tokens"]
    assert cfg.run_dir.as_posix() == "runs/kinds/seed_3"


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path):
    cfg = load_config(TINY, ["--ppo.lr", "0.5"])
    with pytest.raises(Exception):
        cfg.ppo.lr = 1.0  # type: ignore[misc]
    path = tmp_path / "saved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--ppo.kl_cof", "0.1"], "unknown config key 'ppo.kl_cof' (did you mean 'ppo.kl_coef'?)"),
        (["--rollot.engine", "hf"], "unknown config key 'rollot' (did you mean 'rollout'?)"),
        (["--ppo.lr", "fast"], "ppo.lr must be a number, got 'fast'"),
        (["--train.steps", "1.5"], "train.steps must be an integer, got 1.5"),
        (["--rollout.engine", "sglang"], "rollout.engine must be one of vllm, hf, got 'sglang'"),
        (["--ppo.whiten_advantages", "maybe"], "ppo.whiten_advantages must be true or false, got 'maybe'"),
        (["--ppo.lr"], "--ppo.lr needs a value"),
        (["--algo.baseline", "ppo2"], "algo.baseline must be one of dr_grpo, gae, grpo, none, reinforce_pp, rloo, got 'ppo2'"),
        (["--algo.baseline", "rloo", "--rollout.samples_per_prompt", "1"], "algo.baseline rloo needs rollout.samples_per_prompt >= 2, got 1"),
        (["--algo.dynamic_sampling", "true", "--rollout.samples_per_prompt", "1"], "algo.dynamic_sampling needs rollout.samples_per_prompt >= 2, got 1"),
        (["--algo.overlong_buffer", "8"], "algo.overlong_buffer (8) must be below rollout.max_new_tokens (8)"),
        (["--algo.loss_agg", "mean"], "algo.loss_agg must be one of token, sequence, constant, got 'mean'"),
        (["--rollout.top_p", "0.9"], "rollout.top_p must be 1.0, got 0.9: the learner's ratios and KL are of the untruncated "
                                     "distribution, so top-p sampling would train on the wrong one"),
        (["--rollout.temperature", "0"], "rollout.temperature must be > 0 (training samples from the policy; greedy decoding has no ratio), got 0.0"),
        (["--model.tiny.tokenizer", "gpt2"], "model.tiny.tokenizer must be one of word, chatml, llama3, got 'gpt2'"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, overrides)
    assert str(e.value) == message


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("rollout:\n  n_samples: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == "unknown config key 'rollout.n_samples' (did you mean 'rollout.samples_per_prompt'?)"


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_defaults_need_no_file():
    assert load_config(None) == Config(name="default")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ppo.kl_cof", "0.1"], "rlvr: error: unknown config key 'ppo.kl_cof' (did you mean 'ppo.kl_coef'?)"),
        (["--train.steps", "ten"], "rlvr: error: train.steps must be an integer, got 'ten'"),
    ],
)
def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "train", "--config", str(TINY), "--output_dir", str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_missing_config_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "train", "--config", "missing.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rlvr: error: config file not found: missing.yaml"
    assert list(tmp_path.iterdir()) == []


def test_base_file_gives_what_the_child_does_not(tmp_path):
    (tmp_path / "exp").mkdir()
    child = tmp_path / "exp" / "grpo.yaml"
    child.write_text(f"base: {TINY}\nalgo: {{baseline: grpo}}\nppo: {{kl_penalty: loss}}\n")
    cfg = load_config(child, ["--ppo.lr", "0.5"])
    parent = load_config(TINY)
    assert cfg.name == "grpo"  # the child's own name, never the base's
    assert cfg.algo.baseline == "grpo" and cfg.ppo.kl_penalty == "loss" and cfg.ppo.lr == 0.5
    # every other field of a merged section comes from the base
    assert cfg.ppo.epochs == parent.ppo.epochs and cfg.ppo.kl_coef == parent.ppo.kl_coef
    assert cfg.data == parent.data and cfg.model == parent.model
    # the shipped comparison files are PPO's experiment with one section changed
    shipped = load_config(REPO / "experiments" / "tiny" / "baselines" / "ppo.yaml")
    assert shipped.algo.baseline == "gae" and shipped.ppo == parent.ppo and shipped.rollout == parent.rollout


def test_base_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(a)
    a.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*missing.yaml \(the base of .*a.yaml\)"):
        load_config(a)
