"""Checkpoints: `checkpoints/step_<n>/`, written to a temporary folder and renamed when complete.

A checkpoint holds `policy/` and `critic/` in HF format (the policy folder also holds the
tokenizer, so vLLM can serve it), and `trainer_state.pt`: optimizer and scheduler states,
RNG states, data position and step. A folder without the final name is never read.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: Path, step: int, policy, critic, tokenizer, trainer_state: dict, keep: int = 2,
    policy_weights: dict | None = None, critic_weights: dict | None = None, save_extra=None,
) -> Path:
    """`*_weights`: full state dicts where the modules do not hold them (ZeRO-3 shards);
    `save_extra(folder)`: writes what is kept outside `trainer_state` (DeepSpeed's states)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(tmp / "policy", state_dict=policy_weights)
    tokenizer.save_pretrained(tmp / "policy")
    if critic is not None:
        critic.save_pretrained(tmp / "critic", state_dict=critic_weights)
    if save_extra is not None:
        save_extra(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / "trainer_state.pt").is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)
