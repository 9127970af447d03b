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
