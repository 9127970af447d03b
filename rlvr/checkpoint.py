"""Checkpoints: `checkpoints/step_<n>/`, written to a temporary folder and renamed when complete.

A checkpoint holds `policy/` and `critic/` in HF format (the policy folder also holds the
tokenizer, so vLLM can serve it), and `trainer_state.pt`: optimizer and scheduler states,
RNG states, data position and step. A folder without the final name is never read.

A checkpoint is only begun with room for it on the disk (else a `CheckpointError` before anything
is written); older ones are deleted only once the new one reads back whole, so `keep` never leaves
no readable checkpoint; `latest_checkpoint` skips (and names) unreadable ones, newest first.
"""

from __future__ import annotations

import random
import re
import shutil
import sys
import zipfile
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
    need, free = _size_needed(run_dir, policy, critic), shutil.disk_usage(root).free
    if free < need:
        raise CheckpointError(
            f"step {step}: no room for a checkpoint in {root}: about {need / 2**20:,.0f} MiB needed, {free / 2**20:,.0f} MiB free "
            "(free some space, or lower train.keep_checkpoints); the run stops with its newest checkpoint intact"
        )
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
    problem = unreadable(final)
    if problem:  # never delete older checkpoints for one that does not read back
        print(f"rlvr: checkpoint {final} does not read back ({problem}); older checkpoints are kept", file=sys.stderr)
        return final
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointError(RuntimeError):
    pass


def _size_needed(run_dir: Path, policy, critic) -> int:
    """Bytes a new checkpoint takes: the newest one's size, else float32 weights plus two AdamW
    moments per parameter of each model; with a quarter more for safety."""
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        size = sum(f.stat().st_size for f in ckpts[-1].rglob("*") if f.is_file())
    else:
        params = sum(_numel(p) for m in (policy, critic) if m is not None for p in m.parameters())
        size = 3 * 4 * params
    return int(size * 1.25) + (16 << 20)


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # ZeRO-3 partitions hold their full size here


def unreadable(ckpt: Path) -> str:
    """Why `ckpt` cannot be resumed from ("" when it can): its trainer state must be a whole torch
    archive and every weight file's header and length must agree."""
    state = ckpt / "trainer_state.pt"
    try:
        with zipfile.ZipFile(state) as z:
            bad = z.testzip()
        if bad is not None:
            return f"trainer_state.pt: {bad} is corrupt"
    except (OSError, zipfile.BadZipFile) as e:
        return f"trainer_state.pt: {e}"
    for part in ("policy", "critic"):
        folder = ckpt / part
        if part == "critic" and not folder.exists():
            continue
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            return f"{part}/ has no weights"
        for f in files:
            if problem := _safetensors_problem(f):
                return f"{part}/{f.name}: {problem}"
    return ""


def _safetensors_problem(path: Path) -> str:
    import json
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                return "truncated header"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return "" if size == 8 + n + end else f"{size} bytes where the header says {8 + n + end}"
    except (OSError, ValueError, struct.error, KeyError, TypeError) as e:
        return f"unreadable ({e})"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / "trainer_state.pt").is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that reads back whole; unreadable newer ones are named and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = unreadable(ckpt)
        if not problem:
            return ckpt
        print(f"rlvr: checkpoint {ckpt.name} is unreadable ({problem}); falling back to the one before", file=sys.stderr)
    return None


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)
